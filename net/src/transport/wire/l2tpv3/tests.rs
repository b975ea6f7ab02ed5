use super::*;
use crate::config::L2tpCookies;
use crate::transport::wire::test_util::{frame, Outer};
use crate::transport::wire::ETH_HLEN;
use std::net::{IpAddr, Ipv4Addr};

#[derive(Clone, Copy, Debug)]
struct Opts {
    udp: bool,
    v6: bool,
    cookie: CookieLen,
    counter: bool,
    pin: bool,
}

const COOKIE64: (u64, u64) = (0x1122_3344_5566_7788, 0x99aa_bbcc_ddee_ff00);
const COOKIE32: (u64, u64) = (0xcafe_f00d, 0x0bad_c0de);

fn config(o: Opts, rx_session: u32, tx_session: u32, swap: bool) -> L2tpv3Config {
    let cookies = match o.cookie {
        CookieLen::None => None,
        CookieLen::Bits32 => Some(COOKIE32),
        CookieLen::Bits64 => Some(COOKIE64),
    }
    .map(|(a, b)| if swap { (b, a) } else { (a, b) })
    .map(|(rx, tx)| L2tpCookies { rx, tx });
    L2tpv3Config {
        src: IpAddr::V4(Ipv4Addr::LOCALHOST),
        dst: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        udp: o.udp,
        srcport: None,
        dstport: None,
        v6: o.v6,
        rx_session,
        tx_session,
        cookies,
        cookie64: o.cookie == CookieLen::Bits64,
        counter: o.counter,
        pin_counter: o.pin,
    }
}

/// Sender and receiver of one direction: sessions and cookies swapped.
fn pair(o: Opts, a: u32, b: u32) -> (L2tpv3Codec, L2tpv3Codec) {
    (
        L2tpv3Codec::new(&config(o, a, b, false)),
        L2tpv3Codec::new(&config(o, b, a, true)),
    )
}

fn outer_of(o: Opts, with_options: bool) -> Outer {
    match (o.udp || o.v6, with_options) {
        (true, _) => Outer::None,
        (false, false) => Outer::Ipv4,
        (false, true) => Outer::Ipv4Options,
    }
}

fn packet(codec: &mut L2tpv3Codec, outer: Outer, frame: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; codec.header_len()];
    assert_eq!(codec.encode_header(&mut h), codec.header_len());
    h.extend_from_slice(frame);
    outer.wrap(IPPROTO_L2TP, &h)
}

const RAW_V4_COOKIE32_COUNTER: Opts = Opts {
    udp: false,
    v6: false,
    cookie: CookieLen::Bits32,
    counter: true,
    pin: false,
};

const UDP_COOKIE64_COUNTER: Opts = Opts {
    udp: true,
    v6: false,
    cookie: CookieLen::Bits64,
    counter: true,
    pin: false,
};

#[test]
fn header_layout_is_uml_s() {
    let (mut tx, _) = pair(UDP_COOKIE64_COUNTER, 1, 0x8000_0001);
    let mut h = [0u8; 20];
    assert_eq!(tx.encode_header(&mut h), 20);
    assert_eq!(
        h,
        [
            0x00, 0x03, 0x00, 0x00, 0x80, 0, 0, 0x01, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
            0x00, 0, 0, 0, 1
        ]
    );
    let (mut tx, _) = pair(RAW_V4_COOKIE32_COUNTER, 1, 2);
    let mut h = [0u8; 12];
    assert_eq!(tx.encode_header(&mut h), 12);
    assert_eq!(h, [0, 0, 0, 2, 0x0b, 0xad, 0xc0, 0xde, 0, 0, 0, 1]);
    let bare = Opts {
        cookie: CookieLen::None,
        counter: false,
        ..RAW_V4_COOKIE32_COUNTER
    };
    let (mut tx, _) = pair(bare, 1, 0xffff_ffff);
    let mut h = [0u8; 4];
    assert_eq!(tx.encode_header(&mut h), 4);
    assert_eq!(h, [0xff; 4]);
}

#[test]
fn round_trips_every_option_combination() {
    let sessions = [0u32, 1, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff];
    for udp in [false, true] {
        for v6 in [false, true] {
            for cookie in [CookieLen::None, CookieLen::Bits32, CookieLen::Bits64] {
                for (counter, pin) in [(false, false), (true, false), (true, true)] {
                    for with_options in [false, true] {
                        for (i, &a) in sessions.iter().enumerate() {
                            let b = sessions[(i + 1) % sessions.len()];
                            let o = Opts {
                                udp,
                                v6,
                                cookie,
                                counter,
                                pin,
                            };
                            let (mut tx, rx) = pair(o, a, b);
                            let hl = 4 * usize::from(udp)
                                + 4
                                + cookie.bytes()
                                + 4 * usize::from(counter);
                            assert_eq!(tx.header_len(), hl);
                            assert_eq!(tx.cookie_len(), cookie);
                            assert_eq!(rx.rx_ipv4_header(), !udp && !v6);
                            let outer = outer_of(o, with_options);
                            for n in 1..=3u32 {
                                let f = frame(n as usize);
                                let p = packet(&mut tx, outer, &f);
                                assert_eq!(rx.decode(&p), Ok(&f[..]), "{o:?} {a:#x}");
                                let at = outer.ip_len() + 4 * usize::from(udp);
                                assert_eq!(p[at..at + 4], b.to_be_bytes());
                                if counter {
                                    let at = outer.ip_len() + hl - 4;
                                    let c = u32::from_be_bytes(p[at..at + 4].try_into().unwrap());
                                    assert_eq!(c, if pin { 0 } else { n });
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn counter_wraps() {
    let (mut tx, rx) = pair(UDP_COOKIE64_COUNTER, 5, 6);
    tx.last_counter = u32::MAX - 1;
    let mut counters = Vec::new();
    for _ in 0..3 {
        let p = packet(&mut tx, Outer::None, &frame(0));
        assert!(rx.decode(&p).is_ok());
        counters.push(u32::from_be_bytes(p[16..20].try_into().unwrap()));
    }
    assert_eq!(counters, [u32::MAX, 0, 1]);
}

#[test]
fn encode_refuses_short_buffer_and_fills_headroom() {
    let (mut tx, rx) = pair(UDP_COOKIE64_COUNTER, 5, 6);
    let mut short = [0u8; 19];
    assert_eq!(tx.encode_header(&mut short), 0);
    assert_eq!(short, [0u8; 19]);
    let f = frame(10);
    let mut buf = vec![0u8; 24 + f.len()];
    buf[24..].copy_from_slice(&f);
    assert_eq!(tx.encode_before(&mut buf, 19), None);
    let start = tx.encode_before(&mut buf, 24).unwrap();
    assert_eq!(start, 4);
    assert_eq!(rx.decode(&buf[start..]), Ok(&f[..]));
    assert_eq!(
        buf[start + 19],
        1,
        "refused calls must not consume counter values"
    );
}

#[test]
fn truncated_at_every_field_boundary() {
    let trunc = |field: &'static str, need, got| Err(WireError::Truncated { field, need, got });
    // Raw IPv4, 32-bit cookie, counter: IP(20) session(4) cookie(4) counter(4).
    let (mut tx, rx) = pair(RAW_V4_COOKIE32_COUNTER, 10, 20);
    let p = packet(&mut tx, Outer::Ipv4, &frame(0));
    assert_eq!(rx.decode(&p[..0]), trunc("IPv4 header", 20, 0));
    assert_eq!(rx.decode(&p[..19]), trunc("IPv4 header", 20, 19));
    assert_eq!(rx.decode(&p[..20]), trunc("L2TPv3 session id", 4, 0));
    assert_eq!(rx.decode(&p[..27]), trunc("L2TPv3 cookie", 8, 7));
    assert_eq!(rx.decode(&p[..31]), trunc("L2TPv3 counter", 12, 11));
    assert_eq!(rx.decode(&p[..32]), Err(WireError::TooShort { got: 0 }));
    assert_eq!(
        rx.decode(&p[..32 + ETH_HLEN - 1]),
        Err(WireError::TooShort { got: 13 })
    );
    assert!(rx.decode(&p[..32 + ETH_HLEN]).is_ok());
    // UDP, 64-bit cookie, counter: word(4) session(4) cookie(8) counter(4).
    let (mut tx, rx) = pair(UDP_COOKIE64_COUNTER, 10, 20);
    let p = packet(&mut tx, Outer::None, &frame(0));
    assert_eq!(rx.decode(&p[..3]), trunc("L2TP header word", 4, 3));
    assert_eq!(rx.decode(&p[..7]), trunc("L2TPv3 session id", 8, 7));
    assert_eq!(rx.decode(&p[..15]), trunc("L2TPv3 cookie", 16, 15));
    assert_eq!(rx.decode(&p[..19]), trunc("L2TPv3 counter", 20, 19));
    for len in 0..20 + ETH_HLEN {
        assert!(rx.decode(&p[..len]).is_err(), "{len}");
    }
}

#[test]
fn rejects_wrong_session_and_cookie_cookie_first() {
    let (mut tx, rx) = pair(RAW_V4_COOKIE32_COUNTER, 10, 20);
    let p = packet(&mut tx, Outer::Ipv4, &frame(0));
    let mut q = p.clone();
    q[23] ^= 1; // session 20 -> 21
    assert_eq!(
        rx.decode(&q),
        Err(WireError::WrongSession {
            got: 21,
            expected: 20
        })
    );
    let mut q = p.clone();
    q[27] ^= 1;
    assert_eq!(
        rx.decode(&q),
        Err(WireError::WrongCookie {
            got: 0x0bad_c0df,
            expected: 0x0bad_c0de
        })
    );
    // Both wrong: the cookie is reported, as UML checks it first.
    q[23] ^= 1;
    assert!(matches!(rx.decode(&q), Err(WireError::WrongCookie { .. })));

    let (mut tx, rx) = pair(UDP_COOKIE64_COUNTER, 10, 20);
    let mut p = packet(&mut tx, Outer::None, &frame(0));
    p[8] ^= 0x80;
    assert_eq!(
        rx.decode(&p),
        Err(WireError::WrongCookie {
            got: 0x19aa_bbcc_ddee_ff00,
            expected: COOKIE64.1
        })
    );
}

#[test]
fn udp_header_word_must_be_v3_data() {
    let (mut tx, rx) = pair(UDP_COOKIE64_COUNTER, 10, 20);
    let p = packet(&mut tx, Outer::None, &frame(0));
    // Control message (T bit), L2TPv2, version 0.
    for word in [0xc803_0000u32, 0x0002_0000, 0x0000_0000, 0x8003_0000] {
        let mut q = p.clone();
        q[..4].copy_from_slice(&word.to_be_bytes());
        assert_eq!(rx.decode(&q), Err(WireError::NotL2tpv3Data { got: word }));
    }
    // Reserved bits are ignored, as RFC 3931 asks.
    for word in [0x0003_ffffu32, 0x7ff3_0000] {
        let mut q = p.clone();
        q[..4].copy_from_slice(&word.to_be_bytes());
        assert!(rx.decode(&q).is_ok(), "{word:#x}");
    }
}

#[test]
fn raw_v4_rejects_other_ip_protocols_and_bad_headers() {
    let (mut tx, rx) = pair(RAW_V4_COOKIE32_COUNTER, 10, 20);
    let p = packet(&mut tx, Outer::Ipv4Options, &frame(0));
    assert!(rx.decode(&p).is_ok());
    let mut q = p.clone();
    q[9] = 47;
    assert_eq!(
        rx.decode(&q),
        Err(WireError::WrongIpProtocol {
            got: 47,
            expected: 115
        })
    );
    let mut q = p.clone();
    q[0] = 0x43;
    assert_eq!(
        rx.decode(&q),
        Err(WireError::BadIpHeader { version: 4, ihl: 3 })
    );
}

#[test]
fn cookie32_uses_low_bits_only() {
    let o = RAW_V4_COOKIE32_COUNTER;
    let mut c = config(o, 1, 2, false);
    c.cookies = Some(L2tpCookies {
        rx: 0xffff_ffff_0000_0001,
        tx: 0x1_0000_0002,
    });
    let mut tx = L2tpv3Codec::new(&c);
    let mut h = [0u8; 12];
    let _ = tx.encode_header(&mut h);
    assert_eq!(h[4..8], [0, 0, 0, 2]);
}
