//! `transport=user` driven through the `Transport` API with hand-built frames: libslirp's DHCP,
//! ARP, outbound TCP to the host's loopback through the gateway, a port forward into the guest.
//! No guest, no privilege: as root, the last test runs the others again as `nobody`.

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::*;
use crate::config::HostFwd;

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// libslirp's own MAC for the gateway (52:55 followed by the gateway's address).
const SLIRP_MAC: [u8; 6] = [0x52, 0x55, 10, 0, 2, 2];
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

fn open(c: &UserConfig) -> User {
    User::open(c, 1500).expect("open transport=user")
}

fn csum(data: &[u8], mut sum: u32) -> u16 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn eth(dst: [u8; 6], ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&ty.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
    h[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = csum(&h, 0);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn dhcp_discover() -> Vec<u8> {
    let mut b = vec![0u8; 236];
    b[0] = 1; // BOOTREQUEST
    b[1] = 1;
    b[2] = 6;
    b[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    b[28..34].copy_from_slice(&GUEST_MAC);
    b.extend_from_slice(&[99, 130, 83, 99, 53, 1, 1, 255]);
    b.resize(236 + 312, 0); // libslirp wants the whole vendor area
    let mut udp = vec![0, 68, 0, 67, 0, 0, 0, 0];
    udp[4..6].copy_from_slice(&((8 + b.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&b);
    eth(
        [0xff; 6],
        0x0800,
        &ipv4(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 17, &udp),
    )
}

fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
    a.extend_from_slice(&GUEST_MAC);
    a.extend_from_slice(&GUEST.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&target.octets());
    eth([0xff; 6], 0x0806, &a)
}

fn tcp_syn(dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&1000u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02; // SYN
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&GUEST.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&t);
    let c = csum(&pseudo, 0);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    eth(SLIRP_MAC, 0x0800, &ipv4(GUEST, dst, 6, &t))
}

/// Sends `frames` to the transport as the guest would.
fn send(u: &mut User, frames: &[Vec<u8>]) {
    let mut b = PacketBatch::new(frames.len(), 2048);
    for f in frames {
        let p = b.next_free().unwrap();
        p.space()[..f.len()].copy_from_slice(f);
        p.set_len(f.len());
        b.commit();
    }
    assert_eq!(u.send(&b).unwrap(), frames.len());
}

/// Receives frames as the datapath would (waiting on `rx_fd`) until one satisfies `want`,
/// calling `also` between waits; panics after a few seconds.
fn expect(
    u: &mut User,
    what: &str,
    mut also: impl FnMut(),
    want: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut batch = PacketBatch::new(8, 65_600);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let mut p = libc::pollfd {
            fd: u.rx_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        unsafe { libc::poll(&mut p, 1, 50) };
        while u.recv(&mut batch).unwrap() > 0 {
            for f in batch.packets() {
                if want(f.data()) {
                    return f.data().to_vec();
                }
                seen.push(f.len());
            }
        }
        also();
    }
    panic!("no {what} from libslirp within 5 s (other frames, by length: {seen:?})");
}

fn ethertype(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[12], f[13]])
}

/// The IPv4 payload of a frame with protocol `proto`, with the IP source and destination.
fn ip_payload(f: &[u8], proto: u8) -> Option<(Ipv4Addr, Ipv4Addr, &[u8])> {
    if f.len() < 34 || ethertype(f) != 0x0800 || f[23] != proto {
        return None;
    }
    let ihl = usize::from(f[14] & 0xf) * 4;
    let src = Ipv4Addr::new(f[26], f[27], f[28], f[29]);
    let dst = Ipv4Addr::new(f[30], f[31], f[32], f[33]);
    Some((src, dst, &f[14 + ihl..]))
}

fn tcp_flags(t: &[u8]) -> (u16, u16, u8) {
    (
        u16::from_be_bytes([t[0], t[1]]),
        u16::from_be_bytes([t[2], t[3]]),
        t[13],
    )
}

#[test]
fn dhcp_discover_gets_an_offer_of_dot_15() {
    let mut u = open(&UserConfig::default());
    send(&mut u, &[dhcp_discover()]);
    let offer = expect(
        &mut u,
        "DHCP offer",
        || {},
        |f| ip_payload(f, 17).is_some_and(|(_, _, udp)| udp.len() > 8 + 240 && udp[8] == 2),
    );
    let (src, _, udp) = ip_payload(&offer, 17).unwrap();
    assert_eq!(src, GATEWAY);
    assert_eq!(&udp[0..4], &[0, 67, 0, 68], "ports 67 -> 68");
    let bootp = &udp[8..];
    assert_eq!(&bootp[4..8], &0x1234_5678u32.to_be_bytes(), "xid");
    assert_eq!(
        Ipv4Addr::new(bootp[16], bootp[17], bootp[18], bootp[19]),
        GUEST
    );
    assert_eq!(&bootp[236..240], &[99, 130, 83, 99]);
    assert_eq!(&bootp[240..243], &[53, 1, 2], "DHCPOFFER");
    assert!(
        offer[0..6] == [0xff; 6] || offer[0..6] == GUEST_MAC,
        "{:x?}",
        &offer[0..6]
    );
}

#[test]
fn arp_for_the_gateway_is_answered() {
    let mut u = open(&UserConfig::default());
    send(&mut u, &[arp_request(GATEWAY)]);
    let r = expect(
        &mut u,
        "ARP reply",
        || {},
        |f| f.len() >= 42 && ethertype(f) == 0x0806 && f[21] == 2,
    );
    assert_eq!(&r[0..6], &GUEST_MAC);
    assert_eq!(&r[22..28], &SLIRP_MAC, "sender MAC");
    assert_eq!(&r[28..32], &GATEWAY.octets(), "sender address");
    assert_eq!(&r[38..42], &GUEST.octets(), "target address");
}

#[test]
fn tcp_to_the_gateway_reaches_the_hosts_loopback() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut u = open(&UserConfig::default());
    send(
        &mut u,
        &[arp_request(GATEWAY), tcp_syn(GATEWAY, 40000, port)],
    );
    let mut accepted = None;
    let synack = expect(
        &mut u,
        "SYN-ACK",
        || {
            if accepted.is_none() {
                accepted = listener.accept().ok();
            }
        },
        |f| ip_payload(f, 6).is_some_and(|(_, _, t)| tcp_flags(t) == (port, 40000, 0x12)),
    );
    let (src, dst, _) = ip_payload(&synack, 6).unwrap();
    assert_eq!((src, dst), (GATEWAY, GUEST));
    let deadline = Instant::now() + Duration::from_secs(5);
    while accepted.is_none() && Instant::now() < deadline {
        accepted = listener.accept().ok();
        std::thread::sleep(Duration::from_millis(10));
    }
    let (_, peer) = accepted.expect("the host listener on 127.0.0.1 accepted the guest's SYN");
    assert!(peer.ip().is_loopback(), "{peer}");
}

#[test]
fn restricted_guest_reaches_nothing_outside() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut u = open(&UserConfig {
        restrict: true,
        ..UserConfig::default()
    });
    send(
        &mut u,
        &[arp_request(GATEWAY), tcp_syn(GATEWAY, 40001, port)],
    );
    // The ARP reply proves libslirp ran; then nothing may connect.
    expect(&mut u, "ARP reply", || {}, |f| ethertype(f) == 0x0806);
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut batch = PacketBatch::new(8, 65_600);
    while Instant::now() < deadline {
        while u.recv(&mut batch).unwrap() > 0 {}
        assert!(
            listener.accept().is_err(),
            "restrict=1 let a connection out"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn hostfwd_turns_a_host_connection_into_a_syn_to_the_guest() {
    let hport = free_port();
    let mut u = open(&UserConfig {
        hostfwd: vec![HostFwd {
            udp: false,
            host_addr: Ipv4Addr::LOCALHOST,
            host_port: hport,
            guest_addr: None,
            guest_port: 8080,
        }],
        ..UserConfig::default()
    });
    // The guest makes itself known (as its DHCP or ARP would), then the host connects.
    send(&mut u, &[arp_request(GATEWAY)]);
    expect(&mut u, "ARP reply", || {}, |f| ethertype(f) == 0x0806);
    let mut conn = TcpStream::connect(("127.0.0.1", hport)).expect("connect to the forward");
    let syn = expect(
        &mut u,
        "SYN to the guest",
        || {},
        |f| {
            ip_payload(f, 6)
                .is_some_and(|(_, _, t)| tcp_flags(t).1 == 8080 && tcp_flags(t).2 == 0x02)
        },
    );
    let (src, dst, _) = ip_payload(&syn, 6).unwrap();
    assert_eq!(dst, GUEST);
    assert_eq!(src, GATEWAY);
    assert_eq!(&syn[0..6], &GUEST_MAC);
    drop(u);
    // The forward goes with the transport.
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 1];
    assert!(matches!(conn.read(&mut b), Ok(0) | Err(_)));
}

#[test]
fn hostfwd_on_a_taken_port_is_an_error_naming_it() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let e = User::open(
        &UserConfig {
            hostfwd: vec![HostFwd {
                udp: false,
                host_addr: Ipv4Addr::LOCALHOST,
                host_port: port,
                guest_addr: None,
                guest_port: 22,
            }],
            ..UserConfig::default()
        },
        1500,
    )
    .err()
    .expect("a taken port must fail");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
}

/// As root: the tests above again, as `nobody` with no groups (what an ordinary user has).
#[test]
fn works_as_an_unprivileged_user() {
    // SAFETY: geteuid takes nothing.
    if unsafe { libc::geteuid() } != 0 || std::env::var_os("USER_NET_AS_NOBODY").is_some() {
        return;
    }
    // A copy nobody can run: the clone may sit under a home directory it cannot enter.
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("user-net-nobody-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.join("tests");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        .args(["transport::user::tests::", "--test-threads=1"])
        .env("USER_NET_AS_NOBODY", "1")
        .output()
        .expect("setpriv");
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "as nobody: {}\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("test result: ok. 7 passed"), "{text}");
}
