//! A test peer: an AF_PACKET socket on an interface, optionally with `PACKET_VNET_HDR`, and
//! frames to send through it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// An AF_PACKET socket bound to one interface.
pub struct PacketPeer {
    fd: OwnedFd,
}

impl PacketPeer {
    /// Opens the peer on `ifname` (in the calling thread's namespace).
    pub fn open(ifname: &str, vnet_hdr: bool) -> PacketPeer {
        let c = std::ffi::CString::new(ifname).expect("ifname");
        // SAFETY: a valid C string, alive for the call.
        let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
        assert!(index != 0, "no interface {ifname}");
        // SAFETY: socket(2) takes no pointers.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        assert!(raw >= 0, "socket: {}", io::Error::last_os_error());
        // SAFETY: a fresh descriptor, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if vnet_hdr {
            let one: i32 = 1;
            // SAFETY: a live int option value with its size.
            let rc = unsafe {
                libc::setsockopt(
                    raw,
                    libc::SOL_PACKET,
                    libc::PACKET_VNET_HDR,
                    (&one as *const i32).cast(),
                    4,
                )
            };
            assert_eq!(rc, 0, "PACKET_VNET_HDR: {}", io::Error::last_os_error());
        }
        let one: i32 = 1;
        // SAFETY: as above; the peer must not see its own transmissions either.
        unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_PACKET,
                libc::PACKET_IGNORE_OUTGOING,
                (&one as *const i32).cast(),
                4,
            )
        };
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = index as i32;
        // SAFETY: a live, initialised sockaddr_ll with its size.
        let rc = unsafe {
            libc::bind(
                raw,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", io::Error::last_os_error());
        PacketPeer { fd }
    }

    pub fn send(&self, frame: &[u8]) {
        // SAFETY: the kernel reads `frame.len()` bytes from a live slice.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "peer send: {}",
            io::Error::last_os_error()
        );
    }

    /// The next frame whose bytes satisfy `want` (others, e.g. IPv6 router solicitations the
    /// kernel sends on a new interface, are skipped), or `None` after `timeout`.
    pub fn recv_matching(
        &self,
        timeout: Duration,
        want: impl Fn(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = vec![0u8; 70_000];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if !wait_readable(self.fd.as_raw_fd(), left) {
                return None;
            }
            // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 && want(&buf[..n as usize]) {
                return Some(buf[..n as usize].to_vec());
            }
        }
    }
}

/// Waits until `fd` is readable; false on timeout.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    poll_one(fd, libc::POLLIN, timeout)
}

/// Waits until `fd` is writable; false on timeout.
pub fn wait_writable(fd: RawFd, timeout: Duration) -> bool {
    poll_one(fd, libc::POLLOUT, timeout)
}

fn poll_one(fd: RawFd, events: libc::c_short, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    let rc = unsafe { libc::poll(&mut p, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
    rc > 0
}

/// The EtherType our test frames carry (IEEE local experimental), so peers can ignore the
/// kernel's own traffic.
pub const TEST_ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// An Ethernet frame of `len` bytes (>= 14) from `src` to `dst` with our EtherType and a
/// payload pattern seeded by `seed`.
pub fn test_frame(len: usize, src: [u8; 6], dst: [u8; 6], seed: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&TEST_ETHERTYPE);
    f.extend((0..len.saturating_sub(14)).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    f
}

/// Whether a frame (after `skip` header bytes) is one of ours.
pub fn is_test_frame(frame: &[u8], skip: usize) -> bool {
    frame.get(skip + 12..skip + 14) == Some(&TEST_ETHERTYPE[..])
}

/// A 10-byte virtio_net_hdr followed by an Ethernet/IPv4/TCP super-frame with `payload` bytes
/// of TCP payload, marked for TSO (gso_size 1448) with a partial checksum, as a guest or a
/// host stack hands one over with offloads on.
pub fn tso_frame(payload: usize, src: [u8; 6], dst: [u8; 6]) -> Vec<u8> {
    let ip_total = 20 + 20 + payload;
    assert!(ip_total <= 65535);
    let mut f = Vec::with_capacity(10 + 14 + ip_total);
    // virtio_net_hdr: NEEDS_CSUM, GSO_TCPV4, hdr_len 54, gso_size 1448, csum_start 34, csum_offset 16
    f.extend_from_slice(&[1, 1]);
    for v in [54u16, 1448, 34, 16] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = ipv4_header(ip_total, 6, [10, 9, 9, 1], [10, 9, 9, 2]);
    ip[6] = 0x40; // DF
    set_ipv4_checksum(&mut ip);
    f.extend_from_slice(&ip);
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&5001u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&1000u32.to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = 0x18; // PSH ACK
    tcp[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    f.extend_from_slice(&tcp);
    f.extend((0..payload).map(|i| (i % 251) as u8));
    f
}

/// An IPv4 header (no options, TTL 64) of a packet of `total` bytes carrying `protocol` from
/// `src` to `dst`, its checksum filled in.
pub fn ipv4_header(total: usize, protocol: u8, src: [u8; 4], dst: [u8; 4]) -> [u8; 20] {
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = protocol;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    set_ipv4_checksum(&mut ip);
    ip
}

/// An Ethernet frame from `src` to `dst` holding TCP over IPv4 (10.0.0.1:12345 to
/// 10.0.0.2:80, sequence `seq`, ACK|PSH) with `payload`; checksums left as a guest leaves
/// them for TSO (the TCP one zero: the backend computes it).
pub fn tcp4_frame(src: [u8; 6], dst: [u8; 6], seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ipv4_header(
        40 + payload.len(),
        6,
        [10, 0, 0, 1],
        [10, 0, 0, 2],
    ));
    f.extend_from_slice(&[0x30, 0x39, 0x00, 0x50]);
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Recomputes an IPv4 header's checksum (after a field changed).
pub fn set_ipv4_checksum(ip: &mut [u8; 20]) {
    ip[10..12].fill(0);
    let sum = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}
