//! The transports this crate knows, one row each: the name, how it is written (the vector
//! form `vecN:transport=NAME,...`, the legacy form `ethN=NAME,...`, or both), its options, its
//! help and a minimal example, and the function that opens it.
//!
//! The grammar ([`crate::config`]) looks names up here (a name without a row, or without a row
//! of that form, is an unknown transport), the help text ([`crate::config::SPEC_HELP`]) is
//! assembled from the rows, and the factory ([`crate::transport::open`]) opens a configuration
//! through its row. Adding a transport is its file under `transport/` (its opener), its
//! options' parser in the grammar, a [`TransportConfig`](crate::config::TransportConfig) variant and a row here.

use crate::config::{legacy, vector};
use crate::transport::{self, Opener};

/// A transport, whichever form names it: one per [`TransportConfig`](crate::config::TransportConfig) variant, and one row of
/// [`KINDS`] each, at the index of its discriminant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Tap,
    Hybrid,
    Raw,
    Gre,
    L2tpv3,
    Bess,
    Fd,
    User,
    TunTap,
    Mcast,
    Ucast,
    Pcap,
    Daemon,
    Vde,
    Xdp,
}

impl Kind {
    /// This transport's row.
    pub fn row(self) -> &'static Row {
        &KINDS[self as usize]
    }
}

/// The transport `vecN:transport=NAME` names, and its vector form.
pub fn vector(name: &str) -> Option<(&'static Row, &'static VectorForm)> {
    KINDS
        .iter()
        .filter(|r| r.name == name)
        .find_map(|r| Some((r, r.vector.as_ref()?)))
}

/// The transport `ethN=NAME` names, and its legacy form.
pub fn legacy(name: &str) -> Option<(&'static Row, &'static LegacyForm)> {
    KINDS
        .iter()
        .filter(|r| r.name == name)
        .find_map(|r| Some((r, r.legacy.as_ref()?)))
}

/// One transport.
pub struct Row {
    pub kind: Kind,
    /// `transport=NAME` or `ethN=NAME`.
    pub name: &'static str,
    /// The vector form, if the transport has one.
    pub vector: Option<VectorForm>,
    /// The legacy form, if the transport has one.
    pub legacy: Option<LegacyForm>,
    /// Opens the transport from its configuration.
    pub(crate) open: Opener,
}

impl Row {
    /// The smallest specification of each of this transport's forms.
    pub fn examples(&self) -> impl Iterator<Item = &'static str> {
        let vector = self.vector.as_ref().map(|v| v.example);
        let legacy = self.legacy.as_ref().map(|l| l.example);
        vector.into_iter().chain(legacy)
    }
}

/// `vecN:transport=NAME,key=value,...`.
pub struct VectorForm {
    /// The options of this transport beyond those every vector transport takes
    /// (`config::vector::COMMON`); an option of another transport is refused, naming the
    /// transports it belongs to.
    pub options: &'static [&'static str],
    /// Its options in the help text (continuation lines are indented there).
    pub synopsis: &'static str,
    /// What it is, for the help text.
    pub about: &'static str,
    /// A minimal specification.
    pub example: &'static str,
    /// Builds the configuration from the options (membership already checked).
    pub(crate) parse: vector::Parse,
}

/// `ethN=NAME,field,field,...`.
pub struct LegacyForm {
    /// `NAME,FIELD,...`: the positional fields, which also bounds how many are accepted.
    pub usage: &'static str,
    /// What it is, for the help text.
    pub about: &'static str,
    /// A minimal specification.
    pub example: &'static str,
    /// Builds the configuration from the fields.
    pub(crate) parse: legacy::Parse,
}

impl LegacyForm {
    /// How many fields may follow the name.
    pub fn max_fields(&self) -> usize {
        self.usage.matches(',').count()
    }
}

/// Options of tap, hybrid and raw: those that carry a `virtio_net_hdr` (`gro` hands the
/// guest's offloads to the host; on gre, l2tpv3, bess and fd the backend does them itself).
/// Tap also takes `queues` (a multi-queue tap: one queue per pair).
const TAP: &[&str] = &["gro", "ifname", "queues"];
/// Options of raw and hybrid, which receive through an AF_PACKET socket and its classic BPF
/// filter.
const VNET_BPF: &[&str] = &["gro", "ifname", "bpffile", "bpfflash"];
/// Raw also takes `queues` (one socket per pair, in a fanout group).
const RAW: &[&str] = &["gro", "ifname", "bpffile", "bpfflash", "queues"];

/// Every transport, in UML's order within each form (the order of the help text and of the
/// names listed when a name is unknown).
pub const KINDS: &[Row] = &[
    Row {
        kind: Kind::Tap,
        name: "tap",
        vector: Some(VectorForm {
            options: TAP,
            synopsis: "ifname=NAME (optional: a new tapN is created) queues=N",
            about: "A tap device; Linux has no multi-packet I/O on a tap, so one packet per call.",
            example: "vec0:transport=tap",
            parse: vector::tap,
        }),
        legacy: None,
        open: transport::tap::from_config,
    },
    Row {
        kind: Kind::Hybrid,
        name: "hybrid",
        vector: Some(VectorForm {
            options: VNET_BPF,
            synopsis: "ifname=NAME (required)",
            about: "Transmit through the tap NAME, receive through AF_PACKET on it (multi-packet).",
            example: "vec0:transport=hybrid,ifname=tap0",
            parse: vector::hybrid,
        }),
        legacy: None,
        open: transport::hybrid::from_config,
    },
    Row {
        kind: Kind::Raw,
        name: "raw",
        vector: Some(VectorForm {
            options: RAW,
            synopsis: "ifname=NAME (required) queues=N",
            about: "AF_PACKET on any interface (a veth end, a NIC); copies of our own \
                    transmissions are\n\
                    dropped.",
            example: "vec0:transport=raw,ifname=veth0",
            parse: vector::raw,
        }),
        legacy: None,
        open: transport::raw::from_config,
    },
    Row {
        kind: Kind::Gre,
        name: "gre",
        vector: Some(VectorForm {
            options: &[
                "src",
                "dst",
                "v6",
                "rx_key",
                "tx_key",
                "sequence",
                "pin_sequence",
                "gro",
            ],
            synopsis: "src=ADDR dst=ADDR (required) v6=0|1 rx_key=N tx_key=N sequence=0|1 \
                       pin_sequence=0|1",
            about: "Ethernet over GRE (IP protocol 47); keys both or neither; sequence numbers \
                    start\n\
                    at 1 (always 0 with pin_sequence). v6=1 makes both addresses IPv6.",
            example: "vec0:transport=gre,src=192.0.2.1,dst=192.0.2.2",
            parse: vector::gre,
        }),
        legacy: None,
        open: transport::gre::from_config,
    },
    Row {
        kind: Kind::L2tpv3,
        name: "l2tpv3",
        vector: Some(VectorForm {
            options: &[
                "src",
                "dst",
                "v6",
                "udp",
                "srcport",
                "dstport",
                "rx_session",
                "tx_session",
                "rx_cookie",
                "tx_cookie",
                "cookie64",
                "counter",
                "pin_counter",
                "gro",
            ],
            synopsis: "src=ADDR dst=ADDR rx_session=N tx_session=N (required) udp=0|1 \
                       srcport=N dstport=N\n\
                       v6=0|1 rx_cookie=N tx_cookie=N cookie64=0|1 counter=0|1 pin_counter=0|1",
            about: "Ethernet over L2TPv3, raw IP (protocol 115) or UDP (udp=1 needs srcport \
                    and dstport;\n\
                    src_port/dst_port, the how-to's spelling, are accepted too). Cookies both \
                    or\n\
                    neither, 64-bit with cookie64=1. counter is UML's plain 32-bit counter \
                    (first 1, 0\n\
                    with pin_counter), not RFC 4719's default L2-specific sublayer that \
                    Linux's own\n\
                    l2tp driver uses.",
            example: "vec0:transport=l2tpv3,src=192.0.2.1,dst=192.0.2.2,rx_session=1,tx_session=1",
            parse: vector::l2tpv3,
        }),
        legacy: None,
        open: transport::l2tpv3::from_config,
    },
    Row {
        kind: Kind::Bess,
        name: "bess",
        vector: Some(VectorForm {
            options: &["src", "dst", "gro"],
            synopsis: "dst=PATH (required) src=PATH",
            about: "A unix seqpacket socket connected to dst (bound to src if given); paths \
                    <= 107 bytes.",
            example: "vec0:transport=bess,dst=/tmp/bess.sock",
            parse: vector::bess,
        }),
        legacy: None,
        open: transport::bess::from_config,
    },
    Row {
        kind: Kind::Fd,
        name: "fd",
        vector: Some(VectorForm {
            options: &["fd", "gro"],
            synopsis: "fd=N (required)",
            about: "An inherited descriptor used both ways, bare frames: a datagram or \
                    seqpacket socket\n\
                    (multi-packet), or with vec=0 also a tap without vnet header.",
            example: "vec0:transport=fd,fd=3",
            parse: vector::fd,
        }),
        legacy: None,
        open: transport::fd::from_config,
    },
    Row {
        kind: Kind::User,
        name: "user",
        vector: Some(VectorForm {
            options: &["hostfwd", "net", "restrict"],
            synopsis: "hostfwd=FWD (repeatable) net=ADDR/PREFIX restrict=0|1",
            about: "Rootless user networking through libslirp (QEMU's -netdev user): DHCP, \
                    DNS,\n\
                    outbound TCP/UDP through the host's sockets; needs no privilege. With the \
                    default\n\
                    net=10.0.2.0/24 the guest gets 10.0.2.15, the gateway 10.0.2.2 is also \
                    the host's\n\
                    loopback (10.0.2.2:PORT reaches 127.0.0.1:PORT) and 10.0.2.3 answers DNS. \
                    Prefix\n\
                    8..=27. restrict=1: nothing outbound, only forwards come in.\n\
                    hostfwd=[tcp|udp]:[HOSTADDR]:HPORT-[GUESTADDR]:GPORT forwards the host's\n\
                    HOSTADDR:HPORT (default 127.0.0.1, never all addresses unless 0.0.0.0 is \
                    given)\n\
                    to the guest's GUESTADDR:GPORT (default the first DHCP address); give \
                    hostfwd=\n\
                    once per forward, e.g. hostfwd=tcp::2222-:22,hostfwd=udp::5353-:53.",
            example: "vec0:transport=user",
            parse: vector::user,
        }),
        legacy: None,
        open: transport::user::from_config,
    },
    Row {
        kind: Kind::TunTap,
        name: "tuntap",
        vector: None,
        legacy: Some(LegacyForm {
            usage: "tuntap,IFNAME,MAC,GATE_IP",
            about: "an existing tap IFNAME (required: the setuid uml_net\n\
                    helper that made one is obsolete)",
            example: "eth0=tuntap,tap0",
            parse: legacy::tuntap,
        }),
        open: transport::tap::from_config,
    },
    Row {
        kind: Kind::Mcast,
        name: "mcast",
        vector: None,
        legacy: Some(LegacyForm {
            usage: "mcast,MAC,GROUP,PORT,TTL",
            about: "UDP multicast; defaults 239.192.168.1, 1102, 1",
            example: "eth0=mcast",
            parse: legacy::mcast,
        }),
        open: transport::udp::from_config,
    },
    Row {
        kind: Kind::Ucast,
        name: "ucast",
        vector: None,
        legacy: Some(LegacyForm {
            usage: "ucast,MAC,REMOTE_IP,LPORT,RPORT",
            about: "UDP point to point; REMOTE_IP required; ports 1102",
            example: "eth0=ucast,,192.0.2.2",
            parse: legacy::ucast,
        }),
        open: transport::udp::from_config,
    },
    Row {
        kind: Kind::Pcap,
        name: "pcap",
        vector: None,
        legacy: Some(LegacyForm {
            usage: "pcap,IFNAME,FILTER,OPT,OPT,MAC",
            about: "receive only, through a pcap filter expression (no\n\
                    commas in it); OPT: promisc|nopromisc,\n\
                    optimize|nooptimize (defaults promisc, nooptimize)",
            example: "eth0=pcap,eth0",
            parse: legacy::pcap,
        }),
        open: transport::pcap::from_config,
    },
    Row {
        kind: Kind::Daemon,
        name: "daemon",
        vector: None,
        legacy: Some(LegacyForm {
            usage: "daemon,MAC,unix,CTL_PATH",
            about: "a port on uml_switch; CTL_PATH default /tmp/uml.ctl",
            example: "eth0=daemon",
            parse: legacy::daemon,
        }),
        open: transport::daemon::from_config,
    },
    // Both forms: UML >= 6.12's vector form of the legacy `ethN=vde,...`, the same switch port.
    Row {
        kind: Kind::Vde,
        name: "vde",
        vector: Some(VectorForm {
            options: &["vnl"],
            synopsis: "vnl=VNL",
            about: "A port on a vde_switch (UML >= 6.12's vector form of ethN=vde). VNL is \
                    libvdeplug4's\n\
                    locator: vde:///DIR or a plain DIR (the switch's directory, holding \
                    DIR/ctl), or\n\
                    vde:// or empty (libvdeplug's default switch: /var/run/vde.ctl, then \
                    /tmp/vde.ctl).\n\
                    We speak vde_switch's protocol ourselves (every frame one datagram, \
                    multi-packet);\n\
                    libvdeplug's other modules (tap://, slirp://, vxvde://, cmd://, ...) and \
                    its\n\
                    [options] are refused: use transport=tap or user, or ethN=vde for \
                    PORT/GROUP/MODE.",
            example: "vec0:transport=vde",
            parse: vector::vde,
        }),
        legacy: Some(LegacyForm {
            usage: "vde,SWITCH,MAC,PORT,GROUP,MODE,DESCR",
            about: "a port on vde_switch; MODE in octal",
            example: "eth0=vde",
            parse: legacy::vde,
        }),
        open: transport::vde::from_config,
    },
    // Not UML's: QEMU 8.2's af-xdp netdev, in our vector form.
    Row {
        kind: Kind::Xdp,
        name: "xdp",
        vector: Some(VectorForm {
            options: &["gro", "ifname", "mode", "queues"],
            synopsis: "ifname=NAME (required) mode=native|skb queues=N",
            about: "AF_XDP on receive queue 0 of any interface (a veth end, a NIC), or on \
                    queues\n\
                    0..N-1 with queues=N (pair K serves NIC queue K): an XDP program \
                    redirects\n\
                    their frames to us, past the host's stack (frames on other queues still \
                    reach\n\
                    the host); sends go straight to the driver. mode: the driver's hook \
                    (native,\n\
                    the default where the driver has one) or the generic one (skb: frames \
                    over a\n\
                    chunk, a local sender's GSO, are dropped and counted). The program goes \
                    when\n\
                    the device does. mtu at most 3822.",
            example: "vec0:transport=xdp,ifname=veth0",
            parse: vector::xdp,
        }),
        legacy: None,
        open: transport::xdp::from_config,
    },
];

// Every kind has its row, at the index of its discriminant, so `Kind::row` is an index.
const _: () = {
    assert!(KINDS.len() == Kind::Xdp as usize + 1);
    let mut i = 0;
    while i < KINDS.len() {
        assert!(KINDS[i].kind as usize == i, "KINDS is out of Kind's order");
        i += 1;
    }
};

/// The vector transports that take `option`, in table order.
pub fn with_option(option: &str) -> impl Iterator<Item = &'static Row> + '_ {
    KINDS.iter().filter(move |r| {
        r.vector
            .as_ref()
            .is_some_and(|v| v.options.contains(&option))
    })
}

/// `option` as some vector transport's row spells it, if one takes it.
pub fn vector_option(option: &str) -> Option<&'static str> {
    KINDS
        .iter()
        .filter_map(|r| r.vector.as_ref())
        .flat_map(|v| v.options.iter().copied())
        .find(|o| *o == option)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_spec, ConfigError, SPEC_HELP};

    /// A name without a row is an unknown transport in either form, and so is a name whose
    /// row lacks that form: nothing falls through to another transport.
    #[test]
    fn names_without_a_row_of_that_form_are_refused_at_parse_time() {
        let unknown = |spec: &str, listed: &str| match parse_spec(spec) {
            Err(e @ ConfigError::UnknownTransport { .. }) => {
                assert!(e.to_string().contains(listed), "{spec}: {e}")
            }
            other => panic!("{spec}: {other:?}"),
        };
        for name in ["nosuch", "ta", "vde2", "TAP", "tuntap0"] {
            assert!(KINDS.iter().all(|r| r.name != name));
            unknown(&format!("vec0:transport={name}"), "tap, hybrid, raw");
            unknown(&format!("eth0={name}"), "tuntap, mcast, ucast");
        }
        for r in KINDS {
            if r.vector.is_none() {
                unknown(&format!("vec0:transport={}", r.name), "fd, user, vde");
            }
            if r.legacy.is_none() {
                unknown(&format!("eth0={}", r.name), "daemon, vde");
            }
        }
    }

    /// Each row's examples parse into that row's transport, and the row is in the help text.
    #[test]
    fn every_row_parses_its_example_and_is_in_the_help() {
        for r in KINDS {
            assert_eq!(r.kind.row().name, r.name);
            assert!(
                r.vector.is_some() || r.legacy.is_some(),
                "{}: no form",
                r.name
            );
            for example in r.examples() {
                let spec = parse_spec(example).unwrap_or_else(|e| panic!("{example}: {e}"));
                assert_eq!(spec.transport.kind(), r.kind, "{example}");
            }
            if let Some(v) = &r.vector {
                assert!(v.example.starts_with(&format!("vec0:transport={}", r.name)));
                let entry = format!("\n  {:10}{}", r.name, v.synopsis.lines().next().unwrap());
                assert!(SPEC_HELP.contains(&entry), "{entry:?} not in the help");
                for option in v.options {
                    assert!(
                        SPEC_HELP.contains(&format!("{option}=")),
                        "{}: option {option} not in the help",
                        r.name
                    );
                }
            }
            if let Some(l) = &r.legacy {
                assert!(l.example.starts_with(&format!("eth0={}", r.name)));
                assert!(l.usage.starts_with(&format!("{},", r.name)));
                let entry = format!("\n  ethN={} ", l.usage);
                assert!(SPEC_HELP.contains(&entry), "{entry:?} not in the help");
            }
        }
    }

    /// A legacy form refuses more fields than its usage names.
    #[test]
    fn legacy_usage_bounds_the_fields() {
        for r in KINDS {
            let Some(l) = &r.legacy else { continue };
            let full = format!("eth0={}{}", r.name, ",".repeat(l.max_fields()));
            // Empty fields take their defaults; one that is required fails, but not for the count.
            assert!(
                !matches!(parse_spec(&full), Err(ConfigError::TooManyFields { .. })),
                "{full}"
            );
            let over = format!("{full},");
            assert!(
                matches!(parse_spec(&over), Err(ConfigError::TooManyFields { .. })),
                "{over}"
            );
        }
    }
}
