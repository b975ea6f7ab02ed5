//! The L2TPv3 decoder on arbitrary datagrams, under options taken from the first input bytes.
//!
//! Input: byte 0 = option bits (udp, v6, cookie, cookie64, counter, pin), bytes 1..5 = the
//! session, bytes 5..13 = the cookie, the rest = the datagram. A decoder must return, never
//! panic; what it accepts must be a tail of the datagram at least an Ethernet header long, and
//! must survive re-encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr};
use vmm_net::config::{L2tpCookies, L2tpv3Config};
use vmm_net::transport::wire::{L2tpv3Codec, ETH_HLEN};

fuzz_target!(|data: &[u8]| {
    let Some((&bits, rest)) = data.split_first() else {
        return;
    };
    let Some((session, rest)) = rest.split_first_chunk::<4>() else {
        return;
    };
    let Some((cookie, packet)) = rest.split_first_chunk::<8>() else {
        return;
    };
    let session = u32::from_be_bytes(*session);
    let cookie64 = bits & 8 != 0;
    let mut cookie = u64::from_be_bytes(*cookie);
    if !cookie64 {
        cookie &= u64::from(u32::MAX);
    }
    let config = L2tpv3Config {
        src: IpAddr::V4(Ipv4Addr::LOCALHOST),
        dst: IpAddr::V4(Ipv4Addr::LOCALHOST),
        udp: bits & 1 != 0,
        srcport: None,
        dstport: None,
        v6: bits & 2 != 0,
        rx_session: session,
        tx_session: session,
        cookies: (bits & 4 != 0).then_some(L2tpCookies {
            rx: cookie,
            tx: cookie,
        }),
        cookie64,
        counter: bits & 16 != 0,
        pin_counter: bits & 32 != 0,
    };
    let mut codec = L2tpv3Codec::new(&config);
    if let Ok(frame) = codec.decode(packet) {
        assert!(frame.len() >= ETH_HLEN);
        assert!(packet.ends_with(frame));
        if !codec.rx_ipv4_header() {
            // Our own header around the accepted frame decodes to the same frame.
            let start = codec.header_len();
            let mut again = vec![0u8; start + frame.len()];
            again[start..].copy_from_slice(frame);
            assert_eq!(codec.encode_before(&mut again, start), Some(0));
            assert_eq!(codec.decode(&again), Ok(frame));
        }
    }
});
