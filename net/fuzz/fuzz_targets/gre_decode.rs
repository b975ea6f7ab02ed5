//! The GRE decoder on arbitrary datagrams, under options taken from the first input bytes.
//!
//! Input: byte 0 = option bits (key, sequence, pin, IPv4 header present), bytes 1..5 = the
//! key, the rest = the datagram. A decoder must return, never panic; what it accepts must be a
//! tail of the datagram at least an Ethernet header long, and must survive re-encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr};
use vmm_net::config::{GreConfig, GreKeys};
use vmm_net::transport::wire::{GreCodec, ETH_HLEN};

fuzz_target!(|data: &[u8]| {
    let Some((&bits, rest)) = data.split_first() else {
        return;
    };
    let Some((key, packet)) = rest.split_first_chunk::<4>() else {
        return;
    };
    let key = u32::from_be_bytes(*key);
    let ipv4 = bits & 8 != 0;
    let config = GreConfig {
        src: IpAddr::V4(Ipv4Addr::LOCALHOST),
        dst: IpAddr::V4(Ipv4Addr::LOCALHOST),
        v6: !ipv4,
        keys: (bits & 1 != 0).then_some(GreKeys { rx: key, tx: key }),
        sequence: bits & 2 != 0,
        pin_sequence: bits & 4 != 0,
    };
    let mut codec = GreCodec::new(&config);
    if let Ok(frame) = codec.decode(packet, ipv4) {
        assert!(frame.len() >= ETH_HLEN);
        assert!(packet.ends_with(frame));
        // Our own header around the accepted frame decodes to the same frame.
        let mut again = vec![0u8; codec.header_len() + frame.len()];
        let start = codec.header_len();
        again[start..].copy_from_slice(frame);
        assert_eq!(codec.encode_before(&mut again, start), Some(0));
        assert_eq!(codec.decode(&again, false), Ok(frame));
    }
});
