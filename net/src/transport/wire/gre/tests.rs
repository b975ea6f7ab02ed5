use super::*;
use crate::config::GreKeys;
use crate::transport::wire::test_util::{frame, ipv4, Outer};
use crate::transport::wire::ETH_HLEN;
use std::net::{IpAddr, Ipv4Addr};

fn config(keys: Option<(u32, u32)>, sequence: bool, pin_sequence: bool, v6: bool) -> GreConfig {
    GreConfig {
        src: IpAddr::V4(Ipv4Addr::LOCALHOST),
        dst: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        v6,
        keys: keys.map(|(rx, tx)| GreKeys { rx, tx }),
        sequence,
        pin_sequence,
    }
}

/// The sender's and the receiver's codec of one tunnel direction (keys swapped).
fn pair(keyed: bool, sequence: bool, pin: bool, v6: bool) -> (GreCodec, GreCodec) {
    let (a, b) = (0xdead_beef, 0x0102_0304);
    let tx = config(keyed.then_some((a, b)), sequence, pin, v6);
    let rx = config(keyed.then_some((b, a)), sequence, pin, v6);
    (GreCodec::new(&tx), GreCodec::new(&rx))
}

/// Encodes `frame` behind the next header, wrapped as a raw socket of `outer` delivers it.
fn packet(codec: &mut GreCodec, outer: Outer, frame: &[u8]) -> Vec<u8> {
    let mut gre = vec![0u8; codec.header_len()];
    assert_eq!(codec.encode_header(&mut gre), codec.header_len());
    gre.extend_from_slice(frame);
    outer.wrap(IPPROTO_GRE, &gre)
}

/// A keyed, sequenced packet (key 0x01020304 for a receiver expecting it), IPv4 IHL 5.
fn keyed_seq_packet() -> (GreCodec, Vec<u8>) {
    let (mut tx, rx) = pair(true, true, false, false);
    let p = packet(&mut tx, Outer::Ipv4, &frame(0));
    (rx, p)
}

#[test]
fn header_layout_is_uml_s() {
    let (mut tx, _) = pair(true, true, false, false);
    let mut h = [0u8; 12];
    assert_eq!(tx.encode_header(&mut h), 12);
    assert_eq!(
        h,
        [0x30, 0x00, 0x65, 0x58, 0x01, 0x02, 0x03, 0x04, 0, 0, 0, 1]
    );
    let mut plain = GreCodec::new(&config(None, false, false, false));
    let mut h = [0xffu8; 4];
    assert_eq!(plain.encode_header(&mut h), 4);
    assert_eq!(h, [0x00, 0x00, 0x65, 0x58]);
    let mut seq_only = GreCodec::new(&config(None, true, false, false));
    let mut h = [0u8; 8];
    assert_eq!(seq_only.encode_header(&mut h), 8);
    assert_eq!(h, [0x10, 0x00, 0x65, 0x58, 0, 0, 0, 1]);
}

#[test]
fn round_trips_every_option_combination() {
    for keyed in [false, true] {
        for sequence in [false, true] {
            for pin in [false, true] {
                for outer in [Outer::None, Outer::Ipv4, Outer::Ipv4Options] {
                    let v6 = matches!(outer, Outer::None);
                    let (mut tx, rx) = pair(keyed, sequence, pin, v6);
                    let want_len = 4 + 4 * usize::from(keyed) + 4 * usize::from(sequence);
                    assert_eq!(tx.header_len(), want_len);
                    assert_eq!(rx.rx_ipv4_header(), !v6);
                    for n in 1..=3u32 {
                        let f = frame(n as usize * 7);
                        let p = packet(&mut tx, outer, &f);
                        let got = rx.decode(&p, !v6);
                        assert_eq!(got, Ok(&f[..]), "{keyed} {sequence} {pin} {outer:?}");
                        if sequence {
                            let at = outer.ip_len() + want_len - 4;
                            let seq = u32::from_be_bytes(p[at..at + 4].try_into().unwrap());
                            assert_eq!(seq, if pin { 0 } else { n });
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn sequence_wraps() {
    let (mut tx, rx) = pair(false, true, false, true);
    tx.last_sequence = u32::MAX - 1;
    let mut seqs = Vec::new();
    for _ in 0..3 {
        let p = packet(&mut tx, Outer::None, &frame(0));
        assert!(rx.decode(&p, false).is_ok());
        seqs.push(u32::from_be_bytes(p[4..8].try_into().unwrap()));
    }
    assert_eq!(seqs, [u32::MAX, 0, 1]);
}

#[test]
fn encode_refuses_short_buffer_without_advancing() {
    let (mut tx, _) = pair(true, true, false, false);
    let mut short = [0u8; 11];
    assert_eq!(tx.encode_header(&mut short), 0);
    assert_eq!(short, [0u8; 11]);
    let mut h = [0u8; 12];
    assert_eq!(tx.encode_header(&mut h), 12);
    assert_eq!(
        h[11], 1,
        "the refused call must not consume a sequence number"
    );
}

#[test]
fn encode_before_writes_into_headroom() {
    let (mut tx, rx) = pair(true, true, false, true);
    let f = frame(20);
    let mut buf = vec![0u8; 32 + f.len()];
    buf[32..].copy_from_slice(&f);
    let start = tx.encode_before(&mut buf, 32).unwrap();
    assert_eq!(start, 20);
    assert_eq!(rx.decode(&buf[start..], false), Ok(&f[..]));
    assert_eq!(tx.encode_before(&mut buf, 11), None);
    let past_end = buf.len() + 1;
    assert_eq!(tx.encode_before(&mut buf, past_end), None);
}

#[test]
fn truncated_at_every_field_boundary() {
    let (rx, p) = keyed_seq_packet();
    let trunc = |field: &'static str, need, got| WireError::Truncated { field, need, got };
    assert_eq!(rx.decode(&p[..0], true), Err(trunc("IPv4 header", 20, 0)));
    assert_eq!(rx.decode(&p[..19], true), Err(trunc("IPv4 header", 20, 19)));
    assert_eq!(rx.decode(&p[..20], true), Err(trunc("GRE flags", 2, 0)));
    assert_eq!(rx.decode(&p[..21], true), Err(trunc("GRE flags", 2, 1)));
    assert_eq!(
        rx.decode(&p[..23], true),
        Err(trunc("GRE protocol type", 4, 3))
    );
    assert_eq!(rx.decode(&p[..27], true), Err(trunc("GRE key", 8, 7)));
    assert_eq!(
        rx.decode(&p[..31], true),
        Err(trunc("GRE sequence number", 12, 11))
    );
    assert_eq!(
        rx.decode(&p[..32], true),
        Err(WireError::TooShort { got: 0 })
    );
    assert_eq!(
        rx.decode(&p[..32 + ETH_HLEN - 1], true),
        Err(WireError::TooShort { got: 13 })
    );
    assert!(rx.decode(&p[..32 + ETH_HLEN], true).is_ok());
    for len in 0..32 + ETH_HLEN {
        assert!(rx.decode(&p[..len], true).is_err(), "{len}");
    }
}

#[test]
fn rejects_wrong_key() {
    let (_, mut p) = keyed_seq_packet();
    let other = GreCodec::new(&config(Some((7, 8)), true, false, false));
    assert_eq!(
        other.decode(&p, true),
        Err(WireError::WrongKey {
            got: 0x0102_0304,
            expected: 7
        })
    );
    let (rx, _) = keyed_seq_packet();
    p[24] ^= 1;
    assert!(matches!(
        rx.decode(&p, true),
        Err(WireError::WrongKey { .. })
    ));
}

#[test]
fn rejects_wrong_flags() {
    let (rx, p) = keyed_seq_packet();
    for flags in [
        0x8000u16 | 0x3000,
        0x4000 | 0x3000,
        0x2000,
        0x1000,
        0x0000,
        0x3001,
    ] {
        let mut q = p.clone();
        q[20..22].copy_from_slice(&flags.to_be_bytes());
        assert_eq!(
            rx.decode(&q, true),
            Err(WireError::WrongFlags {
                got: flags,
                expected: 0x3000
            })
        );
    }
    // A keyed packet to an unkeyed tunnel, and the other way round.
    let plain = GreCodec::new(&config(None, false, false, false));
    assert!(matches!(
        plain.decode(&p, true),
        Err(WireError::WrongFlags { got: 0x3000, .. })
    ));
    let mut plain_tx = plain.clone();
    let q = packet(&mut plain_tx, Outer::Ipv4, &frame(0));
    assert!(matches!(
        rx.decode(&q, true),
        Err(WireError::WrongFlags { got: 0, .. })
    ));
}

#[test]
fn rejects_wrong_protocol_type() {
    let (rx, mut p) = keyed_seq_packet();
    p[22..24].copy_from_slice(&0x0800u16.to_be_bytes());
    assert_eq!(
        rx.decode(&p, true),
        Err(WireError::WrongProtocol { got: 0x0800 })
    );
}

#[test]
fn rejects_bad_ipv4_headers() {
    let (rx, p) = keyed_seq_packet();
    for (first, version, ihl) in [(0x44u8, 4u8, 4u8), (0x40, 4, 0), (0x65, 6, 5), (0x05, 0, 5)] {
        let mut q = p.clone();
        q[0] = first;
        assert_eq!(
            rx.decode(&q, true),
            Err(WireError::BadIpHeader { version, ihl })
        );
    }
    let mut q = p.clone();
    q[0] = 0x4f; // IHL 15: 60 bytes, more than the packet holds.
    assert_eq!(
        rx.decode(&q[..40], true),
        Err(WireError::Truncated {
            field: "IPv4 header",
            need: 60,
            got: 40
        })
    );
    for protocol in [17u8, 115, 0, 255] {
        let mut q = p.clone();
        q[9] = protocol;
        assert_eq!(
            rx.decode(&q, true),
            Err(WireError::WrongIpProtocol {
                got: protocol,
                expected: 47
            })
        );
    }
}

#[test]
fn skips_the_real_ipv4_header_length() {
    let (mut tx, rx) = pair(true, false, false, false);
    let mut gre = vec![0u8; tx.header_len()];
    let _ = tx.encode_header(&mut gre);
    let f = frame(3);
    gre.extend_from_slice(&f);
    for words in [0u8, 1, 10] {
        assert_eq!(rx.decode(&ipv4(47, words, &gre), true), Ok(&f[..]));
    }
}

#[test]
fn reasons_are_distinct_labels() {
    let (rx, p) = keyed_seq_packet();
    assert_eq!(rx.decode(&p[..3], true).unwrap_err().reason(), "truncated");
    assert_eq!(
        WireError::WrongKey {
            got: 1,
            expected: 2
        }
        .reason(),
        "wrong_key"
    );
}
