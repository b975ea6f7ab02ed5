//! `transport=l2tpv3`: Ethernet pseudowires in L2TPv3 data messages, over raw IP (protocol
//! 115, `udp=0`) or UDP (`udp=1`, bound to `src:srcport`, sending to `dst:dstport`), IPv4 or
//! IPv6.
//!
//! Headers (session, 32/64-bit cookie, UML's plain 32-bit counter) are written and checked by
//! [`L2tpv3Codec`]; the datapath is [`Tunnel`]'s. Only datagrams from the configured peer
//! (`dst`, and `dstport` over UDP) are accepted (others count as `rx_dropped_foreign`); then
//! cookie and session must match. Over raw IP, several tunnels may share a local address and
//! are told apart by peer address, then session and cookie; over UDP the local port is the
//! tunnel's own (bind fails with "address in use" for a second one).

use super::ipsock::{self, RawIpPair, SockAddr, SourceMatch};
use super::tunnel::{Tunnel, TunnelOpts};
use super::wire::{L2tpv3Codec, IPPROTO_L2TP};
use super::TransportError;
use super::{Opening, Transport};
use crate::config::L2tpv3Config;
use crate::config::TransportConfig;

pub type L2tpv3 = Tunnel<L2tpv3Codec>;

fn socket_error(source: ipsock::BindError) -> TransportError {
    TransportError::Socket {
        transport: "l2tpv3",
        source,
    }
}

fn invalid(reason: String) -> TransportError {
    TransportError::Invalid {
        transport: "l2tpv3",
        reason,
    }
}

pub fn open(config: &L2tpv3Config, depth: usize) -> Result<L2tpv3, TransportError> {
    ipsock::check_family(config.src, config.dst, config.v6).map_err(invalid)?;
    let (fd, dest, peer_port, tx) = if config.udp {
        let (Some(srcport), Some(dstport)) = (config.srcport, config.dstport) else {
            return Err(invalid("udp=1 needs srcport and dstport".into()));
        };
        let fd = ipsock::bound_socket(
            ipsock::family(config.src),
            libc::SOCK_DGRAM,
            libc::IPPROTO_UDP,
            &SockAddr::ip(config.src, srcport),
            false,
        )
        .map_err(socket_error)?;
        (fd, SockAddr::ip(config.dst, dstport), Some(dstport), None)
    } else {
        // Sent through a socket that receives nothing, as gre's (see there).
        let sockets = RawIpPair::open(config.src, i32::from(IPPROTO_L2TP)).map_err(socket_error)?;
        (
            sockets.rx,
            SockAddr::ip(config.dst, 0),
            None,
            Some(sockets.tx),
        )
    };
    Ok(Tunnel::new(
        "l2tpv3",
        fd,
        L2tpv3Codec::new(config),
        depth,
        TunnelOpts {
            source: tx.is_some().then_some(config.src),
            tx,
            dest: Some(dest),
            accept_from: Some(SourceMatch {
                ip: Some(config.dst),
                port: peer_port,
            }),
            ..TunnelOpts::default()
        },
    ))
}

/// The opener of `transport=l2tpv3` (see [`crate::kind`]).
pub(crate) fn from_config(
    config: &TransportConfig,
    o: &Opening,
) -> Result<Box<dyn Transport>, TransportError> {
    let TransportConfig::L2tpv3(c) = config else {
        return Err(super::wrong_config("l2tpv3"));
    };
    Ok(Box::new(open(c, o.depth)?))
}
