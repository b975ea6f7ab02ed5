//! Our tunnel headers as an independent dissector sees them: frames encoded by the codecs are
//! written to classic pcap files (outer Ethernet + IPv4 [+ UDP] built here with correct lengths
//! and checksums) and decoded by Wireshark's `tshark`, which must read back the key, sequence
//! number, session, cookie and the inner Ethernet addresses we put in.
//!
//! `tshark` is installed by `resources/setup.sh`; without it this test fails and says so.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use vmm_net::config::{GreConfig, GreKeys, L2tpCookies, L2tpv3Config};
use vmm_net::transport::wire::{GreCodec, L2tpv3Codec};

const OUTER_SRC_MAC: [u8; 6] = [0x02, 0x10, 0x10, 0x10, 0x10, 0x01];
const OUTER_DST_MAC: [u8; 6] = [0x02, 0x10, 0x10, 0x10, 0x10, 0x02];
const INNER_SRC_MAC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x01];
const INNER_DST_MAC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x02];
const SRC_IP: [u8; 4] = [127, 0, 0, 1];
const DST_IP: [u8; 4] = [127, 0, 0, 2];
const L2TP_UDP_PORT: u16 = 1701;

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An inner Ethernet frame (local experimental EtherType 0x88b5) with a short payload.
fn inner_frame() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(INNER_DST_MAC);
    f.extend(INNER_SRC_MAC);
    f.extend(0x88b5u16.to_be_bytes());
    f.extend(b"uml tunnel payload, padded to 46 bytes.........");
    f
}

/// The Internet checksum (RFC 1071) of `data`.
fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Outer Ethernet + IPv4 (no options) around `payload` of IP protocol `protocol`.
fn ipv4_frame(protocol: u8, payload: &[u8]) -> Vec<u8> {
    let mut ip = vec![0x45, 0];
    ip.extend(((20 + payload.len()) as u16).to_be_bytes());
    ip.extend([0x12, 0x34, 0x40, 0x00, 64, protocol, 0, 0]);
    ip.extend(SRC_IP);
    ip.extend(DST_IP);
    let sum = inet_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut f = Vec::new();
    f.extend(OUTER_DST_MAC);
    f.extend(OUTER_SRC_MAC);
    f.extend(0x0800u16.to_be_bytes());
    f.extend(ip);
    f.extend_from_slice(payload);
    f
}

/// A UDP datagram from `port` to `port` with its checksum over the IPv4 pseudo-header.
fn udp(port: u16, payload: &[u8]) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut u = Vec::new();
    u.extend(port.to_be_bytes());
    u.extend(port.to_be_bytes());
    u.extend(len.to_be_bytes());
    u.extend([0, 0]);
    u.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend(SRC_IP);
    pseudo.extend(DST_IP);
    pseudo.extend([0, 17]);
    pseudo.extend(len.to_be_bytes());
    pseudo.extend(&u);
    let sum = match inet_checksum(&pseudo) {
        0 => 0xffff,
        s => s,
    };
    u[6..8].copy_from_slice(&sum.to_be_bytes());
    u
}

/// A classic pcap file (microsecond timestamps, LINKTYPE_ETHERNET) holding `frames`.
fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut out = Vec::new();
    out.extend(0xa1b2_c3d4u32.to_le_bytes());
    out.extend(2u16.to_le_bytes());
    out.extend(4u16.to_le_bytes());
    out.extend(0i32.to_le_bytes()); // thiszone
    out.extend(0u32.to_le_bytes()); // sigfigs
    out.extend(65535u32.to_le_bytes()); // snaplen
    out.extend(1u32.to_le_bytes()); // LINKTYPE_ETHERNET
    for (i, f) in frames.iter().enumerate() {
        out.extend((1_700_000_000u32 + i as u32).to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend((f.len() as u32).to_le_bytes());
        out.extend((f.len() as u32).to_le_bytes());
        out.extend(f);
    }
    std::fs::write(path, out).expect("write pcap");
}

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("wire_tshark_{}_{name}.pcap", std::process::id()))
}

/// Runs tshark on `frames` with `args` and returns one line of tab-separated fields per frame.
fn tshark(name: &str, frames: &[Vec<u8>], args: &[&str], fields: &[&str]) -> Vec<Vec<String>> {
    let path = scratch(name);
    write_pcap(&path, frames);
    let mut cmd = Command::new("tshark");
    cmd.arg("-n").arg("-r").arg(&path);
    // Verify the checksums of the outer headers this test builds (reported per field).
    cmd.args(["-o", "ip.check_checksum:TRUE"]).args(args);
    cmd.args(["-T", "fields", "-E", "separator=/t", "-E", "aggregator=,"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output();
    let _ = std::fs::remove_file(&path);
    let out = match out {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("tshark is not installed: run resources/setup.sh (it installs Debian's tshark)")
        }
        Err(e) => panic!("running tshark: {e}"),
    };
    assert!(
        out.status.success(),
        "tshark {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("tshark output is UTF-8");
    eprintln!("tshark {name}:\n{text}");
    text.lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A number as tshark prints it: decimal, or hexadecimal with `0x` (it depends on the field's
/// display base and the tshark version).
fn num(s: &str) -> u64 {
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.unwrap_or_else(|_| panic!("tshark printed `{s}`, not a number"))
}

/// Both Ethernet headers, outer then inner, as tshark lists repeated fields.
fn eth_pair(outer: [u8; 6], inner: [u8; 6]) -> String {
    format!("{},{}", mac(outer), mac(inner))
}

#[test]
fn gre_key_and_sequence() {
    let mut codec = GreCodec::new(&GreConfig {
        src: LOCAL,
        dst: PEER,
        v6: false,
        keys: Some(GreKeys {
            rx: 1,
            tx: 0xfeed_f00d,
        }),
        sequence: true,
        pin_sequence: false,
    });
    let frames: Vec<Vec<u8>> = (0..2)
        .map(|_| {
            let mut p = vec![0u8; codec.header_len()];
            assert_eq!(codec.encode_header(&mut p), p.len());
            p.extend(inner_frame());
            ipv4_frame(47, &p)
        })
        .collect();
    let rows = tshark(
        "gre",
        &frames,
        &[],
        &[
            "gre.key",
            "gre.sequence_number",
            "gre.proto",
            "eth.src",
            "eth.dst",
            "ip.checksum.status",
        ],
    );
    assert_eq!(rows.len(), 2);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(
            row[5], "1",
            "IPv4 checksum of the test's own header: {row:?}"
        );
        assert_eq!(num(&row[0]), 0xfeed_f00d, "key: {row:?}");
        assert_eq!(num(&row[1]), i as u64 + 1, "sequence: {row:?}");
        assert_eq!(num(&row[2]), 0x6558, "protocol: {row:?}");
        assert_eq!(row[3], eth_pair(OUTER_SRC_MAC, INNER_SRC_MAC));
        assert_eq!(row[4], eth_pair(OUTER_DST_MAC, INNER_DST_MAC));
    }
}

fn l2tpv3(udp: bool, cookie64: bool, cookie: u64, counter: bool) -> L2tpv3Codec {
    L2tpv3Codec::new(&L2tpv3Config {
        src: LOCAL,
        dst: PEER,
        udp,
        srcport: udp.then_some(L2TP_UDP_PORT),
        dstport: udp.then_some(L2TP_UDP_PORT),
        v6: false,
        rx_session: 1,
        tx_session: 0xfedc_ba98,
        cookies: Some(L2tpCookies { rx: 1, tx: cookie }),
        cookie64,
        counter,
        pin_counter: false,
    })
}

fn l2tp_packets(codec: &mut L2tpv3Codec, udp_port: Option<u16>) -> Vec<Vec<u8>> {
    (0..2)
        .map(|_| {
            let mut p = vec![0u8; codec.header_len()];
            assert_eq!(codec.encode_header(&mut p), p.len());
            p.extend(inner_frame());
            match udp_port {
                Some(port) => ipv4_frame(17, &udp(port, &p)),
                None => ipv4_frame(115, &p),
            }
        })
        .collect()
}

/// Preferences for L2TPv3 data sessions, whose framing tshark cannot learn without the
/// control connection: the cookie size, no RFC 4719 sublayer unless asked, and the Ethernet
/// pseudowire for sessions of unknown type (0).
fn l2tp_args(cookie: &'static str, sublayer: &'static str) -> Vec<String> {
    vec![
        "-o".into(),
        format!("l2tp.cookie_size:{cookie}"),
        "-o".into(),
        format!("l2tp.l2_specific:{sublayer}"),
        "-d".into(),
        "l2tp.pw_type==0,eth".into(),
    ]
}

#[test]
fn l2tpv3_over_ip_session_and_32_bit_cookie() {
    let mut codec = l2tpv3(false, false, 0xcafe_f00d, false);
    let frames = l2tp_packets(&mut codec, None);
    let args = l2tp_args("4 Byte Cookie", "None");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let rows = tshark(
        "l2tp_ip",
        &frames,
        &args,
        &[
            "ip.proto",
            "l2tp.sid",
            "l2tp.cookie",
            "eth.src",
            "eth.dst",
            "ip.checksum.status",
        ],
    );
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert_eq!(num(&row[0]), 115, "{row:?}");
        assert_eq!(num(&row[1]), 0xfedc_ba98, "session: {row:?}");
        assert_eq!(row[2], "cafef00d", "cookie: {row:?}");
        assert_eq!(row[3], eth_pair(OUTER_SRC_MAC, INNER_SRC_MAC));
        assert_eq!(row[4], eth_pair(OUTER_DST_MAC, INNER_DST_MAC));
        assert_eq!(
            row[5], "1",
            "IPv4 checksum of the test's own header: {row:?}"
        );
    }
}

/// Over UDP with a 64-bit cookie and UML's counter. tshark knows only RFC 4719's sublayer:
/// UML's plain counter reads as one with the S bit clear and the counter as its 24-bit
/// sequence number (true while the counter stays below 2^24), which is how the counter is
/// checked here.
#[test]
fn l2tpv3_over_udp_session_64_bit_cookie_and_counter() {
    let mut codec = l2tpv3(true, true, 0x0123_4567_89ab_cdef, true);
    let frames = l2tp_packets(&mut codec, Some(L2TP_UDP_PORT));
    let mut args = l2tp_args("8 Byte Cookie", "Default L2-Specific");
    args.extend(["-d", "udp.port==1701,l2tp", "-o", "udp.check_checksum:TRUE"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let rows = tshark(
        "l2tp_udp",
        &frames,
        &args,
        &[
            "l2tp.version",
            "l2tp.type",
            "l2tp.sid",
            "l2tp.cookie",
            "l2tp.l2_spec_s",
            "l2tp.l2_spec_sequence",
            "eth.src",
            "eth.dst",
            "ip.checksum.status",
            "udp.checksum.status",
        ],
    );
    assert_eq!(rows.len(), 2);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(num(&row[0]), 3, "version: {row:?}");
        assert_eq!(num(&row[1]), 0, "data message: {row:?}");
        assert_eq!(num(&row[2]), 0xfedc_ba98, "session: {row:?}");
        assert_eq!(row[3], "0123456789abcdef", "cookie: {row:?}");
        assert!(["0", "False"].contains(&row[4].as_str()), "S bit: {row:?}");
        assert_eq!(num(&row[5]), i as u64 + 1, "counter: {row:?}");
        assert_eq!(row[6], eth_pair(OUTER_SRC_MAC, INNER_SRC_MAC));
        assert_eq!(row[7], eth_pair(OUTER_DST_MAC, INNER_DST_MAC));
        assert_eq!(
            row[8], "1",
            "IPv4 checksum of the test's own header: {row:?}"
        );
        assert_eq!(
            row[9], "1",
            "UDP checksum of the test's own header: {row:?}"
        );
    }
}
