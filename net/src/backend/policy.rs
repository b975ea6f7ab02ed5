//! What a frontend may send: the checks the interop relay makes on every message, with its
//! descriptors, before the `vhost` crate sees it.
//!
//! The crate trusts its frontend more than a backend serving strangers can afford to:
//! - it maps each memory region's `mmap_offset + memory_size` bytes of the descriptor it came
//!   with, whatever the file's size, so a region larger than its file (or a file the frontend
//!   shrinks afterwards) is a SIGBUS on the first access, which is already `SET_VRING_ADDR`
//!   (the crate reads `used.idx` there);
//! - it reads and writes kick and call descriptors of any kind, blocking: a pipe as the kick
//!   blocks the ring's worker in `read`, a full pipe as the call blocks it in `write`;
//! - it acks `SET_VRING_NUM` with a size the queue then ignores, and protocol features it
//!   never offered.
//!
//! So the relay refuses, with a [`Refusal`] that says why, and the frontend loses its
//! connection: memory regions must be regular files at least `mmap_offset + memory_size`
//! long; kick descriptors must be eventfds, call and err descriptors eventfds, pipes or unix
//! sockets (UML signals through its `os_pipe()`, which is a unix socketpair: SIGIO does not
//! work on an eventfd), all made non-blocking (the flag is shared with the frontend, which is
//! fine for an eventfd and for the writing end of a pipe or socketpair that UML closes on its
//! side); ring indexes must exist and queue
//! sizes be powers of two up to the device's maximum; only offered protocol features may be
//! acked; `ADD_MEM_REG` and its kin need CONFIGURE_MEM_SLOTS, which is not offered.
//!
//! A memory file that could still shrink later is sealed here when it can be (a memfd created
//! with `MFD_ALLOW_SEALING` whose seals are not sealed: we add `F_SEAL_SHRINK`, as QEMU's
//! `memory-backend-memfd` does by default and our own VMM does). One that cannot be sealed (UML
//! maps an unlinked temporary file; a memfd without `MFD_ALLOW_SEALING`) is accepted, as
//! refusing it would refuse UML, and guarded instead: see [`super::guard`].

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use super::device::{MAX_QUEUE_SIZE, PAIR_QUEUES};
use super::features::PROTOCOL_FEATURES;

/// vhost-user request codes the checks (and the relay) look at.
pub const GET_FEATURES: u32 = 1;
pub const SET_FEATURES: u32 = 2;
pub const SET_MEM_TABLE: u32 = 5;
pub const SET_VRING_NUM: u32 = 8;
pub const SET_VRING_ADDR: u32 = 9;
pub const SET_VRING_BASE: u32 = 10;
pub const GET_VRING_BASE: u32 = 11;
pub const SET_VRING_KICK: u32 = 12;
pub const SET_VRING_CALL: u32 = 13;
pub const SET_VRING_ERR: u32 = 14;
pub const SET_PROTOCOL_FEATURES: u32 = 16;
pub const SET_VRING_ENABLE: u32 = 18;
pub const GET_MAX_MEM_SLOTS: u32 = 36;
pub const ADD_MEM_REG: u32 = 37;
pub const REM_MEM_REG: u32 = 38;

/// Most regions a `SET_MEM_TABLE` may carry (the protocol's VHOST_MEMORY_BASELINE_NREGIONS).
pub const MAX_REGIONS: usize = 8;
/// Bytes of a memory region entry and of the `SET_MEM_TABLE` payload header.
pub const REGION: usize = 32;
pub const MEM_HDR: usize = 8;
/// The "no descriptor, poll instead" flag in a kick/call/err payload.
const NO_FD: u64 = 0x100;

/// What the device offers, which bounds what a frontend may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub num_queues: u32,
    pub max_queue_size: u32,
    pub protocol_features: u64,
}

impl Default for Limits {
    /// The net device's own limits, with one queue pair.
    fn default() -> Limits {
        Limits {
            num_queues: PAIR_QUEUES as u32,
            max_queue_size: MAX_QUEUE_SIZE as u32,
            protocol_features: PROTOCOL_FEATURES,
        }
    }
}

/// Why a frontend's message was refused (and the frontend dropped).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("payload of {len} bytes where {want} were expected")]
    PayloadSize { len: usize, want: usize },
    #[error("ring {index} does not exist (the device has {count})")]
    NoSuchRing { index: u32, count: u32 },
    #[error("queue size {size} is not a power of two in 1..={max}")]
    QueueSize { size: u32, max: u32 },
    #[error("acks protocol features {extra:#x} that were never offered (offered: {offered:#x})")]
    UnofferedProtocolFeatures { extra: u64, offered: u64 },
    #[error("CONFIGURE_MEM_SLOTS is not offered: there are no memory slots beyond SET_MEM_TABLE")]
    NoMemSlots,
    #[error("{regions} memory regions, at most {MAX_REGIONS} are served")]
    TooManyRegions { regions: usize },
    #[error("{regions} memory regions came with {fds} descriptors")]
    RegionDescriptors { regions: usize, fds: usize },
    #[error("memory region {index} is empty")]
    EmptyRegion { index: usize },
    #[error("memory region {index}: its descriptor is not a regular file (mode {mode:#o})")]
    NotAFile { index: usize, mode: u32 },
    #[error(
        "memory region {index}: mmap_offset {offset:#x} + memory_size {size:#x} lies beyond the \
         end of its {file_size:#x}-byte file"
    )]
    BeyondFile {
        index: usize,
        offset: u64,
        size: u64,
        file_size: u64,
    },
    #[error("{count} descriptors where {want} was expected")]
    Descriptors { count: usize, want: usize },
    #[error("the descriptor is {kind}, not {want}")]
    Notifier { kind: String, want: &'static str },
    #[error("inspecting the descriptor: {0}")]
    Inspect(#[source] io::Error),
}

/// The name of a request for log lines: `SET_VRING_NUM`, or `request 99` for unknown codes.
pub fn request_name(request: u32) -> String {
    match vhost::vhost_user::message::FrontendReq::try_from(request) {
        Ok(r) => format!("{r:?}"),
        Err(()) => format!("request {request}"),
    }
}

fn u32_at(payload: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        payload.get(at..at + 4)?.try_into().ok()?,
    ))
}

fn u64_at(payload: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        payload.get(at..at + 8)?.try_into().ok()?,
    ))
}

fn exact(payload: &[u8], want: usize) -> Result<(), Refusal> {
    if payload.len() == want {
        Ok(())
    } else {
        Err(Refusal::PayloadSize {
            len: payload.len(),
            want,
        })
    }
}

impl Limits {
    /// Checks one frontend message (after the relay's interop rewrites). `Ok` lets it through;
    /// the descriptors of a passing message may have been adjusted (sealed, made non-blocking).
    pub fn check(&self, request: u32, payload: &[u8], fds: &[OwnedFd]) -> Result<(), Refusal> {
        match request {
            SET_PROTOCOL_FEATURES => {
                exact(payload, 8)?;
                let acked = u64_at(payload, 0).unwrap_or(0);
                let extra = acked & !self.protocol_features;
                if extra != 0 {
                    return Err(Refusal::UnofferedProtocolFeatures {
                        extra,
                        offered: self.protocol_features,
                    });
                }
                Ok(())
            }
            SET_VRING_NUM | SET_VRING_BASE | GET_VRING_BASE | SET_VRING_ENABLE => {
                exact(payload, 8)?;
                self.ring(u32_at(payload, 0).unwrap_or(u32::MAX))?;
                let size = u32_at(payload, 4).unwrap_or(0);
                if request == SET_VRING_NUM
                    && !(size.is_power_of_two() && size <= self.max_queue_size)
                {
                    return Err(Refusal::QueueSize {
                        size,
                        max: self.max_queue_size,
                    });
                }
                Ok(())
            }
            // struct vhost_vring_addr: index, flags, then five u64 addresses.
            SET_VRING_ADDR => {
                exact(payload, 40)?;
                self.ring(u32_at(payload, 0).unwrap_or(u32::MAX))
            }
            SET_VRING_KICK | SET_VRING_CALL | SET_VRING_ERR => {
                exact(payload, 8)?;
                let v = u64_at(payload, 0).unwrap_or(0);
                self.ring((v & 0xff) as u32)?;
                let want = usize::from(v & NO_FD == 0);
                if fds.len() != want {
                    return Err(Refusal::Descriptors {
                        count: fds.len(),
                        want,
                    });
                }
                let pipe_ok = request != SET_VRING_KICK;
                fds.iter().try_for_each(|fd| notifier(fd.as_fd(), pipe_ok))
            }
            SET_MEM_TABLE => mem_table(payload, fds),
            GET_MAX_MEM_SLOTS | ADD_MEM_REG | REM_MEM_REG => Err(Refusal::NoMemSlots),
            _ => Ok(()),
        }
    }

    fn ring(&self, index: u32) -> Result<(), Refusal> {
        if index < self.num_queues {
            Ok(())
        } else {
            Err(Refusal::NoSuchRing {
                index,
                count: self.num_queues,
            })
        }
    }
}

/// `SET_MEM_TABLE`: `num_regions`, padding, then `num_regions` entries of (guest address,
/// size, user address, mmap offset), one descriptor each.
fn mem_table(payload: &[u8], fds: &[OwnedFd]) -> Result<(), Refusal> {
    let regions = u32_at(payload, 0).unwrap_or(0) as usize;
    if regions > MAX_REGIONS {
        return Err(Refusal::TooManyRegions { regions });
    }
    exact(payload, MEM_HDR + REGION * regions)?;
    if fds.len() != regions {
        return Err(Refusal::RegionDescriptors {
            regions,
            fds: fds.len(),
        });
    }
    for (index, fd) in fds.iter().enumerate() {
        let entry = MEM_HDR + REGION * index;
        let size = u64_at(payload, entry + 8).unwrap_or(0);
        let offset = u64_at(payload, entry + 24).unwrap_or(0);
        region_file(index, fd.as_fd(), offset, size)?;
    }
    Ok(())
}

/// How a memory region's file stands against shrinking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shrink {
    /// The frontend sealed it (`F_SEAL_SHRINK`).
    Sealed,
    /// We sealed it.
    SealedHere,
    /// It cannot be sealed; the SIGBUS guard covers its mapping.
    Guarded,
}

/// Checks that the file behind a region is a regular file holding `offset + size` bytes, and
/// seals it against shrinking where it can.
pub fn region_file(
    index: usize,
    fd: BorrowedFd<'_>,
    offset: u64,
    size: u64,
) -> Result<Shrink, Refusal> {
    if size == 0 {
        return Err(Refusal::EmptyRegion { index });
    }
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into the live `st`; `fd` is open for the call's duration.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(Refusal::Inspect(io::Error::last_os_error()));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(Refusal::NotAFile {
            index,
            mode: st.st_mode,
        });
    }
    let file_size = u64::try_from(st.st_size).unwrap_or(0);
    if offset.checked_add(size).is_none_or(|end| end > file_size) {
        return Err(Refusal::BeyondFile {
            index,
            offset,
            size,
            file_size,
        });
    }
    let shrink = seal_against_shrinking(fd);
    log::debug!("memory region {index}: {file_size} bytes, {shrink:?}");
    Ok(shrink)
}

/// Adds `F_SEAL_SHRINK` to a sealable memfd that lacks it; says where the file stands.
fn seal_against_shrinking(fd: BorrowedFd<'_>) -> Shrink {
    // SAFETY: fcntl with an integer-only command on a descriptor open for the call.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        // EINVAL: not a memfd (nor another sealable file).
        return Shrink::Guarded;
    }
    if seals & libc::F_SEAL_SHRINK != 0 {
        return Shrink::Sealed;
    }
    if seals & libc::F_SEAL_SEAL != 0 {
        return Shrink::Guarded;
    }
    // SAFETY: as above; F_ADD_SEALS takes an integer. It fails (EPERM) on a read-only
    // descriptor or when the file is already smaller than a mapping needs: then we guard.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) } == 0 {
        Shrink::SealedHere
    } else {
        Shrink::Guarded
    }
}

/// Checks that `fd` is an eventfd (or, with `pipe_ok`, a pipe or a unix socket: what a call
/// takes, since only 8-byte writes go to it) and makes it non-blocking, so
/// that neither the worker's read of a kick nor its write of a call can block it (a frontend
/// could drain a kick between our wake-up and our read, or fill a call pipe). A kick must be an
/// eventfd: the crate reads exactly 8 bytes from it, which a pipe does not guarantee.
pub fn notifier(fd: BorrowedFd<'_>, pipe_ok: bool) -> Result<(), Refusal> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(Refusal::Inspect)?;
    let kind = link.to_string_lossy();
    let ok = kind == "anon_inode:[eventfd]"
        || (pipe_ok && (kind.starts_with("pipe:") || is_unix_socket(fd)));
    if !ok {
        return Err(Refusal::Notifier {
            kind: kind.into_owned(),
            want: if pipe_ok {
                "an eventfd, a pipe or a unix socket"
            } else {
                "an eventfd"
            },
        });
    }
    // SAFETY: fcntl with integer arguments on a descriptor open for the call.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(Refusal::Inspect(io::Error::last_os_error()));
    }
    // SAFETY: as above.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
    if rc < 0 {
        return Err(Refusal::Inspect(io::Error::last_os_error()));
    }
    Ok(())
}

/// Whether `fd` is an AF_UNIX socket (UML's call descriptors: its `os_pipe()` is a
/// socketpair).
fn is_unix_socket(fd: BorrowedFd<'_>) -> bool {
    let mut domain: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `domain` and `len` are live locals; the kernel writes at most `len` bytes. Not
    // a socket: ENOTSOCK, and the answer is no.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut domain as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && domain == libc::AF_UNIX
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    fn memfd(size: u64, flags: libc::c_uint) -> OwnedFd {
        // SAFETY: a literal name; plain flags.
        let fd = unsafe { libc::memfd_create(c"t".as_ptr(), flags) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        std::fs::File::from(fd.try_clone().unwrap())
            .set_len(size)
            .unwrap();
        fd
    }

    fn state(index: u32, num: u32) -> Vec<u8> {
        [index.to_le_bytes(), num.to_le_bytes()].concat()
    }

    fn table(size: u64, offset: u64) -> Vec<u8> {
        let mut p = vec![0u8; MEM_HDR + REGION];
        p[0] = 1;
        p[16..24].copy_from_slice(&size.to_le_bytes());
        p[32..40].copy_from_slice(&offset.to_le_bytes());
        p
    }

    #[test]
    fn queue_sizes_and_ring_indexes() {
        let l = Limits::default();
        assert!(l.check(SET_VRING_NUM, &state(1, 256), &[]).is_ok());
        assert!(matches!(
            l.check(SET_VRING_NUM, &state(0, 3), &[]),
            Err(Refusal::QueueSize { size: 3, .. })
        ));
        assert!(matches!(
            l.check(SET_VRING_NUM, &state(0, 2048), &[]),
            Err(Refusal::QueueSize { .. })
        ));
        assert!(matches!(
            l.check(SET_VRING_NUM, &state(0, 0), &[]),
            Err(Refusal::QueueSize { .. })
        ));
        assert!(matches!(
            l.check(SET_VRING_ENABLE, &state(64, 1), &[]),
            Err(Refusal::NoSuchRing {
                index: 64,
                count: 2
            })
        ));
        assert!(matches!(
            l.check(SET_VRING_BASE, &[0; 4], &[]),
            Err(Refusal::PayloadSize { len: 4, want: 8 })
        ));
    }

    #[test]
    fn only_offered_protocol_features() {
        let l = Limits::default();
        let ok = PROTOCOL_FEATURES.to_le_bytes();
        assert!(l.check(SET_PROTOCOL_FEATURES, &ok, &[]).is_ok());
        let more = (PROTOCOL_FEATURES | 0x8000).to_le_bytes();
        assert!(matches!(
            l.check(SET_PROTOCOL_FEATURES, &more, &[]),
            Err(Refusal::UnofferedProtocolFeatures { extra: 0x8000, .. })
        ));
        assert!(matches!(
            l.check(ADD_MEM_REG, &[0; 40], &[]),
            Err(Refusal::NoMemSlots)
        ));
    }

    #[test]
    fn regions_must_fit_their_file_and_get_sealed() {
        let l = Limits::default();
        let sealable = memfd(0x10000, libc::MFD_ALLOW_SEALING);
        let fds = [sealable];
        assert!(matches!(
            l.check(SET_MEM_TABLE, &table(0x20_0000, 0), &fds),
            Err(Refusal::BeyondFile { .. })
        ));
        assert!(matches!(
            l.check(SET_MEM_TABLE, &table(0x10000, 1), &fds),
            Err(Refusal::BeyondFile { .. })
        ));
        assert!(matches!(
            l.check(SET_MEM_TABLE, &table(u64::MAX, 2), &fds),
            Err(Refusal::BeyondFile { .. })
        ));
        assert!(l.check(SET_MEM_TABLE, &table(0x10000, 0), &fds).is_ok());
        // We sealed it: the frontend can no longer shrink it.
        let file = std::fs::File::from(fds[0].try_clone().unwrap());
        assert!(file.set_len(0x1000).is_err());
        assert_eq!(
            region_file(0, fds[0].as_fd(), 0, 0x10000).unwrap(),
            Shrink::Sealed
        );
        let unsealable = memfd(0x10000, 0);
        assert_eq!(
            region_file(0, unsealable.as_fd(), 0, 0x10000).unwrap(),
            Shrink::Guarded
        );
        assert!(matches!(
            l.check(SET_MEM_TABLE, &table(0x10000, 0), &[]),
            Err(Refusal::RegionDescriptors { regions: 1, fds: 0 })
        ));
    }

    #[test]
    fn kicks_are_eventfds_calls_eventfds_or_pipes() {
        let l = Limits::default();
        let mut p = [0; 2];
        // SAFETY: pipe writes two descriptors into the live array.
        assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
        // SAFETY: fresh descriptors nobody else owns.
        let (r, _w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
        let (r2, w) = (r.try_clone().unwrap(), _w.try_clone().unwrap());
        assert!(matches!(
            l.check(SET_VRING_KICK, &0u64.to_le_bytes(), &[r]),
            Err(Refusal::Notifier { .. })
        ));
        // A pipe is a call, made non-blocking.
        assert!(l.check(SET_VRING_CALL, &0u64.to_le_bytes(), &[w]).is_ok());
        // SAFETY: fcntl with integer arguments on the test's own descriptor.
        let flags = unsafe { libc::fcntl(_w.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(flags & libc::O_NONBLOCK, 0);
        drop(r2);
        // So is a unix socket (UML's `os_pipe()` is a socketpair), made non-blocking; it is
        // no kick, and an IP socket is neither.
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let a2 = a.try_clone().unwrap();
        assert!(l
            .check(SET_VRING_ERR, &0u64.to_le_bytes(), &[OwnedFd::from(a)])
            .is_ok());
        // SAFETY: fcntl with integer arguments on the test's own descriptor.
        let flags = unsafe { libc::fcntl(a2.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(flags & libc::O_NONBLOCK, 0);
        assert!(matches!(
            l.check(SET_VRING_KICK, &0u64.to_le_bytes(), &[OwnedFd::from(a2)]),
            Err(Refusal::Notifier { .. })
        ));
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(matches!(
            l.check(SET_VRING_CALL, &0u64.to_le_bytes(), &[OwnedFd::from(udp)]),
            Err(Refusal::Notifier { .. })
        ));
        // SAFETY: plain flags; the result is checked below.
        let e = unsafe { libc::eventfd(0, 0) };
        assert!(e >= 0);
        // SAFETY: a fresh descriptor nobody else owns.
        let e = unsafe { OwnedFd::from_raw_fd(e) };
        assert!(l.check(SET_VRING_CALL, &1u64.to_le_bytes(), &[e]).is_ok());
        assert!(l
            .check(SET_VRING_CALL, &(1u64 | NO_FD).to_le_bytes(), &[])
            .is_ok());
        assert!(matches!(
            l.check(SET_VRING_CALL, &1u64.to_le_bytes(), &[]),
            Err(Refusal::Descriptors { count: 0, want: 1 })
        ));
    }
}
