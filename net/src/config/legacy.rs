//! The legacy form: `ethN=TRANSPORT,positional,...` (removed from mainline UML in 2025; kept
//! here because switches and scripts still speak it). An empty field takes its default.

use super::error::ConfigError;
use super::help::LEGACY_NAMES;
use super::value;
use super::*;
use crate::kind;

/// Builds one transport's configuration from its fields (their count already checked); sets
/// the MAC in `common` where the transport has a MAC field.
pub(crate) type Parse = fn(&Fields, &mut CommonOpts) -> Result<TransportConfig, ConfigError>;

/// The positional fields after the transport name.
pub(crate) struct Fields<'a> {
    dev: &'a str,
    transport: &'static str,
    fields: Vec<&'a str>,
}

impl<'a> Fields<'a> {
    /// Field `i`, `None` when absent or empty.
    fn get(&self, i: usize) -> Option<&'a str> {
        self.fields.get(i).copied().filter(|f| !f.is_empty())
    }

    fn parse<T>(
        &self,
        i: usize,
        name: &str,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.get(i) {
            None => Ok(None),
            Some(v) => f(v).map(Some).map_err(|reason| ConfigError::BadValue {
                dev: self.dev.to_string(),
                key: format!("{} {name}", self.transport),
                value: v.to_string(),
                reason,
            }),
        }
    }

    fn limit(&self, max: usize, usage: &'static str) -> Result<(), ConfigError> {
        if self.fields.len() > max {
            return Err(ConfigError::TooManyFields {
                dev: self.dev.to_string(),
                transport: self.transport,
                max,
                usage,
            });
        }
        Ok(())
    }

    fn required<T>(
        &self,
        i: usize,
        name: &'static str,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        self.parse(i, name, f)?.ok_or_else(|| ConfigError::Missing {
            dev: self.dev.to_string(),
            transport: self.transport,
            key: name,
        })
    }
}

/// Parses `rest`, the part after `ethN=`.
pub fn parse(dev: &str, rest: &str) -> Result<NetSpec, ConfigError> {
    let mut parts = rest.split(',');
    let name = parts.next().unwrap_or_default();
    let (row, form) = kind::legacy(name).ok_or_else(|| ConfigError::UnknownTransport {
        dev: dev.to_string(),
        name: name.to_string(),
        expected: LEGACY_NAMES,
    })?;
    let f = Fields {
        dev,
        transport: row.name,
        fields: parts.collect(),
    };
    f.limit(form.max_fields(), form.usage)?;
    let mut common = CommonOpts::default();
    let transport = (form.parse)(&f, &mut common)?;
    Ok(NetSpec {
        name: dev.to_string(),
        common,
        transport,
    })
}

fn port(v: &str) -> Result<u16, String> {
    value::ranged(v, 1, 65535).map(|n| n as u16)
}

/// `tuntap,IFNAME,MAC,GATE_IP`.
pub(crate) fn tuntap(f: &Fields, common: &mut CommonOpts) -> Result<TransportConfig, ConfigError> {
    common.mac = f.parse(1, "MAC", value::mac)?;
    // UML without IFNAME ran the setuid uml_net helper to make a tap: obsolete.
    let ifname = f.required(0, "IFNAME", value::ifname)?;
    Ok(TransportConfig::TunTap(TunTapConfig {
        ifname,
        gate_ip: f.parse(2, "GATE_IP", value::ip)?,
    }))
}

/// `mcast,MAC,GROUP,PORT,TTL`.
pub(crate) fn mcast(f: &Fields, common: &mut CommonOpts) -> Result<TransportConfig, ConfigError> {
    common.mac = f.parse(0, "MAC", value::mac)?;
    let group = f
        .parse(1, "GROUP", |v| {
            let ip = value::ip(v)?;
            if ip.is_multicast() {
                Ok(ip)
            } else {
                Err("not a multicast group".into())
            }
        })?
        .unwrap_or(IpAddr::from([239, 192, 168, 1]));
    Ok(TransportConfig::Mcast(McastConfig {
        group,
        port: f.parse(2, "PORT", port)?.unwrap_or(1102),
        ttl: f
            .parse(3, "TTL", |v| value::ranged(v, 0, 255).map(|n| n as u8))?
            .unwrap_or(1),
    }))
}

/// `ucast,MAC,REMOTE_IP,LPORT,RPORT`.
pub(crate) fn ucast(f: &Fields, common: &mut CommonOpts) -> Result<TransportConfig, ConfigError> {
    common.mac = f.parse(0, "MAC", value::mac)?;
    Ok(TransportConfig::Ucast(UcastConfig {
        remote: f.required(1, "REMOTE_IP", value::ip)?,
        local_port: f.parse(2, "LPORT", port)?.unwrap_or(1102),
        remote_port: f.parse(3, "RPORT", port)?.unwrap_or(1102),
    }))
}

/// `pcap,IFNAME,FILTER,OPT,OPT,MAC`.
pub(crate) fn pcap(f: &Fields, common: &mut CommonOpts) -> Result<TransportConfig, ConfigError> {
    common.mac = f.parse(4, "MAC", value::mac)?;
    let mut promisc = true;
    let mut optimize = false;
    for i in [2, 3] {
        f.parse(i, "OPT", |v| {
            match v {
                "promisc" => promisc = true,
                "nopromisc" => promisc = false,
                "optimize" => optimize = true,
                "nooptimize" => optimize = false,
                _ => return Err("expected promisc, nopromisc, optimize or nooptimize".into()),
            }
            Ok(())
        })?;
    }
    Ok(TransportConfig::Pcap(PcapConfig {
        ifname: f.required(0, "IFNAME", value::ifname)?,
        filter: f.get(1).map(str::to_string),
        promisc,
        optimize,
    }))
}

/// `daemon,MAC,unix,CTL_PATH`.
pub(crate) fn daemon(f: &Fields, common: &mut CommonOpts) -> Result<TransportConfig, ConfigError> {
    common.mac = f.parse(0, "MAC", value::mac)?;
    f.parse(1, "TYPE", |v| {
        if v == "unix" {
            Ok(())
        } else {
            Err("only `unix` control sockets are supported".into())
        }
    })?;
    Ok(TransportConfig::Daemon(DaemonConfig {
        ctl: f
            .parse(2, "CTL_PATH", value::socket_path)?
            .unwrap_or_else(|| PathBuf::from("/tmp/uml.ctl")),
    }))
}

/// `vde,SWITCH,MAC,PORT,GROUP,MODE,DESCR`.
pub(crate) fn vde(f: &Fields, common: &mut CommonOpts) -> Result<TransportConfig, ConfigError> {
    common.mac = f.parse(1, "MAC", value::mac)?;
    Ok(TransportConfig::Vde(VdeConfig {
        switch: f.parse(0, "SWITCH", value::path)?,
        port: f.parse(2, "PORT", |v| {
            value::number(v, u32::MAX.into()).map(|n| n as u32)
        })?,
        group: f.get(3).map(str::to_string),
        mode: f.parse(4, "MODE", |v| {
            u32::from_str_radix(v, 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| "expected octal permission bits, e.g. 0700".to_string())
        })?,
        descr: f.get(5).map(str::to_string),
    }))
}
