//! Legacy `ethN=vde,SWITCH,MAC,PORT,GROUP,MODE,DESCR` and UML >= 6.12's vector form
//! `vecN:transport=vde,vnl=VNL`: a port on a `vde_switch` (Debian's vde2). Both parse to the
//! same [`crate::config::VdeConfig`] and open here; the vector form names the switch with
//! libvdeplug4's locator (`vde:///DIR`, a plain `DIR`, or empty for the default switch) and
//! leaves port, group, mode and description at their defaults.
//!
//! Why not link libvdeplug4 to resolve every locator (`tap://`, `slirp://`, `vxvde://`,
//! `cmd://`, ...)? Its API moves one frame per call (`vde_recv`/`vde_send`), blocking, on a
//! descriptor whose nature depends on the module: a datagram socket for `vde://`, a UDP socket
//! whose datagrams carry a header the module strips and whose looped-back echoes `vde_recv`
//! filters for `vxvde://`, a tap for `tap://`, a stream behind a helper process for `cmd://`,
//! a library thread for `slirp://`. The datapath polls a transport's descriptors edge-triggered
//! and must drain them without blocking while it holds its lock, in batches: that needs to know
//! what a readable descriptor means, which only the `vde` module lets us know. The other
//! modules have first-class transports here anyway (`transport=tap`, `transport=user`), so the
//! parser refuses them, naming `vnl=` and what is supported.
//!
//! UML links libvdeplug; Debian's `vde_plug` would be the other way in (it carries frames on
//! its stdin/stdout behind 2-byte length prefixes). We speak the switch's own protocol, the
//! one libvdeplug's `vde` module speaks, directly: it is a small relative of uml_switch's (see
//! [`super::daemon`]), it keeps every frame a datagram so receive and send batch with
//! `recvmmsg`/`sendmmsg` like the other transports, and it spares a helper process per port,
//! a stream to re-frame, and a dependency on how vde_plug resolves its URL.
//!
//! 1. Connect a stream socket to `SWITCH/ctl` (`SWITCH` defaults to libvdeplug's fallbacks,
//!    `/var/run/vde.ctl` then `/tmp/vde.ctl`).
//! 2. Bind a datagram socket to a path inside the switch directory, `SWITCH/.PID-N` (the
//!    switch replies to a path, and libvdeplug uses that place), falling back to `/var/run`,
//!    `/var/tmp` or `/tmp` when the directory refuses it or the name would not fit in
//!    `sun_path`. Give it `MODE` (default 0700) and `GROUP` as libvdeplug does.
//! 3. Send the request, packed, host byte order: `u32 magic 0xfeedface`, `u32 version 3`, an
//!    `int` type (0 = `REQ_NEW_CONTROL`, or `PORT << 8` to ask for a given port), the 110-byte
//!    `sockaddr_un` of our data socket, then the description without its NUL (at most 128
//!    bytes; we send at most 127).
//! 4. Read the switch's 110-byte `sockaddr_un`, connect the data socket to it, and remove our
//!    socket's name (the connected socket works on; the switch already holds it).
//! 5. Keep the control connection open: closing it unplugs the port.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::switch_port::{
    bind_un, connect_ctl, describe, handshake, sockaddr_bytes, SwitchPort, SUN_LEN, SWITCH_MAGIC,
    SWITCH_VERSION,
};
use super::sys::cvt;
use super::TransportError;
use super::{Opening, Transport};
use crate::config::TransportConfig;

const T: &str = "vde";
/// libvdeplug's `MAXDESCR`.
pub const MAX_DESCR: usize = 128;
/// The description when `DESCR` is not given (shown by the switch's `port/print`).
pub const DEFAULT_DESCR: &str = "vmm-net vde transport";
/// libvdeplug's default switch locations, tried in order.
const DEFAULT_SWITCHES: [&str; 2] = ["/var/run/vde.ctl", "/tmp/vde.ctl"];
/// Where the data socket goes when the switch directory refuses it.
const FALLBACK_DIRS: [&str; 3] = ["/var/run", "/var/tmp", "/tmp"];
/// The largest port number the request's `PORT << 8` in an `int` can carry.
const MAX_PORT: u32 = 0x7f_ffff;

fn invalid(reason: String) -> TransportError {
    TransportError::Invalid {
        transport: T,
        reason,
    }
}

/// The packed vde request for data socket `data`.
pub fn vde_request(data: &libc::sockaddr_un, port: u32, descr: &str) -> Vec<u8> {
    let ty: u32 = port << 8; // REQ_NEW_CONTROL (0) plus the port, as libvdeplug does.
    let mut req = Vec::with_capacity(12 + SUN_LEN + MAX_DESCR);
    req.extend_from_slice(&SWITCH_MAGIC.to_ne_bytes());
    req.extend_from_slice(&SWITCH_VERSION.to_ne_bytes());
    req.extend_from_slice(&ty.to_ne_bytes());
    req.extend_from_slice(&sockaddr_bytes(data));
    req.extend_from_slice(truncate_descr(descr).as_bytes());
    req
}

/// At most `MAX_DESCR - 1` bytes, cut at a character boundary, without NULs.
fn truncate_descr(descr: &str) -> String {
    let mut out = String::new();
    for c in descr.chars().filter(|&c| c != '\0') {
        if out.len() + c.len_utf8() > MAX_DESCR - 1 {
            break;
        }
        out.push(c);
    }
    out
}

/// A `sockaddr_un` for `path`, or `None` when it does not fit (with its NUL) in `sun_path`.
fn path_addr(path: &Path) -> Option<libc::sockaddr_un> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is a plain C struct; all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return None;
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (p, b) in addr.sun_path.iter_mut().zip(bytes) {
        *p = *b as libc::c_char;
    }
    Some(addr)
}

/// A group name or number to a gid.
fn group_id(group: &str) -> Result<libc::gid_t, TransportError> {
    if let Ok(n) = group.parse::<libc::gid_t>() {
        return Ok(n);
    }
    let name = CString::new(group).map_err(|_| invalid(format!("group `{group}`: NUL byte")))?;
    // SAFETY: libc::group is a plain C struct; all-zero is valid.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: every pointer refers to a live local of the stated size; getgrnam_r writes the
    // strings into `buf` and sets `result` to `&grp` or NULL.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(invalid(format!("group `{group}`: no such group")));
    }
    Ok(grp.gr_gid)
}

fn path_cstring(path: &Path) -> Result<CString, TransportError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| invalid(format!("{}: NUL byte in path", path.display())))
}

/// Removes the data socket's name when dropped (on success, right after the switch connected
/// to it; on failure, so no stale socket file is left in the switch directory).
struct Unlink(PathBuf);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `ethN=vde`: see the module documentation.
/// Opens `vde` ports; the port itself is a [`SwitchPort`], as for `daemon`.
pub struct Vde;

/// What `ethN=vde,...` asks for, beyond the switch.
pub struct VdeOptions<'a> {
    pub port: u32,
    pub group: Option<&'a str>,
    pub mode: u32,
    pub descr: &'a str,
}

impl Vde {
    pub fn open(
        switch: Option<&Path>,
        opts: &VdeOptions,
        depth: usize,
    ) -> Result<SwitchPort, TransportError> {
        if opts.port > MAX_PORT {
            return Err(invalid(format!(
                "port {} is larger than {MAX_PORT}",
                opts.port
            )));
        }
        let gid = opts.group.map(group_id).transpose()?;

        // The switch directory and its control socket.
        let (dir, mut ctl) = match switch {
            Some(dir) => (dir.to_path_buf(), connect_ctl(T, &dir.join("ctl"))?),
            None => {
                let mut errors = Vec::new();
                let mut found = None;
                for d in DEFAULT_SWITCHES {
                    match connect_ctl(T, &Path::new(d).join("ctl")) {
                        Ok(s) => {
                            found = Some((PathBuf::from(d), s));
                            break;
                        }
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                found.ok_or_else(|| {
                    invalid(format!("no switch at the defaults: {}", errors.join("; ")))
                })?
            }
        };
        let ctl_path = dir.join("ctl");
        // The switch may run elsewhere: it needs an absolute name for our socket.
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);

        let data = super::switch_port::data_socket(T)?;
        let (local, _unlink) = Self::bind_data(data.as_raw_fd(), &dir)?;
        let local_path = _unlink.0.clone();
        let c_path = path_cstring(&local_path)?;
        if let Some(gid) = gid {
            // SAFETY: `c_path` is a NUL-terminated path alive for the call; -1 keeps the owner.
            cvt(unsafe { libc::chown(c_path.as_ptr(), libc::uid_t::MAX, gid) }).map_err(|e| {
                invalid(format!(
                    "group {} on {}: {e}",
                    opts.group.unwrap_or_default(),
                    local_path.display()
                ))
            })?;
        }
        // SAFETY: as above; chmod takes the path and plain mode bits.
        cvt(unsafe { libc::chmod(c_path.as_ptr(), opts.mode as libc::mode_t) }).map_err(|e| {
            invalid(format!(
                "mode {:o} on {}: {e}",
                opts.mode,
                local_path.display()
            ))
        })?;

        let request = vde_request(&local, opts.port, opts.descr);
        let peer = handshake(T, &ctl_path, &mut ctl, &request)?;
        let port = SwitchPort::new(T, ctl, data, &peer, depth)?;
        log::info!(
            "vde: port on switch {} (our socket {}, switch data socket {})",
            dir.display(),
            describe(&local),
            describe(&peer)
        );
        Ok(port)
    }

    /// Binds `fd` to `DIR/.PID-N`, or a fallback directory, returning the address and a guard
    /// that removes the name.
    fn bind_data(fd: RawFd, dir: &Path) -> Result<(libc::sockaddr_un, Unlink), TransportError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let candidates = std::iter::once((dir.to_path_buf(), "."))
            .chain(FALLBACK_DIRS.iter().map(|d| (PathBuf::from(d), "vde.")));
        let mut last = String::from("no directory tried");
        for (d, prefix) in candidates {
            loop {
                let n = NEXT.fetch_add(1, Ordering::Relaxed);
                let path = d.join(format!("{prefix}{pid:05}-{n:05}"));
                let Some(addr) = path_addr(&path) else {
                    last = format!("{}: name too long for a unix socket", path.display());
                    break;
                };
                match bind_un(fd, &addr) {
                    Ok(()) => return Ok((addr, Unlink(path))),
                    Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => continue,
                    Err(e) => {
                        last = format!("{}: {e}", path.display());
                        break;
                    }
                }
            }
        }
        Err(invalid(format!("binding the data socket: {last}")))
    }
}

/// The opener of `ethN=vde` and `vecN:transport=vde` (see [`crate::kind`]).
pub(crate) fn from_config(
    config: &TransportConfig,
    o: &Opening,
) -> Result<Box<dyn Transport>, TransportError> {
    let TransportConfig::Vde(c) = config else {
        return Err(super::wrong_config("vde"));
    };
    Ok(Box::new(Vde::open(
        c.switch.as_deref(),
        &VdeOptions {
            port: c.port.unwrap_or(0),
            group: c.group.as_deref(),
            mode: c.mode.unwrap_or(0o700),
            descr: c.descr.as_deref().unwrap_or(DEFAULT_DESCR),
        },
        o.depth,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout_matches_libvdeplug() {
        let addr = path_addr(Path::new("/tmp/sw/.00001-00000")).unwrap();
        let req = vde_request(&addr, 5, "hello");
        assert_eq!(req.len(), 12 + 110 + 5, "packed, description without NUL");
        assert_eq!(&req[0..4], &0xfeed_faceu32.to_ne_bytes());
        assert_eq!(&req[4..8], &3u32.to_ne_bytes());
        assert_eq!(&req[8..12], &(5u32 << 8).to_ne_bytes());
        assert_eq!(&req[14..34], b"/tmp/sw/.00001-00000");
        assert_eq!(&req[122..], b"hello");
        let long = "é".repeat(100);
        let r = vde_request(&addr, 0, &long);
        assert_eq!(&r[8..12], &[0, 0, 0, 0]);
        assert!(r.len() - 122 < MAX_DESCR);
        assert!(std::str::from_utf8(&r[122..]).is_ok());
    }

    #[test]
    fn long_paths_and_bad_groups_are_refused() {
        assert!(path_addr(Path::new(&"/x".repeat(60))).is_none());
        assert!(group_id("no-such-group-here").is_err());
        assert_eq!(group_id("123").unwrap(), 123);
    }
}
