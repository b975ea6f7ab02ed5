//! Parsers of single option values. Each returns the reason a value is wrong; the caller adds
//! the device and key.

use std::net::IpAddr;
use std::path::PathBuf;

use super::MacAddr;

/// An unsigned number in decimal or `0x` hexadecimal, at most `max`.
///
/// UML parses keys and sessions as signed 32-bit numbers, so its own `rx_session=0xffffffff`
/// example fails there; we accept the whole unsigned range.
pub fn number(value: &str, max: u64) -> Result<u64, String> {
    let (digits, radix) = match value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        Some(hex) => (hex, 16),
        None => (value, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err("not a number (decimal or 0x hexadecimal)".into());
    }
    match u64::from_str_radix(digits, radix) {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!("larger than {max}")),
    }
}

/// A number in `min..=max`.
pub fn ranged(value: &str, min: u64, max: u64) -> Result<u64, String> {
    let n = number(value, u64::MAX).map_err(|e| {
        if e.starts_with("larger") {
            format!("must be {min}..={max}")
        } else {
            e
        }
    })?;
    if n < min || n > max {
        return Err(format!("must be {min}..={max}"));
    }
    Ok(n)
}

/// One item of a CPU list: a CPU `N` or a range `N-M` (`N <= M`), each below `max`; the
/// CPUs, in order. A list of several items is the option repeated (`affinity=0-1,affinity=4`,
/// as QEMU repeats `cpu-affinity=`): a comma already ends the option.
pub fn cpu_range(value: &str, max: u16) -> Result<std::ops::RangeInclusive<u16>, String> {
    let cpu = |v: &str| {
        if v.is_empty() || !v.chars().all(|c| c.is_ascii_digit()) {
            return Err(
                "expected a CPU number or a range N-M (repeat the option for more: \
                        affinity=0-1,affinity=4)"
                    .to_string(),
            );
        }
        match v.parse::<u16>() {
            Ok(n) if n < max => Ok(n),
            _ => Err(format!("CPU numbers are 0..={}", max - 1)),
        }
    };
    let (lo, hi) = match value.split_once('-') {
        Some((lo, hi)) => (cpu(lo)?, cpu(hi)?),
        None => {
            let n = cpu(value)?;
            (n, n)
        }
    };
    if lo > hi {
        return Err(format!("range {lo}-{hi} runs backwards"));
    }
    Ok(lo..=hi)
}

/// `0`/`1` (UML's spelling), also `false`/`true`, `no`/`yes`, `off`/`on`.
pub fn flag(value: &str) -> Result<bool, String> {
    match value {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected 0 or 1".into()),
    }
}

/// `mode=` of `transport=xdp`: `native` or `skb` (`auto`, the default, may be spelled too).
pub fn xdp_mode(value: &str) -> Result<super::XdpMode, String> {
    match value {
        "auto" => Ok(super::XdpMode::Auto),
        "native" | "drv" => Ok(super::XdpMode::Native),
        "skb" | "generic" => Ok(super::XdpMode::Skb),
        _ => Err("expected native, skb or auto".into()),
    }
}

/// A unicast MAC address `xx:xx:xx:xx:xx:xx`.
pub fn mac(value: &str) -> Result<MacAddr, String> {
    let mut bytes = [0u8; 6];
    let mut parts = value.split(':');
    for b in bytes.iter_mut() {
        let part = parts
            .next()
            .ok_or("expected six hex bytes xx:xx:xx:xx:xx:xx")?;
        if part.len() != 2 || !part.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err("expected six hex bytes xx:xx:xx:xx:xx:xx".into());
        }
        *b = u8::from_str_radix(part, 16).map_err(|_| "bad hex byte")?;
    }
    if parts.next().is_some() {
        return Err("expected six hex bytes xx:xx:xx:xx:xx:xx".into());
    }
    if bytes[0] & 1 != 0 {
        return Err("multicast MAC (bit 0 of the first byte is set)".into());
    }
    if bytes == [0; 6] {
        return Err("all-zero MAC".into());
    }
    Ok(MacAddr(bytes))
}

/// An IPv4 or IPv6 address.
pub fn ip(value: &str) -> Result<IpAddr, String> {
    value
        .parse()
        .map_err(|_| "not an IPv4 or IPv6 address".to_string())
}

/// A host interface name: 1..=15 bytes (IFNAMSIZ - 1), no `/`, whitespace or `:`.
pub fn ifname(value: &str) -> Result<String, String> {
    if value.is_empty() || value.len() > 15 {
        return Err("interface names are 1..=15 bytes".into());
    }
    if value == "."
        || value == ".."
        || value
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err("not a valid interface name".into());
    }
    Ok(value.to_string())
}

/// A unix socket path: non-empty, at most 107 bytes (`sun_path` less its terminating NUL).
pub fn socket_path(value: &str) -> Result<PathBuf, String> {
    if value.is_empty() || value.len() > 107 {
        return Err("unix socket paths are 1..=107 bytes".into());
    }
    if value.contains('\0') {
        return Err("NUL in path".into());
    }
    Ok(PathBuf::from(value))
}

/// A file path (non-empty).
pub fn path(value: &str) -> Result<PathBuf, String> {
    if value.is_empty() || value.contains('\0') {
        return Err("empty path".into());
    }
    Ok(PathBuf::from(value))
}

/// What `vnl=` may name, for errors.
pub const VNL_SUPPORTED: &str =
    "vde://PATH or a plain PATH (a vde_switch directory), or vde:// or empty (libvdeplug's default switch)";

/// libvdeplug4's "virtual network locator" for `transport=vde`: the vde_switch directory, or
/// `None` for libvdeplug's default switch. `vde://PATH` and a plain `PATH` name a switch;
/// `vde://` and the empty string its default. Every other libvdeplug module (`tap://`,
/// `slirp://`, `vxvde://`, `cmd://`, ...) is refused: see [`crate::transport`]'s `vde`
/// module for why we speak vde_switch's protocol ourselves rather than link libvdeplug.
pub fn vnl(value: &str) -> Result<Option<PathBuf>, String> {
    if value.contains('\0') {
        return Err("NUL in the locator".into());
    }
    let path = match value.split_once("://") {
        Some(("vde", rest)) => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "libvdeplug's `{scheme}://` module is not supported: supported are {VNL_SUPPORTED}"
            ))
        }
        None => value,
    };
    if path.contains('[') {
        return Err(format!(
            "libvdeplug's `[options]` are not supported (supported are {VNL_SUPPORTED}); \
             use the legacy ethN=vde,SWITCH,MAC,PORT,GROUP,MODE,DESCR for a port, group or mode"
        ));
    }
    Ok((!path.is_empty()).then(|| PathBuf::from(path)))
}

/// The IPv4 mask of a prefix length (0..=32), as a host-order number.
pub fn prefix_mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

/// `ADDR/PREFIX`: an IPv4 network whose host bits are zero, roomy enough for the gateway
/// (`.2`), DNS (`.3`) and first DHCP address (`.15`): prefix 8..=27.
pub fn ipv4_net(value: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let (addr, prefix) = value
        .split_once('/')
        .ok_or("expected ADDR/PREFIX, e.g. 10.0.2.0/24")?;
    let addr: std::net::Ipv4Addr = addr
        .parse()
        .map_err(|_| "not an IPv4 address".to_string())?;
    let prefix = ranged(prefix, 8, 27).map_err(|e| format!("prefix length: {e}"))? as u8;
    if u32::from(addr) & !prefix_mask(prefix) != 0 {
        return Err(format!(
            "host bits set: the network is {}",
            std::net::Ipv4Addr::from(u32::from(addr) & prefix_mask(prefix))
        ));
    }
    Ok((addr, prefix))
}

/// A port forward, QEMU's `[tcp|udp]:[HOSTADDR]:HPORT-[GUESTADDR]:GPORT` (an empty protocol is
/// tcp, an empty host address 127.0.0.1, an empty guest address the first DHCP address).
pub fn hostfwd(value: &str) -> Result<super::HostFwd, String> {
    const FORM: &str = "expected tcp|udp:[HOSTADDR]:HPORT-[GUESTADDR]:GPORT";
    let (host, guest) = value.split_once('-').ok_or(FORM)?;
    let mut h = host.split(':');
    let (Some(proto), Some(haddr), Some(hport), None) = (h.next(), h.next(), h.next(), h.next())
    else {
        return Err(FORM.into());
    };
    let (gaddr, gport) = guest.split_once(':').ok_or(FORM)?;
    let udp = match proto {
        "" | "tcp" => false,
        "udp" => true,
        other => return Err(format!("protocol `{other}`: expected tcp or udp")),
    };
    let addr = |a: &str, what: &str| -> Result<Option<std::net::Ipv4Addr>, String> {
        if a.is_empty() {
            return Ok(None);
        }
        a.parse()
            .map(Some)
            .map_err(|_| format!("{what} address `{a}` is not an IPv4 address"))
    };
    let port = |p: &str, what: &str| {
        ranged(p, 1, 65535)
            .map(|n| n as u16)
            .map_err(|e| format!("{what} port `{p}`: {e}"))
    };
    Ok(super::HostFwd {
        udp,
        host_addr: addr(haddr, "host")?.unwrap_or(std::net::Ipv4Addr::LOCALHOST),
        host_port: port(hport, "host")?,
        guest_addr: addr(gaddr, "guest")?,
        guest_port: port(gport, "guest")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_cover_the_unsigned_range_in_both_radixes() {
        assert_eq!(number("0xffffffff", u32::MAX.into()), Ok(0xffff_ffff));
        assert_eq!(number("4294967295", u32::MAX.into()), Ok(0xffff_ffff));
        assert!(number("4294967296", u32::MAX.into()).is_err());
        assert!(number("-1", u32::MAX.into()).is_err());
        assert!(number("", 10).is_err());
        assert!(number("0x", 10).is_err());
        assert!(number("12a", 1000).is_err());
        assert_eq!(ranged("1500", 576, 65535), Ok(1500));
        assert_eq!(
            ranged("70000", 576, 65535),
            Err("must be 576..=65535".into())
        );
        assert_eq!(
            ranged("99999999999999999999999", 576, 65535),
            Err("must be 576..=65535".into())
        );
    }

    #[test]
    fn macs_must_be_unicast_and_well_formed() {
        assert_eq!(mac("02:00:00:00:00:01"), Ok(MacAddr([2, 0, 0, 0, 0, 1])));
        assert!(mac("01:00:5e:00:00:01").unwrap_err().contains("multicast"));
        assert!(mac("00:00:00:00:00:00").is_err());
        assert!(mac("02:00:00:00:00").is_err());
        assert!(mac("02:00:00:00:00:01:02").is_err());
        assert!(mac("02:00:00:00:00:1").is_err());
        assert!(mac("02-00-00-00-00-01").is_err());
    }

    #[test]
    fn interface_names_follow_the_kernel_rules() {
        assert!(ifname("veth0").is_ok());
        assert!(ifname("0123456789abcdef").is_err());
        assert!(ifname("a/b").is_err());
        assert!(ifname("a b").is_err());
        assert!(ifname("").is_err());
        assert!(ifname("..").is_err());
    }
}
