//! UML's device-specification grammar, parsed into typed configuration.
//!
//! Two forms are accepted:
//! - vector: `vecN:transport=NAME,key=value,...`
//! - legacy: `ethN=TRANSPORT,positional,...`
//!
//! Unlike UML, which drops what it does not understand, every mistake is reported at parse
//! time with the key and the value that caused it.

mod error;
mod help;
pub(crate) mod legacy;
mod value;
pub(crate) mod vector;

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

pub use error::ConfigError;
pub use help::SPEC_HELP;

use crate::kind::Kind;

/// Parses a device specification: `vecN:transport=NAME,key=value,...` or
/// `ethN=TRANSPORT,positional,...`.
pub fn parse_spec(spec: &str) -> Result<NetSpec, ConfigError> {
    let spec = spec.trim();
    if let Some(rest) = user_shorthand(spec) {
        return vector::parse("vec0", &format!("transport=user,{rest}"));
    }
    let form = || ConfigError::Form {
        spec: spec.to_string(),
    };
    let numbered = |name: &str, prefix: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.len() <= 4 && n.bytes().all(|b| b.is_ascii_digit()))
    };
    if let Some((dev, rest)) = spec.split_once(':') {
        if numbered(dev, "vec") {
            return vector::parse(dev, rest);
        }
    }
    if let Some((dev, rest)) = spec.split_once('=') {
        if numbered(dev, "eth") {
            return legacy::parse(dev, rest);
        }
    }
    Err(form())
}

/// `user` or `user,key=value,...`: shorthand for `vec0:transport=user[,key=value,...]`
/// (QEMU's `-nic user`). Returns the options after `user`.
pub fn user_shorthand(spec: &str) -> Option<&str> {
    let rest = spec.trim().strip_prefix("user")?;
    if rest.is_empty() {
        return Some("");
    }
    rest.strip_prefix(',')
}

impl FromStr for NetSpec {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_spec(s)
    }
}

/// A MAC address. Multicast addresses are rejected by the parser.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A random locally administered unicast address, as UML picks when `mac` is absent.
    pub fn random_local() -> MacAddr {
        let mut b = [0u8; 6];
        // Without /dev/urandom (a bare chroot) fall back to the clock and pid: uniqueness on
        // one host is all that matters.
        let filled = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
            .is_ok();
        if !filled {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let seed = t as u64 ^ (u64::from(std::process::id()) << 32);
            b.copy_from_slice(&seed.to_le_bytes()[..6]);
        }
        b[0] = (b[0] & 0xfe) | 0x02;
        MacAddr(b)
    }
}

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        value::mac(s)
    }
}

/// One network device: its name, the options every transport shares, and the transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    /// The device name as written: `vec0`, `eth1`, ...
    pub name: String,
    /// Options common to every transport.
    pub common: CommonOpts,
    /// The transport and its own options.
    pub transport: TransportConfig,
}

/// Options that every transport accepts (UML's defaults in [`CommonOpts::default`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommonOpts {
    /// Packets per vector system call (`depth`, default 64).
    pub depth: u16,
    /// Interface MTU (`mtu`, default 1500, 576..=65535).
    pub mtu: u16,
    /// Bytes reserved before each frame (`headroom`, default 2).
    pub headroom: u16,
    /// GSO frames into the guest (`gro`, default off); on a transport without a
    /// `virtio_net_hdr` also the software send offloads. Partial checksums and TSO from the
    /// guest on tap, raw and hybrid follow the header, not this (see `backend::features`).
    pub gro: bool,
    /// Multi-packet I/O (`vec`, default on; `vec=0` is one packet per call).
    pub vec: bool,
    /// The device's MAC; `None` means a random locally administered one.
    pub mac: Option<MacAddr>,
    /// Classic BPF program attached as the receive filter (`bpffile`).
    pub bpffile: Option<PathBuf>,
    /// Allow the filter to be replaced while the device runs (`bpfflash`, default off): UML
    /// lets the guest do it (`ethtool -f`); here it is the control socket's `net bpf NIC FILE`.
    pub bpfflash: bool,
    /// Queue pairs offered to the guest (`queues`, default 1; tap, raw and xdp only): each pair
    /// has its own transport descriptor (a tap queue, a socket of a fanout group, an AF_XDP
    /// socket on the NIC's queue of the pair's number) and its own worker thread, so a guest
    /// with several vCPUs moves frames on several host CPUs.
    pub queues: u16,
    /// How long a worker keeps looking for work after an event before it sleeps again
    /// (`busy_poll`: microseconds, 0..=1000, or `auto`; `None`, not given, is `auto`), as
    /// Linux's `SO_BUSY_POLL`: lower latency and more throughput for a streaming guest, for
    /// a core's time spent looking. Kept as given so a `net swap` spec can tell `busy_poll=0`
    /// from none.
    pub busy_poll: Option<BusyPollOpt>,
    /// The host CPUs the device's worker threads (one per queue pair) run on (`affinity`,
    /// default: wherever the process may run), as `taskset`/`sched_setaffinity` would set
    /// them (see `backend::affinity` for what it trades). Checked against the process's own
    /// CPUs when the device opens.
    pub affinity: Option<CpuSet>,
}

/// The number of CPUs a [`CpuSet`] can name (glibc's `CPU_SETSIZE`, the fixed-size mask
/// `sched_setaffinity` takes here).
pub const MAX_CPUS: u16 = 1024;

/// A set of host CPUs (`affinity=`), never empty: the numbers in increasing order, each once,
/// each below [`MAX_CPUS`]. Shown as Linux's CPU lists (`0-3,8`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuSet(Vec<u16>);

impl CpuSet {
    /// The set of `cpus` (any order, repeats allowed); `None` when empty or when a number is
    /// not below [`MAX_CPUS`].
    pub fn new(cpus: impl IntoIterator<Item = u16>) -> Option<CpuSet> {
        let mut v: Vec<u16> = cpus.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        (!v.is_empty() && v.iter().all(|&c| c < MAX_CPUS)).then_some(CpuSet(v))
    }

    /// The CPUs, in increasing order.
    pub fn cpus(&self) -> &[u16] {
        &self.0
    }
}

impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut i = 0;
        while i < self.0.len() {
            let start = self.0[i];
            let mut end = start;
            while i + 1 < self.0.len() && self.0[i + 1] == end + 1 {
                i += 1;
                end += 1;
            }
            if start > self.0[0] {
                f.write_str(",")?;
            }
            if end == start {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
            i += 1;
        }
        Ok(())
    }
}

/// `busy_poll=`'s value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusyPollOpt {
    /// A fixed window, in microseconds (0 is off).
    Micros(u16),
    /// A window sized by the worker from how soon events follow its work
    /// (`backend::busy`), up to 50 µs.
    Auto,
}

/// As the option takes it.
impl fmt::Display for BusyPollOpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusyPollOpt::Micros(us) => write!(f, "{us}"),
            BusyPollOpt::Auto => f.write_str("auto"),
        }
    }
}

/// The longest `busy_poll`, in microseconds (a worker's spell of looking ends after 1 ms in
/// any case, see `backend::busy`).
pub const MAX_BUSY_POLL_US: u16 = 1000;

/// The most queue pairs a device offers (`queues=`): each pair is a worker thread and a
/// descriptor, and vhost-user-backend numbers a thread's queues in a 64-bit mask.
pub const MAX_QUEUE_PAIRS: u16 = 16;

impl Default for CommonOpts {
    fn default() -> Self {
        CommonOpts {
            depth: 64,
            mtu: 1500,
            headroom: 2,
            gro: false,
            vec: true,
            mac: None,
            bpffile: None,
            bpfflash: false,
            queues: 1,
            busy_poll: None,
            affinity: None,
        }
    }
}

/// The transport of a device, with its own options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransportConfig {
    Tap(TapConfig),
    Hybrid(HybridConfig),
    Raw(RawConfig),
    Gre(GreConfig),
    L2tpv3(L2tpv3Config),
    Bess(BessConfig),
    Fd(FdConfig),
    /// libslirp's user networking (`transport=user`, or the `user` shorthand).
    User(UserConfig),
    /// Legacy `ethN=tuntap,...`.
    TunTap(TunTapConfig),
    /// Legacy `ethN=mcast,...`.
    Mcast(McastConfig),
    /// Legacy `ethN=ucast,...`.
    Ucast(UcastConfig),
    /// Legacy `ethN=pcap,...` (receive only).
    Pcap(PcapConfig),
    /// Legacy `ethN=daemon,...` (a `uml_switch` port).
    Daemon(DaemonConfig),
    /// Legacy `ethN=vde,...` or UML >= 6.12's `vecN:transport=vde,vnl=VNL` (a `vde_switch`
    /// port).
    Vde(VdeConfig),
    /// `vecN:transport=xdp,...`: an AF_XDP socket on an interface's first queue (QEMU 8.2's
    /// `-netdev af-xdp`; not one of UML's).
    Xdp(XdpConfig),
}

impl TransportConfig {
    /// Which transport this configures: its row in [`KINDS`](crate::kind::KINDS).
    pub fn kind(&self) -> Kind {
        match self {
            TransportConfig::Tap(_) => Kind::Tap,
            TransportConfig::Hybrid(_) => Kind::Hybrid,
            TransportConfig::Raw(_) => Kind::Raw,
            TransportConfig::Gre(_) => Kind::Gre,
            TransportConfig::L2tpv3(_) => Kind::L2tpv3,
            TransportConfig::Bess(_) => Kind::Bess,
            TransportConfig::Fd(_) => Kind::Fd,
            TransportConfig::User(_) => Kind::User,
            TransportConfig::TunTap(_) => Kind::TunTap,
            TransportConfig::Mcast(_) => Kind::Mcast,
            TransportConfig::Ucast(_) => Kind::Ucast,
            TransportConfig::Pcap(_) => Kind::Pcap,
            TransportConfig::Daemon(_) => Kind::Daemon,
            TransportConfig::Vde(_) => Kind::Vde,
            TransportConfig::Xdp(_) => Kind::Xdp,
        }
    }
}

/// `transport=tap`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapConfig {
    /// `ifname`; `None` creates a new `tapXXXXXX`.
    pub ifname: Option<String>,
}

/// `transport=hybrid`: transmit through a tap, receive through AF_PACKET on the same interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HybridConfig {
    pub ifname: String,
}

/// `transport=raw`: AF_PACKET on an existing interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawConfig {
    pub ifname: String,
}

/// `transport=xdp`: an AF_XDP socket on receive queue 0 of an existing interface, fed by an
/// XDP program that redirects that queue's frames to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpConfig {
    pub ifname: String,
    /// `mode`: which XDP hook runs the redirect.
    pub mode: XdpMode,
}

/// Where the redirect program runs (`mode=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpMode {
    /// The driver's own hook where it has one, the generic one otherwise (the default).
    #[default]
    Auto,
    /// The driver's hook only (`mode=native`): refused where the driver has none.
    Native,
    /// The generic hook in the stack (`mode=skb`): every interface, after the skb is built.
    Skb,
}

/// The largest MTU `transport=xdp` takes: a frame (with an 802.1Q tag) must fit in one
/// 4 KiB UMEM chunk behind the kernel's 256-byte headroom, as a program without multi-buffer
/// support sees only single-chunk frames.
pub const XDP_MAX_MTU: u16 = 4096 - 256 - 18;

/// `transport=gre`: Ethernet over GRE (IP protocol 47).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GreConfig {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// `v6=1`: both addresses are IPv6.
    pub v6: bool,
    /// `rx_key` and `tx_key`: both or neither.
    pub keys: Option<GreKeys>,
    pub sequence: bool,
    pub pin_sequence: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GreKeys {
    pub rx: u32,
    pub tx: u32,
}

/// `transport=l2tpv3`: Ethernet over L2TPv3, raw IP (protocol 115) or UDP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L2tpv3Config {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// `udp=1`: UDP encapsulation, with `srcport`/`dstport`.
    pub udp: bool,
    pub srcport: Option<u16>,
    pub dstport: Option<u16>,
    pub v6: bool,
    pub rx_session: u32,
    pub tx_session: u32,
    /// `rx_cookie` and `tx_cookie`: both or neither; 64-bit with `cookie64=1`.
    pub cookies: Option<L2tpCookies>,
    pub cookie64: bool,
    pub counter: bool,
    pub pin_counter: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L2tpCookies {
    pub rx: u64,
    pub tx: u64,
}

/// `transport=bess`: a unix seqpacket socket, bound to `src` if given, connected to `dst`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BessConfig {
    pub src: Option<PathBuf>,
    pub dst: PathBuf,
}

/// `transport=fd`: an inherited descriptor used both ways.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdConfig {
    pub fd: i32,
}

/// Legacy `ethN=tuntap,IFNAME,MAC,GATE_IP`.
/// `transport=user`: libslirp's user-mode TCP/IP stack (QEMU's `-netdev user`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserConfig {
    /// `net=ADDR/PREFIX`: the guest network; the gateway (and the host's loopback) is its
    /// `.2`, the DNS server its `.3`, the first DHCP address its `.15`. Default 10.0.2.0/24.
    pub net: std::net::Ipv4Addr,
    pub prefix: u8,
    /// `restrict=1`: the guest reaches nothing outside (only port forwards come in).
    pub restrict: bool,
    /// `hostfwd=...`, in the order given.
    pub hostfwd: Vec<HostFwd>,
}

impl Default for UserConfig {
    fn default() -> Self {
        UserConfig {
            net: std::net::Ipv4Addr::new(10, 0, 2, 0),
            prefix: 24,
            restrict: false,
            hostfwd: Vec::new(),
        }
    }
}

impl UserConfig {
    /// The address `n` inside the guest network (`.2` gateway, `.3` DNS, `.15` DHCP start).
    pub fn host(&self, n: u32) -> std::net::Ipv4Addr {
        (u32::from(self.net) + n).into()
    }

    /// The network mask.
    pub fn mask(&self) -> std::net::Ipv4Addr {
        value::prefix_mask(self.prefix).into()
    }
}

/// One port forward from the host into the guest, QEMU's
/// `tcp|udp:[HOSTADDR]:HPORT-[GUESTADDR]:GPORT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostFwd {
    pub udp: bool,
    /// Default 127.0.0.1: only this host can connect unless an address is given.
    pub host_addr: std::net::Ipv4Addr,
    pub host_port: u16,
    /// `None`: the first DHCP address (`.15`).
    pub guest_addr: Option<std::net::Ipv4Addr>,
    pub guest_port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunTapConfig {
    pub ifname: String,
    pub gate_ip: Option<IpAddr>,
}

/// Legacy `ethN=mcast,MAC,GROUP,PORT,TTL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct McastConfig {
    /// Default 239.192.168.1.
    pub group: IpAddr,
    /// Default 1102.
    pub port: u16,
    /// Default 1.
    pub ttl: u8,
}

/// Legacy `ethN=ucast,MAC,REMOTE_IP,LPORT,RPORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UcastConfig {
    pub remote: IpAddr,
    /// Default 1102.
    pub local_port: u16,
    /// Default 1102.
    pub remote_port: u16,
}

/// Legacy `ethN=pcap,IFNAME,FILTER,OPT,OPT,MAC`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcapConfig {
    pub ifname: String,
    /// A pcap filter expression; `None` passes everything.
    pub filter: Option<String>,
    /// Default on.
    pub promisc: bool,
    /// Default off.
    pub optimize: bool,
}

/// Legacy `ethN=daemon,MAC,unix,CTL_PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Default `/tmp/uml.ctl`.
    pub ctl: PathBuf,
}

/// Legacy `ethN=vde,SWITCH,MAC,PORT,GROUP,MODE,DESCR`, or `vecN:transport=vde,vnl=VNL` (the
/// switch from `vnl=vde://PATH` or `vnl=PATH`; port, group, mode and description at their
/// defaults, as UML's vector transport leaves them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VdeConfig {
    /// The switch's directory; `None` is vde's default.
    pub switch: Option<PathBuf>,
    pub port: Option<u32>,
    pub group: Option<String>,
    /// Octal permission bits of the port's socket.
    pub mode: Option<u32>,
    pub descr: Option<String>,
}

#[cfg(test)]
mod tests;
