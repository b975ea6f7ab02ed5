//! The vector form: `vecN:transport=NAME,key=value,...`.
//!
//! UML splits on `,` then `=`, drops items it does not understand and matches the transport by
//! prefix; every such mistake is an error here, naming the option and its value.

use super::error::ConfigError;
use super::help::VECTOR_NAMES;
use super::value;
use super::*;
use crate::kind;

/// Options every vector transport takes; each transport's own are in its row of
/// [`KINDS`](crate::kind::KINDS).
pub const COMMON: &[&str] = &[
    "transport",
    "depth",
    "mtu",
    "headroom",
    "vec",
    "mac",
    "busy_poll",
    "affinity",
];

/// Builds one transport's configuration from its options (membership already checked).
pub(crate) type Parse = fn(&Opts) -> Result<TransportConfig, ConfigError>;

/// Options that may be given more than once, each occurrence adding one more (QEMU's
/// `hostfwd=` and `cpu-affinity=` repeat the same way); every other option given twice is an
/// error.
const REPEATABLE: &[&str] = &["hostfwd", "affinity"];

/// Spellings of UML's how-to that its code does not accept; harmless to accept both.
const ALIASES: &[(&str, &str)] = &[("src_port", "srcport"), ("dst_port", "dstport")];

/// The options of one device, checked for duplicates and membership, with typed getters whose
/// errors name the device, key and value.
pub(crate) struct Opts<'a> {
    dev: &'a str,
    /// The transport's name, from its row.
    transport: &'static str,
    items: Vec<(&'static str, &'a str)>,
}

impl<'a> Opts<'a> {
    fn get(&self, key: &str) -> Option<&'a str> {
        self.items.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// Every value of a repeatable option, in order.
    fn all(&self, key: &'a str) -> impl Iterator<Item = &'a str> + '_ {
        self.items
            .iter()
            .filter(move |(k, _)| *k == key)
            .map(|(_, v)| *v)
    }

    fn bad(&self, key: &str, value: &str, reason: String) -> ConfigError {
        ConfigError::BadValue {
            dev: self.dev.to_string(),
            key: key.to_string(),
            value: value.to_string(),
            reason,
        }
    }

    fn parse<T>(
        &self,
        key: &str,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => f(v).map(Some).map_err(|e| self.bad(key, v, e)),
        }
    }

    fn flag(&self, key: &str) -> Result<bool, ConfigError> {
        Ok(self.parse(key, value::flag)?.unwrap_or(false))
    }

    fn ranged(&self, key: &str, min: u64, max: u64) -> Result<Option<u64>, ConfigError> {
        self.parse(key, |v| value::ranged(v, min, max))
    }

    fn required<T>(
        &self,
        key: &'static str,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        self.parse(key, f)?.ok_or_else(|| ConfigError::Missing {
            dev: self.dev.to_string(),
            transport: self.transport,
            key,
        })
    }

    /// Both or neither of a pair of options.
    fn pair<T>(
        &self,
        rx: &'static str,
        tx: &'static str,
        f: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<(T, T)>, ConfigError> {
        match (self.parse(rx, &f)?, self.parse(tx, &f)?) {
            (Some(r), Some(t)) => Ok(Some((r, t))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(ConfigError::Unpaired {
                dev: self.dev.to_string(),
                given: rx,
                missing: tx,
            }),
            (None, Some(_)) => Err(ConfigError::Unpaired {
                dev: self.dev.to_string(),
                given: tx,
                missing: rx,
            }),
        }
    }
}

/// Parses `rest`, the part after `vecN:`.
pub fn parse(dev: &str, rest: &str) -> Result<NetSpec, ConfigError> {
    let mut items: Vec<(&'static str, &str)> = Vec::new();
    let mut unknown: Option<(&str, &str)> = None;
    for item in rest.split(',').filter(|i| !i.is_empty()) {
        let (key, val) = item
            .split_once('=')
            .ok_or_else(|| ConfigError::NotKeyValue {
                dev: dev.to_string(),
                item: item.to_string(),
            })?;
        let key = ALIASES
            .iter()
            .find(|(alias, _)| *alias == key)
            .map_or(key, |(_, canonical)| canonical);
        let known = COMMON.iter().copied().find(|k| *k == key);
        let Some(canonical) = known.or_else(|| kind::vector_option(key)) else {
            unknown.get_or_insert((key, val));
            continue;
        };
        if !REPEATABLE.contains(&canonical) && items.iter().any(|(k, _)| *k == canonical) {
            return Err(ConfigError::Duplicate {
                dev: dev.to_string(),
                key: canonical.to_string(),
            });
        }
        items.push((canonical, val));
    }
    let name = items
        .iter()
        .find(|(k, _)| *k == "transport")
        .map(|(_, v)| *v)
        .ok_or_else(|| ConfigError::MissingTransport {
            dev: dev.to_string(),
        })?;
    let (row, form) = kind::vector(name).ok_or_else(|| ConfigError::UnknownTransport {
        dev: dev.to_string(),
        name: name.to_string(),
        expected: VECTOR_NAMES,
    })?;
    let opts = Opts {
        dev,
        transport: row.name,
        items,
    };
    if let Some((key, val)) = unknown {
        return Err(ConfigError::UnknownKey {
            dev: dev.to_string(),
            key: key.to_string(),
            value: val.to_string(),
        });
    }
    for (key, val) in &opts.items {
        if COMMON.contains(key) || form.options.contains(key) {
            continue;
        }
        let belongs: Vec<&str> = kind::with_option(key).map(|r| r.name).collect();
        if matches!(*key, "bpffile" | "bpfflash") {
            // Named raw first, as the help text and the Transport trait name them.
            let holders: Vec<&str> = belongs.iter().rev().copied().collect();
            return Err(opts.bad(
                key,
                val,
                format!(
                    "transport {} has no BPF receive filter (only {}, which receive \
                     through an AF_PACKET socket, do): there is no filter to {}",
                    row.name,
                    holders.join(" and "),
                    if *key == "bpffile" {
                        "attach"
                    } else {
                        "replace"
                    }
                ),
            ));
        }
        return Err(ConfigError::WrongTransport {
            dev: dev.to_string(),
            key: key.to_string(),
            value: val.to_string(),
            transport: row.name,
            belongs: belongs.join(", "),
        });
    }
    Ok(NetSpec {
        name: dev.to_string(),
        common: common(&opts)?,
        transport: (form.parse)(&opts)?,
    })
}

pub(crate) fn tap(opts: &Opts) -> Result<TransportConfig, ConfigError> {
    Ok(TransportConfig::Tap(TapConfig {
        ifname: opts.parse("ifname", value::ifname)?,
    }))
}

pub(crate) fn hybrid(opts: &Opts) -> Result<TransportConfig, ConfigError> {
    Ok(TransportConfig::Hybrid(HybridConfig {
        ifname: opts.required("ifname", value::ifname)?,
    }))
}

pub(crate) fn raw(opts: &Opts) -> Result<TransportConfig, ConfigError> {
    Ok(TransportConfig::Raw(RawConfig {
        ifname: opts.required("ifname", value::ifname)?,
    }))
}

pub(crate) fn xdp(opts: &Opts) -> Result<TransportConfig, ConfigError> {
    // Checked here rather than at open: the limit is this transport's, and the error names
    // the option.
    if let Some(mtu) = opts.ranged("mtu", 576, 65535)? {
        if mtu > u64::from(XDP_MAX_MTU) {
            return Err(opts.bad(
                "mtu",
                &mtu.to_string(),
                format!(
                    "transport=xdp takes at most {XDP_MAX_MTU}: a frame must fit one 4 KiB \
                     AF_XDP chunk"
                ),
            ));
        }
    }
    Ok(TransportConfig::Xdp(XdpConfig {
        ifname: opts.required("ifname", value::ifname)?,
        mode: opts.parse("mode", value::xdp_mode)?.unwrap_or_default(),
    }))
}

pub(crate) fn bess(opts: &Opts) -> Result<TransportConfig, ConfigError> {
    Ok(TransportConfig::Bess(BessConfig {
        src: opts.parse("src", value::socket_path)?,
        dst: opts.required("dst", value::socket_path)?,
    }))
}

pub(crate) fn fd(opts: &Opts) -> Result<TransportConfig, ConfigError> {
    Ok(TransportConfig::Fd(FdConfig {
        fd: opts.required("fd", |v| {
            value::number(v, i32::MAX as u64).map(|n| n as i32)
        })?,
    }))
}

/// UML >= 6.12's vector form of the legacy `ethN=vde,...`: the same switch port, with port,
/// group, mode and description at their defaults.
pub(crate) fn vde(opts: &Opts) -> Result<TransportConfig, ConfigError> {
    Ok(TransportConfig::Vde(VdeConfig {
        switch: opts.parse("vnl", value::vnl)?.flatten(),
        port: None,
        group: None,
        mode: None,
        descr: None,
    }))
}

fn common(opts: &Opts) -> Result<CommonOpts, ConfigError> {
    let d = CommonOpts::default();
    let common = CommonOpts {
        depth: opts.ranged("depth", 1, 1024)?.map_or(d.depth, |n| n as u16),
        mtu: opts.ranged("mtu", 576, 65535)?.map_or(d.mtu, |n| n as u16),
        headroom: opts
            .ranged("headroom", 0, 256)?
            .map_or(d.headroom, |n| n as u16),
        gro: opts.flag("gro")?,
        vec: opts.parse("vec", value::flag)?.unwrap_or(d.vec),
        mac: opts.parse("mac", value::mac)?,
        bpffile: opts.parse("bpffile", value::path)?,
        bpfflash: opts.flag("bpfflash")?,
        queues: opts
            .ranged("queues", 1, u64::from(MAX_QUEUE_PAIRS))?
            .map_or(d.queues, |n| n as u16),
        busy_poll: opts.parse("busy_poll", |v| match v {
            "auto" => Ok(BusyPollOpt::Auto),
            _ => value::ranged(v, 0, u64::from(MAX_BUSY_POLL_US))
                .map(|n| BusyPollOpt::Micros(n as u16))
                .map_err(|e| format!("{e}, or auto")),
        })?,
        affinity: affinity(opts)?,
    };
    Ok(common)
}

/// Every `affinity=` item, joined into one set (`None` when not given). Marked in a
/// fixed-size map, so a spec repeating `affinity=0-1023` (from a control client too) costs
/// no more memory than one.
fn affinity(opts: &Opts) -> Result<Option<CpuSet>, ConfigError> {
    let mut marked = [false; MAX_CPUS as usize];
    for v in opts.all("affinity") {
        let range = value::cpu_range(v, MAX_CPUS).map_err(|e| opts.bad("affinity", v, e))?;
        for c in range {
            marked[usize::from(c)] = true;
        }
    }
    Ok(CpuSet::new(
        (0..MAX_CPUS).filter(|&c| marked[usize::from(c)]),
    ))
}

/// The two tunnel endpoints: both IPv4, or both IPv6 with `v6=1`.
fn endpoints(opts: &Opts) -> Result<(IpAddr, IpAddr, bool), ConfigError> {
    let v6 = opts.flag("v6")?;
    let src = opts.required("src", value::ip)?;
    let dst = opts.required("dst", value::ip)?;
    for (key, addr) in [("src", src), ("dst", dst)] {
        if addr.is_ipv6() != v6 {
            let want = if v6 {
                "IPv6 (v6=1)"
            } else {
                "IPv4 (add v6=1 for IPv6)"
            };
            return Err(opts.bad(key, &addr.to_string(), format!("must be {want}")));
        }
    }
    Ok((src, dst, v6))
}

pub(crate) fn user(opts: &Opts) -> Result<TransportConfig, ConfigError> {
    let d = UserConfig::default();
    let (net, prefix) = opts
        .parse("net", value::ipv4_net)?
        .unwrap_or((d.net, d.prefix));
    let mut c = UserConfig {
        net,
        prefix,
        restrict: opts.flag("restrict")?,
        hostfwd: Vec::new(),
    };
    let mask = u32::from(c.mask());
    for v in opts.all("hostfwd") {
        let fwd = value::hostfwd(v).map_err(|e| opts.bad("hostfwd", v, e))?;
        if let Some(g) = fwd.guest_addr {
            if u32::from(g) & mask != u32::from(net) {
                return Err(opts.bad(
                    "hostfwd",
                    v,
                    format!("guest address {g} is outside net={net}/{prefix}"),
                ));
            }
        }
        if let Some(prev) = c
            .hostfwd
            .iter()
            .find(|p| (p.udp, p.host_addr, p.host_port) == (fwd.udp, fwd.host_addr, fwd.host_port))
        {
            let proto = if prev.udp { "udp" } else { "tcp" };
            return Err(opts.bad(
                "hostfwd",
                v,
                format!(
                    "{proto} {}:{} is forwarded twice",
                    prev.host_addr, prev.host_port
                ),
            ));
        }
        c.hostfwd.push(fwd);
    }
    Ok(TransportConfig::User(c))
}

pub(crate) fn gre(opts: &Opts) -> Result<TransportConfig, ConfigError> {
    let (src, dst, v6) = endpoints(opts)?;
    let keys = opts
        .pair("rx_key", "tx_key", |v| {
            value::number(v, u32::MAX.into()).map(|n| n as u32)
        })?
        .map(|(rx, tx)| GreKeys { rx, tx });
    Ok(TransportConfig::Gre(GreConfig {
        src,
        dst,
        v6,
        keys,
        sequence: opts.flag("sequence")?,
        pin_sequence: opts.flag("pin_sequence")?,
    }))
}

pub(crate) fn l2tpv3(opts: &Opts) -> Result<TransportConfig, ConfigError> {
    let (src, dst, v6) = endpoints(opts)?;
    let udp = opts.flag("udp")?;
    let port = |v: &str| value::ranged(v, 1, 65535).map(|n| n as u16);
    let (srcport, dstport) = if udp {
        (
            Some(opts.required("srcport", port)?),
            Some(opts.required("dstport", port)?),
        )
    } else {
        for key in ["srcport", "dstport"] {
            if let Some(v) = opts.get(key) {
                return Err(opts.bad(key, v, "ports need udp=1".into()));
            }
        }
        (None, None)
    };
    let session = |v: &str| value::number(v, u32::MAX.into()).map(|n| n as u32);
    let cookie64 = opts.flag("cookie64")?;
    let cookie_max = if cookie64 { u64::MAX } else { u32::MAX.into() };
    let cookies = opts
        .pair("rx_cookie", "tx_cookie", |v| {
            value::number(v, cookie_max).map_err(|e| {
                if cookie64 {
                    e
                } else {
                    format!("{e} (32-bit cookie; cookie64=1 for 64-bit)")
                }
            })
        })?
        .map(|(rx, tx)| L2tpCookies { rx, tx });
    Ok(TransportConfig::L2tpv3(L2tpv3Config {
        src,
        dst,
        udp,
        srcport,
        dstport,
        v6,
        rx_session: opts.required("rx_session", session)?,
        tx_session: opts.required("tx_session", session)?,
        cookies,
        cookie64,
        counter: opts.flag("counter")?,
        pin_counter: opts.flag("pin_counter")?,
    }))
}
