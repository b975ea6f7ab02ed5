//! The legacy UDP transports: `ethN=mcast` (a multicast group as a shared Ethernet segment)
//! and `ethN=ucast` (point to point). Frames are bare Ethernet, one per UDP datagram, moved in
//! batches through [`Tunnel`].
//!
//! mcast, as UML: `SO_REUSEADDR`, bound to `group:port`, member of the group (on the interface
//! the kernel picks, `INADDR_ANY`), multicast loopback on so guests on one host see each other,
//! sending to `group:port` with the configured TTL. Unlike UML we must not deliver our own
//! transmissions back to the guest (UML relies on the guest to ignore frames with its own
//! source MAC, which breaks once the guest bridges). We use two sockets: the group member
//! receives, and a second socket, connected to `group:port`, sends. Connecting fixes that
//! socket's source address and ephemeral port (read back with `getsockname`), and every
//! datagram from exactly that address and port is one of ours: dropped, and counted in
//! `rx_dropped_own`. A UML peer sends from the group port itself, so it is never mistaken for
//! us, and receivers do not care about the source port.
//!
//! ucast, as UML: bound to `INADDR_ANY:lport` (`SO_REUSEADDR`), sending to `remote:rport`,
//! accepting from anyone (UML's peers send from an unbound-address socket, so their source
//! address is whatever the route picks).

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use super::ipsock::{self, SockAddr, SourceMatch};
use super::sys::{self, cvt};
use super::tunnel::{Bare, Tunnel, TunnelOpts};
use super::TransportError;
use super::{Opening, Transport};
use crate::config::TransportConfig;
use crate::config::{McastConfig, UcastConfig};

pub type Udp = Tunnel<Bare>;

fn invalid(transport: &'static str) -> impl Fn(String) -> TransportError {
    move |reason| TransportError::Invalid { transport, reason }
}

fn socket_error(transport: &'static str) -> impl Fn(ipsock::BindError) -> TransportError {
    move |source| TransportError::Socket { transport, source }
}

pub fn open_mcast(config: &McastConfig, depth: usize) -> Result<Udp, TransportError> {
    let err = invalid("mcast");
    let IpAddr::V4(group) = config.group else {
        return Err(err(format!(
            "group {}: only IPv4 multicast groups are supported (as in UML)",
            config.group
        )));
    };
    if !group.is_multicast() {
        return Err(err(format!("group {group} is not a multicast address")));
    }
    let group_addr = SockAddr::ip(config.group, config.port);
    let rx = ipsock::bound_socket(
        libc::AF_INET,
        libc::SOCK_DGRAM,
        libc::IPPROTO_UDP,
        &group_addr,
        true,
    )
    .map_err(socket_error("mcast"))?;
    let mreq = libc::ip_mreq {
        imr_multiaddr: libc::in_addr {
            s_addr: u32::from_ne_bytes(group.octets()),
        },
        imr_interface: libc::in_addr {
            s_addr: u32::from_ne_bytes(Ipv4Addr::UNSPECIFIED.octets()),
        },
    };
    // SAFETY: `mreq` is a live, initialised ip_mreq and its exact size is passed.
    cvt(unsafe {
        libc::setsockopt(
            rx.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_ADD_MEMBERSHIP,
            (&mreq as *const libc::ip_mreq).cast(),
            std::mem::size_of::<libc::ip_mreq>() as libc::socklen_t,
        )
    })
    .map_err(|e| {
        err(format!(
            "join group {group}: {e} (is there a multicast route? e.g. \
             `ip route add 224.0.0.0/4 dev lo` and `ip link set lo multicast on`)"
        ))
    })?;
    let tx = sys::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDP)
        .map_err(|e| err(format!("socket: {e}")))?;
    let raw = tx.as_raw_fd();
    for (name, opt, value) in [
        ("IP_MULTICAST_LOOP", libc::IP_MULTICAST_LOOP, 1),
        (
            "IP_MULTICAST_TTL",
            libc::IP_MULTICAST_TTL,
            i32::from(config.ttl),
        ),
    ] {
        sys::setsockopt_int(raw, libc::IPPROTO_IP, opt, value)
            .map_err(|e| err(format!("setsockopt({name}): {e}")))?;
    }
    ipsock::connect(&tx, &group_addr)
        .map_err(|e| err(format!("connect to {group}:{}: {e}", config.port)))?;
    let local = SockAddr::local_of(&tx).map_err(|e| err(format!("getsockname: {e}")))?;
    let own = local.ip_port().map(|(ip, port)| SourceMatch {
        // An unspecified source (no route decided it yet) still leaves the ephemeral port,
        // which no other socket of this host sends from.
        ip: (!ip.is_unspecified()).then_some(ip),
        port: Some(port),
    });
    Ok(Tunnel::new(
        "mcast",
        rx,
        Bare,
        depth,
        TunnelOpts {
            tx: Some(tx),
            own,
            ..TunnelOpts::default()
        },
    ))
}

pub fn open_ucast(config: &UcastConfig, depth: usize) -> Result<Udp, TransportError> {
    let any = match config.remote {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    let fd = ipsock::bound_socket(
        ipsock::family(config.remote),
        libc::SOCK_DGRAM,
        libc::IPPROTO_UDP,
        &SockAddr::ip(any, config.local_port),
        true,
    )
    .map_err(socket_error("ucast"))?;
    Ok(Tunnel::new(
        "ucast",
        fd,
        Bare,
        depth,
        TunnelOpts {
            dest: Some(SockAddr::ip(config.remote, config.remote_port)),
            ..TunnelOpts::default()
        },
    ))
}

/// The opener of `ethN=mcast` and `ethN=ucast` (see [`crate::kind`]).
pub(crate) fn from_config(
    config: &TransportConfig,
    o: &Opening,
) -> Result<Box<dyn Transport>, TransportError> {
    Ok(Box::new(match config {
        TransportConfig::Mcast(c) => open_mcast(c, o.depth)?,
        TransportConfig::Ucast(c) => open_ucast(c, o.depth)?,
        _ => return Err(super::wrong_config("mcast")),
    }))
}
