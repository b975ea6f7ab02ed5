//! The kernel side of `transport=xdp`: an XSKMAP holding our AF_XDP sockets (one per queue
//! pair, each bound to the receive queue of its number), and a program of six eBPF
//! instructions that redirects every frame arriving on a receive queue to the socket in that
//! queue's slot, handing the frame to the host's stack when the slot is empty.
//!
//! The program is written here as instructions, not compiled: it is the whole of what a
//! redirect needs, and loading it through `bpf(2)` spares the build a clang and a libbpf.
//! It is attached through a BPF link, not the older netlink call, because the kernel
//! detaches a link's program when the link's last descriptor closes: a backend that exits,
//! crashes or is killed leaves no program on the interface (and nothing redirecting frames
//! to a socket that is gone).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::config::XdpMode;

// `enum bpf_cmd`.
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
/// `BPF_MAP_TYPE_XSKMAP`: AF_XDP sockets by receive queue.
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `enum bpf_attach_type`'s `BPF_XDP`.
const BPF_XDP: u32 = 37;
/// A 64-bit immediate load whose value is a map's descriptor, which the kernel replaces with
/// the map.
const BPF_PSEUDO_MAP_FD: u8 = 1;
/// `bpf_redirect_map(map, key, flags)`; the low bits of `flags` are the action when the
/// key has no socket.
const BPF_FUNC_REDIRECT_MAP: i32 = 51;
const XDP_PASS: i32 = 2;
/// `XDP_FLAGS_SKB_MODE`: generic XDP, in the stack, on any interface.
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`: the driver's own XDP hook (veth, most NICs' drivers).
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// `offsetof(struct xdp_md, rx_queue_index)`.
const XDP_MD_RX_QUEUE_INDEX: i16 = 16;

/// `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Insn {
    code: u8,
    /// Destination register in the low nibble, source in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// The redirect program for the map whose descriptor is `map`:
///
/// ```text
/// r2 = *(u32 *)(r1 + offsetof(xdp_md, rx_queue_index))
/// r1 = map (ld_imm64, two slots)
/// r3 = XDP_PASS
/// call bpf_redirect_map
/// exit
/// ```
fn program(map: RawFd) -> [Insn; 6] {
    const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
    const LD_DW_IMM: u8 = 0x18; // BPF_LD | BPF_DW | BPF_IMM
    const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
    const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
    const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT
    [
        insn(LDX_W, 2, 1, XDP_MD_RX_QUEUE_INDEX, 0),
        insn(LD_DW_IMM, 1, BPF_PSEUDO_MAP_FD, 0, map),
        insn(0, 0, 0, 0, 0),
        insn(MOV64_K, 3, 0, 0, XDP_PASS),
        insn(CALL, 0, 0, 0, BPF_FUNC_REDIRECT_MAP),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

/// `union bpf_attr` for `BPF_MAP_CREATE` (its leading fields; the kernel zero-fills the rest).
#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// `union bpf_attr` for `BPF_MAP_UPDATE_ELEM`.
#[repr(C)]
#[derive(Default)]
struct MapUpdate {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for `BPF_LINK_CREATE`.
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// `bpf(cmd, attr, sizeof attr)`, returning the new descriptor for the commands that make
/// one.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live `#[repr(C)]` prefix of `union bpf_attr` and its exact size is
    // passed (the kernel treats the rest as zero); every pointer inside it points at memory
    // the caller keeps alive across the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: `fd` was just returned by bpf(2) as a new descriptor, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// Why the redirect could not be put in place.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("creating the XSKMAP: {0}")]
    Map(#[source] io::Error),
    #[error("putting the AF_XDP socket in the XSKMAP: {0}")]
    Insert(#[source] io::Error),
    #[error("loading the redirect program: {source}{verifier}")]
    Load {
        #[source]
        source: io::Error,
        /// The verifier's log, when it had something to say (prefixed for the message).
        verifier: String,
    },
    #[error(
        "the interface already has an XDP program (`ip link show` names it); \
         detach it first, or use transport=raw"
    )]
    Busy,
    #[error(
        "its driver has no XDP hook of its own (mode=native): {0}; \
         mode=skb works on every interface"
    )]
    NoNative(#[source] io::Error),
    #[error("attaching the redirect program ({mode}): {source}")]
    Attach {
        mode: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The redirect, attached to one interface: the program runs until this is dropped.
#[derive(Debug)]
pub struct Redirect {
    // Declaration order is drop order: the link goes first, detaching the program before the
    // map and the socket in it go.
    _link: OwnedFd,
    _program: OwnedFd,
    map: OwnedFd,
    /// The hook it runs on, as `mode=` names it.
    mode: &'static str,
}

impl Redirect {
    /// Redirects what arrives on the interface `ifindex`'s receive queues `0..queues` to the
    /// AF_XDP socket in each queue's slot of the map ([`Redirect::insert`]), through the hook
    /// `mode` asks for: `Auto` takes the driver's own hook where there is one and the generic
    /// hook otherwise. Until a queue's slot holds a socket, its frames go to the host's stack.
    pub fn attach(ifindex: u32, queues: u32, mode: XdpMode) -> Result<Redirect, AttachError> {
        let map = owned(
            bpf(
                BPF_MAP_CREATE,
                &mut MapCreate {
                    map_type: BPF_MAP_TYPE_XSKMAP,
                    key_size: 4,
                    value_size: 4,
                    max_entries: queues.max(1),
                    map_flags: 0,
                },
            )
            .map_err(AttachError::Map)?,
        );
        let program = load(map.as_raw_fd())?;
        let (link, mode) = match mode {
            XdpMode::Native => (link(&program, ifindex, XDP_FLAGS_DRV_MODE, true)?, "native"),
            XdpMode::Skb => (link(&program, ifindex, XDP_FLAGS_SKB_MODE, false)?, "skb"),
            XdpMode::Auto => match link(&program, ifindex, XDP_FLAGS_DRV_MODE, true) {
                Ok(l) => (l, "native"),
                Err(AttachError::NoNative(_)) => {
                    (link(&program, ifindex, XDP_FLAGS_SKB_MODE, false)?, "skb")
                }
                Err(e) => return Err(e),
            },
        };
        Ok(Redirect {
            _link: link,
            _program: program,
            map,
            mode,
        })
    }

    /// Puts `xsk`, an AF_XDP socket bound to receive queue `queue`, in that queue's slot: the
    /// queue's frames go to it from now on. The kernel takes the socket out of the map when
    /// it closes.
    pub fn insert(&self, queue: u32, xsk: RawFd) -> Result<(), AttachError> {
        let value: u32 = xsk as u32;
        bpf(
            BPF_MAP_UPDATE_ELEM,
            &mut MapUpdate {
                map_fd: self.map.as_raw_fd() as u32,
                key: &queue as *const u32 as u64,
                value: &value as *const u32 as u64,
                ..MapUpdate::default()
            },
        )
        .map(drop)
        .map_err(AttachError::Insert)
    }

    /// The hook the program runs on: `native` or `skb`.
    pub fn mode(&self) -> &'static str {
        self.mode
    }
}

/// Loads the program; on a refusal, loads it again with the verifier's log to say why.
fn load(map: RawFd) -> Result<OwnedFd, AttachError> {
    let insns = program(map);
    let license: &CStr = c"Apache-2.0";
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: BPF_XDP,
        ..ProgLoad::default()
    };
    attr.prog_name[..12].copy_from_slice(b"vmm_xsk_redi");
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(owned(fd)),
        Err(source) => {
            let mut log = vec![0u8; 4096];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            // Only for its log: the first refusal is the error reported.
            if let Ok(fd) = bpf(BPF_PROG_LOAD, &mut attr) {
                drop(owned(fd));
            }
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let text = text.trim();
            Err(AttachError::Load {
                source,
                verifier: if text.is_empty() {
                    String::new()
                } else {
                    format!(" (verifier: {})", text.replace('\n', "; "))
                },
            })
        }
    }
}

/// Attaches `program` to `ifindex` through a link with the hook `flags` names.
fn link(program: &OwnedFd, ifindex: u32, flags: u32, native: bool) -> Result<OwnedFd, AttachError> {
    let mut attr = LinkCreate {
        prog_fd: program.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags,
    };
    match bpf(BPF_LINK_CREATE, &mut attr) {
        Ok(fd) => Ok(owned(fd)),
        Err(e) => Err(match e.raw_os_error() {
            Some(libc::EBUSY | libc::EEXIST) => AttachError::Busy,
            Some(libc::EOPNOTSUPP | libc::EINVAL) if native => AttachError::NoNative(e),
            _ => AttachError::Attach {
                mode: if native { "native" } else { "skb" },
                source: e,
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The instructions as the kernel's headers encode them (the bytes `llvm-objdump -d`
    /// prints for the same C), so a slip in a register nibble or an opcode shows here rather
    /// than as a verifier refusal.
    #[test]
    fn program_encodes_the_redirect() {
        let p = program(7);
        let bytes: Vec<[u8; 8]> = p
            .iter()
            .map(|i| {
                let mut b = [0u8; 8];
                b[0] = i.code;
                b[1] = i.regs;
                b[2..4].copy_from_slice(&i.off.to_le_bytes());
                b[4..8].copy_from_slice(&i.imm.to_le_bytes());
                b
            })
            .collect();
        assert_eq!(bytes[0], [0x61, 0x12, 0x10, 0, 0, 0, 0, 0]); // r2 = *(u32 *)(r1 + 16)
        assert_eq!(bytes[1], [0x18, 0x11, 0, 0, 7, 0, 0, 0]); // r1 = map fd 7
        assert_eq!(bytes[2], [0; 8]);
        assert_eq!(bytes[3], [0xb7, 0x03, 0, 0, 2, 0, 0, 0]); // r3 = XDP_PASS
        assert_eq!(bytes[4], [0x85, 0, 0, 0, 51, 0, 0, 0]); // call bpf_redirect_map
        assert_eq!(bytes[5], [0x95, 0, 0, 0, 0, 0, 0, 0]); // exit
        assert_eq!(std::mem::size_of::<Insn>(), 8);
    }

    #[test]
    fn attributes_have_the_kernels_layout() {
        assert_eq!(std::mem::size_of::<MapUpdate>(), 32);
        assert_eq!(std::mem::size_of::<ProgLoad>(), 72);
        assert_eq!(std::mem::offset_of!(ProgLoad, prog_name), 48);
        assert_eq!(std::mem::offset_of!(ProgLoad, expected_attach_type), 68);
        assert_eq!(std::mem::size_of::<LinkCreate>(), 16);
    }
}
