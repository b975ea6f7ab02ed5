//! `transport=gre`: Ethernet frames in GRE (Transparent Ethernet Bridging, IP protocol 47)
//! over a raw IPv4 or IPv6 socket bound to `src`, every packet sent to `dst`.
//!
//! Headers are written and checked by [`GreCodec`] (key, sequence number, as UML speaks them);
//! the datapath is [`Tunnel`]'s.
//!
//! One tunnel per local address, as in UML: a raw socket receives every GRE packet addressed to
//! its bound address, and GRE has nothing to demultiplex on but the key. Binding never fails
//! (raw sockets share addresses), so two tunnels on the same `src` would both see every packet.
//! We narrow that down: only packets whose source is `dst` are accepted (the others are counted
//! in `rx_dropped_foreign`), then the key must be `rx_key` (`rx_dropped_header.wrong_key`). So
//! tunnels sharing a local address work when their remote addresses differ, or, with the same
//! remote, when their keys differ (each then counts the other's packets as wrong-key drops).
//!
//! Packets leave through a second raw socket that receives nothing
//! ([`ipsock::send_only_socket`]), from `src` given with each message, so the frees of sent
//! packets never take the receiving socket's wait-queue lock, where the datapath's epoll
//! sleeps. The kernel still fragments a packet longer than the path's MTU, as UML's socket has
//! it do (an `IPPROTO_RAW` socket would send without receiving too, but the kernel fragments
//! nothing it sends: a full 1514-byte frame in GRE would not fit a 1500-byte path).

use super::ipsock::{self, RawIpPair, SockAddr, SourceMatch};
use super::tunnel::{Tunnel, TunnelOpts};
use super::wire::{GreCodec, IPPROTO_GRE};
use super::TransportError;
use super::{Opening, Transport};
use crate::config::GreConfig;
use crate::config::TransportConfig;

pub type Gre = Tunnel<GreCodec>;

fn socket_error(source: ipsock::BindError) -> TransportError {
    TransportError::Socket {
        transport: "gre",
        source,
    }
}

pub fn open(config: &GreConfig, depth: usize) -> Result<Gre, TransportError> {
    ipsock::check_family(config.src, config.dst, config.v6).map_err(|reason| {
        TransportError::Invalid {
            transport: "gre",
            reason,
        }
    })?;
    let sockets = RawIpPair::open(config.src, i32::from(IPPROTO_GRE)).map_err(socket_error)?;
    Ok(Tunnel::new(
        "gre",
        sockets.rx,
        GreCodec::new(config),
        depth,
        TunnelOpts {
            tx: Some(sockets.tx),
            source: Some(config.src),
            dest: Some(SockAddr::ip(config.dst, 0)),
            accept_from: Some(SourceMatch {
                ip: Some(config.dst),
                port: None,
            }),
            ..TunnelOpts::default()
        },
    ))
}

/// The opener of `transport=gre` (see [`crate::kind`]).
pub(crate) fn from_config(
    config: &TransportConfig,
    o: &Opening,
) -> Result<Box<dyn Transport>, TransportError> {
    let TransportConfig::Gre(c) = config else {
        return Err(super::wrong_config("gre"));
    };
    Ok(Box::new(open(c, o.depth)?))
}
