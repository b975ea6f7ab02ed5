//! Legacy `ethN=pcap,IFNAME,FILTER,OPT,OPT,MAC`: receive-only capture from an interface.
//!
//! UML opened a live libpcap handle. We only borrow libpcap's filter compiler: the expression
//! is compiled to classic BPF for Ethernet (`pcap_open_dead(DLT_EN10MB)` + `pcap_compile`,
//! with `optimize` as asked) and attached with `SO_ATTACH_FILTER` to a plain `AF_PACKET`
//! socket, so receive uses the same `recvmmsg` batching as the other transports and libpcap
//! never touches the datapath. An `AF_PACKET` socket sees the same frames a live capture does
//! (both directions, offset 0 is the Ethernet header), so filter offsets mean the same thing.
//!
//! - `promisc` (UML's default) joins `PACKET_MR_PROMISC`, which the kernel undoes when the
//!   socket closes, so a crashed backend cannot leave the interface promiscuous.
//! - Snap length: UML passed 1526 (1500 + 26) to libpcap, which compiles it into the filter's
//!   accepting `ret`, and the kernel then silently trims longer frames (a GSO super-frame from
//!   a veth, a jumbo frame) into corrupt ones. We compile with libpcap's maximum (262144) so
//!   a frame is either whole or, if larger than the receive buffer, dropped and counted
//!   (`rx_dropped_truncated`), never passed on cut short.
//! - Transmit is refused, as in UML, but not silently: [`Transport::send`] takes every frame
//!   (so the guest's queue never wedges), counts it in `tx_refused` and warns once.
//! - A malformed expression is an error at open naming the expression and libpcap's message.
//! - Filters that depend on a live handle (`vlan`, whose tags Linux moves out of the frame
//!   into metadata) compile for the frame bytes only, as for a saved capture.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use super::bpf::BpfProgram;
use super::packet::KernelDrops;
use super::sys::{self, cvt, Mmsg};
use super::Opening;
use super::{Offloads, PacketBatch, Transport, TransportError, TransportStats};
use crate::config::TransportConfig;

/// libpcap's `MAXIMUM_SNAPLEN`: the filter's accepting return never trims a frame.
pub const SNAPLEN: c_int = 262_144;
/// `DLT_EN10MB`: Ethernet link-layer headers.
const DLT_EN10MB: c_int = 1;
/// `PCAP_NETMASK_UNKNOWN`: only `ip broadcast` needs the netmask, and it then fails cleanly.
const PCAP_NETMASK_UNKNOWN: u32 = 0xffff_ffff;

/// `struct bpf_program` of libpcap. Its `struct bpf_insn` (u16 code, u8 jt, u8 jf, u32 k) has
/// the layout of the kernel's `struct sock_filter`.
#[repr(C)]
struct PcapBpfProgram {
    bf_len: c_uint,
    bf_insns: *mut libc::sock_filter,
}

type OpenDead = unsafe extern "C" fn(c_int, c_int) -> *mut c_void;
type Compile =
    unsafe extern "C" fn(*mut c_void, *mut PcapBpfProgram, *const c_char, c_int, u32) -> c_int;
type GetErr = unsafe extern "C" fn(*mut c_void) -> *mut c_char;
type FreeCode = unsafe extern "C" fn(*mut PcapBpfProgram);
type Close = unsafe extern "C" fn(*mut c_void);

/// libpcap's entry points, loaded on first use with dlopen rather than linked: linking would
/// pull libpcap and its own dependencies (dbus, systemd, gcrypt, ...) into every `vmm`
/// process, costing start-up time and resident memory for a transport most never use.
struct Libpcap {
    open_dead: OpenDead,
    compile: Compile,
    geterr: GetErr,
    freecode: FreeCode,
    close: Close,
}

fn libpcap() -> Result<&'static Libpcap, String> {
    static LIB: std::sync::OnceLock<Result<Libpcap, String>> = std::sync::OnceLock::new();
    LIB.get_or_init(load_libpcap).as_ref().map_err(Clone::clone)
}

fn load_libpcap() -> Result<Libpcap, String> {
    let handle = [c"libpcap.so.0.8", c"libpcap.so.1", c"libpcap.so"]
        .iter()
        // SAFETY: dlopen with a NUL-terminated name; the handle is never closed, so symbols
        // taken from it stay valid for the life of the process.
        .map(|name| unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) })
        .find(|h| !h.is_null())
        .ok_or("libpcap is not installed (Debian: libpcap0.8)")?;
    let sym = |name: &CStr| {
        // SAFETY: dlsym on the live handle with a NUL-terminated name.
        let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
        if p.is_null() {
            Err(format!("libpcap lacks {}", name.to_string_lossy()))
        } else {
            Ok(p)
        }
    };
    let open_dead = sym(c"pcap_open_dead")?;
    let compile = sym(c"pcap_compile")?;
    let geterr = sym(c"pcap_geterr")?;
    let freecode = sym(c"pcap_freecode")?;
    let close = sym(c"pcap_close")?;
    Ok(Libpcap {
        // SAFETY: the symbol is libpcap's pcap_open_dead, of this C signature (pcap.h).
        open_dead: unsafe { std::mem::transmute::<*mut c_void, OpenDead>(open_dead) },
        // SAFETY: the symbol is libpcap's pcap_compile, of this C signature (pcap.h).
        compile: unsafe { std::mem::transmute::<*mut c_void, Compile>(compile) },
        // SAFETY: the symbol is libpcap's pcap_geterr, of this C signature (pcap.h).
        geterr: unsafe { std::mem::transmute::<*mut c_void, GetErr>(geterr) },
        // SAFETY: the symbol is libpcap's pcap_freecode, of this C signature (pcap.h).
        freecode: unsafe { std::mem::transmute::<*mut c_void, FreeCode>(freecode) },
        // SAFETY: the symbol is libpcap's pcap_close, of this C signature (pcap.h).
        close: unsafe { std::mem::transmute::<*mut c_void, Close>(close) },
    })
}

/// libpcap's compiler kept global state before 1.8; one compile at a time is cheap insurance.
static COMPILE: Mutex<()> = Mutex::new(());

/// Compiles a pcap filter expression to classic BPF for Ethernet frames. The error is
/// libpcap's message.
pub fn compile(expr: &str, optimize: bool) -> Result<Vec<libc::sock_filter>, String> {
    let c_expr =
        CString::new(expr).map_err(|_| "the expression contains a NUL byte".to_string())?;
    let lib = libpcap()?;
    let _guard = COMPILE.lock().unwrap_or_else(|p| p.into_inner());
    // SAFETY: pcap_open_dead takes no pointers; it returns a handle we close below or NULL.
    let handle = unsafe { (lib.open_dead)(DLT_EN10MB, SNAPLEN) };
    if handle.is_null() {
        return Err("pcap_open_dead failed (out of memory)".into());
    }
    let mut prog = PcapBpfProgram {
        bf_len: 0,
        bf_insns: std::ptr::null_mut(),
    };
    // SAFETY: `handle` is a live pcap handle, `prog` a live struct libpcap fills, `c_expr` a
    // NUL-terminated string alive for the call.
    let rc = unsafe {
        (lib.compile)(
            handle,
            &mut prog,
            c_expr.as_ptr(),
            c_int::from(optimize),
            PCAP_NETMASK_UNKNOWN,
        )
    };
    let result = if rc != 0 {
        // SAFETY: pcap_geterr returns a NUL-terminated buffer owned by the live handle; we
        // copy it before closing the handle.
        let msg = unsafe { CStr::from_ptr((lib.geterr)(handle)) };
        Err(msg.to_string_lossy().into_owned())
    } else if prog.bf_insns.is_null() || prog.bf_len == 0 {
        Err("libpcap returned an empty program".into())
    } else {
        // SAFETY: on success libpcap set `bf_insns` to `bf_len` instructions it allocated;
        // they are copied out before pcap_freecode releases them.
        let insns = unsafe { std::slice::from_raw_parts(prog.bf_insns, prog.bf_len as usize) };
        let insns = insns.to_vec();
        // SAFETY: frees the program libpcap allocated in pcap_compile, once.
        unsafe { (lib.freecode)(&mut prog) };
        Ok(insns)
    };
    // SAFETY: closes the handle opened above, once; nothing refers to it afterwards.
    unsafe { (lib.close)(handle) };
    result
}

/// `ethN=pcap`: see the module documentation.
pub struct Pcap {
    fd: OwnedFd,
    mmsg: Mmsg,
    stats: TransportStats,
    tx_warned: bool,
    drops: KernelDrops,
}

fn invalid(reason: String) -> TransportError {
    TransportError::Invalid {
        transport: "pcap",
        reason,
    }
}

impl Pcap {
    /// Opens a capture on `ifname`. `expr` is the pcap filter expression; `bpffile` a
    /// precompiled program (the common `bpffile` option), an alternative to it.
    pub fn open(
        ifname: &str,
        expr: Option<&str>,
        bpffile: Option<&BpfProgram>,
        promisc: bool,
        optimize: bool,
        depth: usize,
    ) -> Result<Pcap, TransportError> {
        let program = match (expr, bpffile) {
            (Some(e), Some(_)) => {
                return Err(invalid(format!(
                    "filter `{e}` and bpffile both given: use one of them"
                )))
            }
            (Some(e), None) => {
                Some(compile(e, optimize).map_err(|msg| invalid(format!("filter `{e}`: {msg}")))?)
            }
            (None, Some(p)) => Some(p.instructions().to_vec()),
            (None, None) => None,
        };
        let fd = Self::socket(ifname, program.as_deref(), promisc).map_err(|source| {
            TransportError::Interface {
                transport: "pcap",
                ifname: ifname.to_string(),
                source,
            }
        })?;
        Ok(Pcap {
            fd,
            mmsg: Mmsg::new(depth),
            stats: TransportStats::default(),
            tx_warned: false,
            drops: KernelDrops::default(),
        })
    }

    /// An AF_PACKET socket made with protocol 0 (it receives nothing), given its filter, and
    /// only then bound to the interface for every protocol: no frame the filter rejects or
    /// from another interface is ever queued.
    fn socket(
        ifname: &str,
        program: Option<&[libc::sock_filter]>,
        promisc: bool,
    ) -> std::io::Result<OwnedFd> {
        let index = sys::ifindex(ifname)?;
        let fd = sys::socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
        let raw = fd.as_raw_fd();
        if let Some(p) = program {
            sys::attach_filter(raw, p)?;
        }
        sys::bind_packet(raw, index)?;
        if promisc {
            // SAFETY: packet_mreq is a plain C struct; all-zero is valid.
            let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
            mreq.mr_ifindex = index;
            mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
            // SAFETY: `mreq` is live and initialised, its exact size is passed.
            cvt(unsafe {
                libc::setsockopt(
                    raw,
                    libc::SOL_PACKET,
                    libc::PACKET_ADD_MEMBERSHIP,
                    (&mreq as *const libc::packet_mreq).cast(),
                    std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
                )
            })?;
        }
        Ok(fd)
    }
}

impl Transport for Pcap {
    fn name(&self) -> &'static str {
        "pcap"
    }

    fn vnet_hdr_len(&self) -> usize {
        0
    }

    fn rx_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Never waited on: [`Transport::send`] always takes the whole batch.
    fn tx_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn recv(&mut self, batch: &mut PacketBatch) -> Result<usize, TransportError> {
        loop {
            let (got, kept) = self
                .mmsg
                .recv(
                    self.fd.as_raw_fd(),
                    batch,
                    |_| true,
                    &mut self.stats.rx_dropped_truncated,
                )
                .map_err(|source| TransportError::Io {
                    transport: "pcap",
                    op: "recvmmsg",
                    source,
                })?;
            // Only truncated frames: look again rather than report "nothing waiting".
            if kept > 0 || got == 0 {
                return Ok(kept);
            }
        }
    }

    fn send(&mut self, batch: &PacketBatch) -> Result<usize, TransportError> {
        let n = batch.count();
        if n > 0 {
            self.stats.tx_refused += n as u64;
            if !self.tx_warned {
                self.tx_warned = true;
                log::warn!(
                    "pcap: receive-only transport: frames the guest sends are refused (counted in tx_refused)"
                );
            }
        }
        Ok(n)
    }

    fn set_offloads(&mut self, _offloads: Offloads) -> Result<(), TransportError> {
        Ok(())
    }

    fn stats(&self) -> TransportStats {
        TransportStats {
            rx_dropped_kernel: self.drops.read(self.fd.as_raw_fd()),
            ..self.stats
        }
    }
}

/// The opener of `ethN=pcap` (see [`crate::kind`]).
pub(crate) fn from_config(
    config: &TransportConfig,
    o: &Opening,
) -> Result<Box<dyn Transport>, TransportError> {
    let TransportConfig::Pcap(c) = config else {
        return Err(super::wrong_config("pcap"));
    };
    Ok(Box::new(Pcap::open(
        &c.ifname,
        c.filter.as_deref(),
        o.filter.as_ref(),
        c.promisc,
        c.optimize,
        o.depth,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_compile_and_errors_carry_libpcap_message() {
        let p = compile("ether proto 0x88b5", false).unwrap();
        // ldh [12]; jeq #0x88b5; ret #snaplen; ret #0
        assert_eq!(p.len(), 4, "{p:?}");
        assert_eq!(p[0].k, 12);
        assert_eq!(p[1].k, 0x88b5);
        assert_eq!(p[2].k, SNAPLEN as u32);
        assert_eq!(p[3].k, 0);
        let err = compile("ether proto (", false).unwrap_err();
        assert!(err.contains("syntax error"), "{err}");
        assert!(compile("a\0b", false).unwrap_err().contains("NUL"));
        // Optimisation changes the code, not its meaning: both end in returns.
        let o = compile("udp port 9999 or udp port 9998", true).unwrap();
        let n = compile("udp port 9999 or udp port 9998", false).unwrap();
        assert!(o.len() <= n.len());
    }
}
