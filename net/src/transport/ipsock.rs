//! Socket addresses and sockets of the IP and unix-socket tunnels (gre, l2tpv3, mcast, ucast,
//! bess): building `sockaddr`s from `IpAddr`s without allocating, binding with errors that say
//! what went wrong in the user's terms, and comparing a received datagram's source address.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use super::sys::{self, cvt};

/// A socket address in the form the kernel takes, with its length.
#[derive(Clone, Copy)]
pub struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl std::fmt::Debug for SockAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip_port() {
            Some((ip, port)) => write!(f, "{ip}:{port}"),
            None => write!(f, "sockaddr(family {})", self.storage.ss_family),
        }
    }
}

impl SockAddr {
    fn zeroed() -> SockAddr {
        SockAddr {
            // SAFETY: sockaddr_storage is plain data for which all-zero is a valid value.
            storage: unsafe { std::mem::zeroed() },
            len: 0,
        }
    }

    /// `ip:port` (the port is 0 for raw IP sockets).
    pub fn ip(ip: IpAddr, port: u16) -> SockAddr {
        let mut a = SockAddr::zeroed();
        match ip {
            IpAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: port.to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(v4.octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for every sockaddr type;
                // the write stays inside `a.storage`.
                unsafe {
                    std::ptr::write(
                        (&mut a.storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>(),
                        sin,
                    )
                };
                a.len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            }
            IpAddr::V6(v6) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: port.to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr {
                        s6_addr: v6.octets(),
                    },
                    sin6_scope_id: 0,
                };
                // SAFETY: as above, for sockaddr_in6.
                unsafe {
                    std::ptr::write(
                        (&mut a.storage as *mut libc::sockaddr_storage)
                            .cast::<libc::sockaddr_in6>(),
                        sin6,
                    )
                };
                a.len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            }
        }
        a
    }

    /// A unix socket path (at most 107 bytes, as `sun_path` holds 108 with the NUL).
    pub fn unix(path: &Path) -> io::Result<SockAddr> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_os_str().as_bytes();
        let mut sun = libc::sockaddr_un {
            sun_family: libc::AF_UNIX as libc::sa_family_t,
            sun_path: [0; 108],
        };
        if bytes.len() >= sun.sun_path.len() || bytes.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "socket path `{}` is longer than 107 bytes or contains NUL",
                    path.display()
                ),
            ));
        }
        for (o, b) in sun.sun_path.iter_mut().zip(bytes) {
            *o = *b as libc::c_char;
        }
        let mut a = SockAddr::zeroed();
        // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_un.
        unsafe {
            std::ptr::write(
                (&mut a.storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_un>(),
                sun,
            )
        };
        a.len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
        Ok(a)
    }

    /// The address a socket is bound to (`getsockname`).
    pub fn local_of(fd: &OwnedFd) -> io::Result<SockAddr> {
        let mut a = SockAddr::zeroed();
        a.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: the kernel writes at most `a.len` bytes into `a.storage` and updates `a.len`.
        cvt(unsafe {
            libc::getsockname(
                fd.as_raw_fd(),
                (&mut a.storage as *mut libc::sockaddr_storage).cast(),
                &mut a.len,
            )
        })?;
        Ok(a)
    }

    pub fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }

    pub fn len(&self) -> libc::socklen_t {
        self.len
    }

    /// The IP address and port of an `AF_INET`/`AF_INET6` address.
    pub fn ip_port(&self) -> Option<(IpAddr, u16)> {
        ip_port_of(&self.storage, self.len)
    }
}

/// The IP address and port in a `sockaddr_storage` the kernel filled (`len` bytes of it), or
/// `None` for another family or a short name.
pub fn ip_port_of(s: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<(IpAddr, u16)> {
    let len = len as usize;
    match i32::from(s.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is aligned
            // for, and the kernel wrote all of it.
            let sin = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some((
                IpAddr::V4(Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes())),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some((
                IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)),
                u16::from_be(sin6.sin6_port),
            ))
        }
        _ => None,
    }
}

/// Which received datagrams a tunnel keeps or drops by their source address.
#[derive(Clone, Copy, Debug)]
pub struct SourceMatch {
    pub ip: Option<IpAddr>,
    /// `None`: any port (raw IP sockets report port 0).
    pub port: Option<u16>,
}

impl SourceMatch {
    /// Whether the source `s` (as `recvmmsg` filled it) is this one.
    pub fn matches(&self, s: &libc::sockaddr_storage, len: libc::socklen_t) -> bool {
        let Some((ip, port)) = ip_port_of(s, len) else {
            return false;
        };
        self.ip.is_none_or(|want| want == ip) && self.port.is_none_or(|want| want == port)
    }
}

pub fn family(ip: IpAddr) -> i32 {
    match ip {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    }
}

/// `bind(2)`.
pub fn bind(fd: &OwnedFd, addr: &SockAddr) -> io::Result<()> {
    // SAFETY: `addr` is a valid socket address of `addr.len()` bytes that outlives the call.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), addr.as_ptr(), addr.len()) })?;
    Ok(())
}

/// `connect(2)`.
pub fn connect(fd: &OwnedFd, addr: &SockAddr) -> io::Result<()> {
    // SAFETY: as for bind.
    cvt(unsafe { libc::connect(fd.as_raw_fd(), addr.as_ptr(), addr.len()) })?;
    Ok(())
}

/// Why [`bound_socket`] failed: the step, the system's error and, for the usual failures, a
/// hint in the user's terms.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("socket: {source}{}", socket_hint(.source))]
    Socket {
        #[source]
        source: io::Error,
    },
    #[error("setsockopt(SO_REUSEADDR): {source}")]
    ReuseAddr {
        #[source]
        source: io::Error,
    },
    #[error("bind {addr}: {source}{}", bind_hint(.source))]
    Bind {
        /// The local address, as `{:?}` of [`SockAddr`] renders it.
        addr: String,
        #[source]
        source: io::Error,
    },
}

fn socket_hint(e: &io::Error) -> &'static str {
    if e.raw_os_error() == Some(libc::EPERM) {
        " (raw IP sockets need CAP_NET_RAW: run as root)"
    } else {
        ""
    }
}

fn bind_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => {
            " (another socket, perhaps another tunnel, already has this address and port)"
        }
        Some(libc::EADDRNOTAVAIL) => " (not an address of this host or namespace)",
        _ => "",
    }
}

/// A socket of `family` and `ty` bound to `local`, with an error that names the address and,
/// for the usual failures, says why in the user's terms.
pub fn bound_socket(
    family: i32,
    ty: i32,
    protocol: i32,
    local: &SockAddr,
    reuse: bool,
) -> Result<OwnedFd, BindError> {
    let fd = sys::socket(family, ty, protocol).map_err(|source| BindError::Socket { source })?;
    if reuse {
        sys::setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
            .map_err(|source| BindError::ReuseAddr { source })?;
    }
    bind(&fd, local).map_err(|source| BindError::Bind {
        addr: format!("{local:?}"),
        source,
    })?;
    Ok(fd)
}

/// Where a send-only socket is bound ([`send_only_socket`]): the reserved base address of the
/// family's multicast range (224.0.0.0, ff0e::), which no host joins.
fn send_only_address(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(224, 0, 0, 0)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0xff0e, 0, 0, 0, 0, 0, 0, 0)),
    }
}

/// A raw IP socket of `protocol`, of the family of `like`, that sends and never receives.
///
/// The kernel gives every raw socket of a protocol a copy of each packet of that protocol
/// addressed to the socket's bound address, or to any address when unbound. Bound to a
/// multicast group nobody joins, this one matches no packet the host receives, so it queues
/// none and nothing waits on it. Why a tunnel wants that: each packet it sends is charged to
/// the sending socket until the device frees it, and the free takes the socket's wait-queue
/// lock, and wakes whoever sleeps there; the receiving socket has the datapath's epoll there,
/// this one has nobody (unless a send is refused and the datapath waits to write).
///
/// Binding to a multicast address leaves the socket no source address of its own: the caller
/// gives it per message (`IP_PKTINFO`, `IPV6_PKTINFO`), as the tunnel's `src`.
pub fn send_only_socket(like: IpAddr, protocol: i32) -> Result<OwnedFd, BindError> {
    bound_socket(
        family(like),
        libc::SOCK_RAW,
        protocol,
        &SockAddr::ip(send_only_address(like), 0),
        false,
    )
}

/// A tunnel's two ends must be of the family its `v6` option names; why not, if they are
/// not (the reason of an `Invalid` error).
pub fn check_family(src: IpAddr, dst: IpAddr, v6: bool) -> Result<(), String> {
    if src.is_ipv6() == v6 && dst.is_ipv6() == v6 {
        return Ok(());
    }
    Err(format!(
        "src {src} and dst {dst} must both be {}",
        if v6 { "IPv6 (v6=1)" } else { "IPv4" }
    ))
}

/// A raw IP tunnel's two sockets of `protocol`: one bound to `src`, which receives (and on
/// which the datapath waits), and one that only sends ([`send_only_socket`]), as gre and
/// L2TPv3 over IP use them.
pub struct RawIpPair {
    pub rx: OwnedFd,
    pub tx: OwnedFd,
}

impl RawIpPair {
    pub fn open(src: IpAddr, protocol: i32) -> Result<RawIpPair, BindError> {
        let rx = bound_socket(
            family(src),
            libc::SOCK_RAW,
            protocol,
            &SockAddr::ip(src, 0),
            false,
        )?;
        let tx = send_only_socket(src, protocol)?;
        Ok(RawIpPair { rx, tx })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tunnels_ends_are_of_the_family_v6_names() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(check_family(v4, v4, false), Ok(()));
        assert_eq!(check_family(v6, v6, true), Ok(()));
        assert_eq!(
            check_family(v4, v6, false).unwrap_err(),
            "src 192.0.2.1 and dst 2001:db8::1 must both be IPv4"
        );
        assert_eq!(
            check_family(v4, v4, true).unwrap_err(),
            "src 192.0.2.1 and dst 192.0.2.1 must both be IPv6 (v6=1)"
        );
    }
}
