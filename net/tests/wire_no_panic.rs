//! Every decoder on deterministic pseudo-random input: it must return, never panic.
//!
//! Pure noise rarely gets past the first check, so half the inputs are noise patched with a
//! plausible prefix (an IPv4 header of the right protocol, a valid tunnel header) to reach the
//! later fields too.

use std::net::{IpAddr, Ipv4Addr};
use vmm_net::config::{GreConfig, GreKeys, L2tpCookies, L2tpv3Config};
use vmm_net::transport::wire::{GreCodec, L2tpv3Codec};

/// Marsaglia's xorshift64: deterministic, no dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn gre_codecs() -> Vec<GreCodec> {
    let mut v = Vec::new();
    for keys in [None, Some(GreKeys { rx: 1, tx: 1 })] {
        for sequence in [false, true] {
            for pin_sequence in [false, true] {
                for v6 in [false, true] {
                    v.push(GreCodec::new(&GreConfig {
                        src: LOCAL,
                        dst: LOCAL,
                        v6,
                        keys,
                        sequence,
                        pin_sequence,
                    }));
                }
            }
        }
    }
    v
}

fn l2tpv3_codecs() -> Vec<L2tpv3Codec> {
    let mut v = Vec::new();
    for udp in [false, true] {
        for v6 in [false, true] {
            for (cookies, cookie64) in [
                (None, false),
                (Some(L2tpCookies { rx: 3, tx: 3 }), false),
                (Some(L2tpCookies { rx: 3, tx: 3 }), true),
            ] {
                for (counter, pin_counter) in [(false, false), (true, false), (true, true)] {
                    v.push(L2tpv3Codec::new(&L2tpv3Config {
                        src: LOCAL,
                        dst: LOCAL,
                        udp,
                        srcport: None,
                        dstport: None,
                        v6,
                        rx_session: 2,
                        tx_session: 2,
                        cookies,
                        cookie64,
                        counter,
                        pin_counter,
                    }));
                }
            }
        }
    }
    v
}

/// Overwrites the start of `noise` with an IPv4 header (IHL 5..=8 from the noise, protocol
/// right) and `header`, as far as `noise` reaches.
fn plausible(noise: &mut [u8], ipv4_protocol: Option<u8>, header: &[u8]) {
    let mut at = 0;
    if let Some(protocol) = ipv4_protocol {
        if let Some(b) = noise.first_mut() {
            *b = 0x40 | (5 + (*b & 3));
        }
        if let Some(b) = noise.get_mut(9) {
            *b = protocol;
        }
        at = noise.first().map_or(20, |b| usize::from(b & 0x0f) * 4);
    }
    for (i, &h) in header.iter().enumerate() {
        if let Some(b) = noise.get_mut(at + i) {
            *b = h;
        }
    }
}

#[test]
fn decoders_never_panic_on_noise() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut gre = gre_codecs();
    let mut l2tp = l2tpv3_codecs();
    let mut accepted = 0usize;
    for len in 0..200 {
        for round in 0..8 {
            let noise = rng.bytes(len);
            for codec in &mut gre {
                for ipv4 in [false, true] {
                    let mut p = noise.clone();
                    if round % 2 == 1 {
                        let mut h = [0u8; 12];
                        let n = codec.encode_header(&mut h);
                        plausible(&mut p, ipv4.then_some(47), &h[..n]);
                    }
                    accepted += usize::from(codec.decode(&p, ipv4).is_ok());
                }
            }
            for codec in &mut l2tp {
                let mut p = noise.clone();
                if round % 2 == 1 {
                    let mut h = [0u8; 20];
                    let n = codec.encode_header(&mut h);
                    plausible(&mut p, codec.rx_ipv4_header().then_some(115), &h[..n]);
                }
                accepted += usize::from(codec.decode(&p).is_ok());
            }
        }
    }
    // The patched inputs do reach the end of the header checks.
    assert!(accepted > 0);
}
