//! The disk behind a virtio-blk device: a small [`DiskImage`] trait with a raw-file
//! implementation of our own (positioned reads and writes, `fdatasync`, hole punching) and a
//! qcow2 one through the `imago` crate, which also provides the throw-away qcow2 overlay of
//! `snapshot=on` (for raw and qcow2 images alike).
//!
//! Format probing is deliberately absent: a raw image whose guest wrote a qcow2 header would
//! otherwise come back as qcow2 on the next boot, with a backing file of the guest's choosing
//! (QEMU's well-known probing hole). The format is raw unless the caller says qcow2, and
//! [`open`] refuses a file with the qcow2 magic when the format was not given at all.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatCreateBuilder, FormatDriverBuilder};

/// The first four bytes of every qcow2 image ("QFI\xfb").
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Cluster size of the `snapshot=on` overlay: small, so a guest's scattered small writes copy
/// little of the image.
const OVERLAY_CLUSTER: usize = 64 * 1024;

/// Bytes written at a time when zeroes have to be written out.
const ZERO_CHUNK: usize = 1 << 20;

/// A disk image as the device sees it: a byte-addressed, fixed-size store. Offsets and lengths
/// are checked against [`DiskImage::len`] by the caller before any call.
pub trait DiskImage: Send {
    /// Size in bytes (the guest sees `len / 512` sectors).
    fn len(&self) -> u64;
    /// Whether the image has no bytes at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` from `offset`.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable (the guest's FLUSH).
    fn flush(&mut self) -> io::Result<()>;
    /// The range's contents no longer matter (they may read back as anything, usually zero).
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// The range reads back as zeroes.
    fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()>;
}

/// The image formats `--disk` understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The guest's bytes, as they are, in the file.
    Raw,
    /// QEMU's copy-on-write format.
    Qcow2,
}

impl Format {
    /// The name used in `format=`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

/// How to open a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskOptions {
    /// The image file.
    pub path: PathBuf,
    /// The guest may not write (the file is opened read-only).
    pub readonly: bool,
    /// `None`: raw, unless the file has the qcow2 magic, which is then refused.
    pub format: Option<Format>,
    /// Writes go to a temporary overlay; the file is opened read-only and never changes.
    pub snapshot: bool,
}

/// Why a disk cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file cannot be opened (missing, no permission, a directory).
    #[error("{}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// What open(2) or stat(2) said.
        #[source]
        source: io::Error,
    },
    /// Not a regular file or block device.
    #[error("{}: not a regular file or block device", .0.display())]
    NotAFile(PathBuf),
    /// Another process (another VMM) holds a conflicting lock on the file.
    #[error(
        "{}: in use by another process ({} lock held); two VMs writing one image corrupt it",
        .0.display(),
        if *.1 { "a shared" } else { "an exclusive" }
    )]
    Locked(PathBuf, bool),
    /// No `format=` given and the file starts with the qcow2 magic.
    #[error(
        "{}: has a qcow2 header; add format=qcow2 (or format=raw to give the guest its bytes as \
         they are)",
        .0.display()
    )]
    Ambiguous(PathBuf),
    /// imago cannot open it as qcow2 (a broken header, an unsupported feature, a backing file).
    #[error("{}: not a usable qcow2 image: {source}", path.display())]
    Qcow2 {
        /// The file.
        path: PathBuf,
        /// imago's error.
        #[source]
        source: io::Error,
    },
    /// The temporary overlay of `snapshot=on` cannot be created.
    #[error("snapshot=on: cannot create the temporary overlay in {}: {source}", dir.display())]
    Overlay {
        /// Where it was to be created.
        dir: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
}

/// Opens the disk as `opts` says, with the overlay in `std::env::temp_dir()` for `snapshot=on`.
pub fn open(opts: &DiskOptions) -> Result<Box<dyn DiskImage>, ImageError> {
    let path = &opts.path;
    let open_err = |source| ImageError::Open {
        path: path.clone(),
        source,
    };
    // The file itself is written only when neither readonly nor snapshot.
    let writable = !opts.readonly && !opts.snapshot;
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(open_err)?;
    let meta = file.metadata().map_err(open_err)?;
    let ft = meta.file_type();
    if !ft.is_file() && !std::os::unix::fs::FileTypeExt::is_block_device(&ft) {
        return Err(ImageError::NotAFile(path.clone()));
    }
    lock(&file, writable).map_err(|shared| ImageError::Locked(path.clone(), shared))?;
    let format = match opts.format {
        Some(f) => f,
        None => {
            let mut magic = [0u8; 4];
            match file.read_exact_at(&mut magic, 0) {
                Ok(()) if magic == QCOW2_MAGIC => return Err(ImageError::Ambiguous(path.clone())),
                Ok(()) => Format::Raw,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Format::Raw,
                Err(e) => return Err(open_err(e)),
            }
        }
    };
    let qcow2_err = |source| ImageError::Qcow2 {
        path: path.clone(),
        source,
    };
    let base: Box<dyn DiskImage> = match format {
        Format::Raw if !opts.snapshot || opts.readonly => {
            Box::new(RawImage::new(file).map_err(open_err)?)
        }
        Format::Raw => {
            let storage = ImagoFile::try_from(file).map_err(open_err)?;
            let raw = Raw::builder(storage)
                .write(false)
                .open(DenyImplicitOpenGate::default())
                .map_err(open_err)?;
            return overlay(FormatAccess::new(raw));
        }
        Format::Qcow2 => {
            let storage = ImagoFile::try_from(file).map_err(open_err)?;
            // No implicit opens: a backing file or external data file named in the header is
            // refused rather than opened on the image's say-so.
            let q = Qcow2::<ImagoFile>::builder(storage)
                .write(writable)
                .open(DenyImplicitOpenGate::default())
                .map_err(qcow2_err)?;
            let access = FormatAccess::new(q);
            if opts.snapshot && !opts.readonly {
                return overlay(access);
            }
            Box::new(Qcow2Image { access })
        }
    };
    Ok(base)
}

/// Locks the open file for the VM's lifetime (the lock goes with the descriptor): exclusively
/// when the VM writes it, shared otherwise, so two VMs never write one image and none reads an
/// image another is writing. `Err(true)` when another holder's lock is shared (we wanted to
/// write), `Err(false)` when it is exclusive. A file system without locks is let through.
fn lock(file: &File, writable: bool) -> Result<(), bool> {
    let op = if writable {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
        log::debug!("virtio-blk: cannot lock the image ({e}); going on unlocked");
        return Ok(());
    }
    // Which kind is in the way: a shared lock would let us share.
    // SAFETY: as above.
    let shared =
        writable && unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
    if shared {
        // SAFETY: as above; drop the probe lock again.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
    }
    Err(shared)
}

/// A raw image: the guest's sector `n` is the file's bytes `512 n ..`.
pub struct RawImage {
    file: File,
    len: u64,
    /// Hole punching failed once as unsupported (a block device, an old file system): zeroes
    /// are written instead from then on.
    no_punch: bool,
}

impl RawImage {
    /// Wraps an open file (or block device), whose size is fixed from now on.
    pub fn new(file: File) -> io::Result<RawImage> {
        let len = device_or_file_len(&file)?;
        Ok(RawImage {
            file,
            len,
            no_punch: false,
        })
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: fallocate on a descriptor we own, with plain integer arguments; it touches no
        // memory of ours.
        let r = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, n) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn write_zero_bytes(&self, mut offset: u64, len: u64) -> io::Result<()> {
        let zeroes = vec![0u8; ZERO_CHUNK.min(len as usize)];
        let end = offset + len;
        while offset < end {
            let n = (end - offset).min(zeroes.len() as u64) as usize;
            self.file.write_all_at(&zeroes[..n], offset)?;
            offset += n as u64;
        }
        Ok(())
    }
}

/// The size of a regular file, or of a block device (whose `st_size` is 0).
fn device_or_file_len(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to a live u64.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// `_IOR(0x12, 114, size_t)`.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// Treats "the file system or device cannot do that" alike.
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::ENODEV) | Some(libc::EINVAL)
    )
}

impl DiskImage for RawImage {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        // fdatasync: the data and whatever metadata reading it back needs.
        self.file.sync_data()
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if !self.no_punch {
            match self.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            ) {
                Ok(()) => return Ok(()),
                Err(e) if unsupported(&e) => self.no_punch = true,
                Err(e) => return Err(e),
            }
        }
        self.write_zero_bytes(offset, len)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        match self.fallocate(
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Ok(()) => Ok(()),
            Err(e) if unsupported(&e) => self.write_zero_bytes(offset, len),
            Err(e) => Err(e),
        }
    }
}

/// A qcow2 image through imago (possibly the overlay of `snapshot=on`).
pub struct Qcow2Image {
    access: FormatAccess<ImagoFile>,
}

impl DiskImage for Qcow2Image {
    fn len(&self) -> u64 {
        self.access.size()
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.access.read(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.access.write(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        // flush writes imago's cached metadata out, sync makes it and the data durable.
        self.access.flush()?;
        self.access.sync()
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.access.discard_to_any(offset, len)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        // imago 0.2.6 underflows (a panic in debug builds, a wild range in release ones) when
        // zeroing the tail of an image smaller than one cluster; such tiny images get their
        // zeroes written out. 2 MiB is qcow2's largest cluster.
        if self.access.size() < QCOW2_MAX_CLUSTER {
            let zeroes = vec![0u8; len as usize];
            return self.access.write(&zeroes[..], offset);
        }
        self.access.write_zeroes(offset, len)
    }
}

/// qcow2's largest cluster size.
const QCOW2_MAX_CLUSTER: u64 = 2 << 20;

/// `snapshot=on`: a fresh qcow2 image in an unlinked temporary file, whose backing image is
/// `base` (read-only). Every write lands in the overlay; it vanishes with the VM.
fn overlay(base: FormatAccess<ImagoFile>) -> Result<Box<dyn DiskImage>, ImageError> {
    let dir = std::env::temp_dir();
    let err = |source| ImageError::Overlay {
        dir: dir.clone(),
        source,
    };
    let size = base.size();
    let tmp = unlinked_temp_file(&dir).map_err(err)?;
    let storage = ImagoFile::try_from(tmp).map_err(err)?;
    let q = Qcow2::<ImagoFile>::create_builder(storage)
        .size(size)
        .cluster_size(OVERLAY_CLUSTER)
        .create_open(DenyImplicitOpenGate::default(), |image| {
            Ok(Qcow2::<ImagoFile>::builder(image)
                .backing(Some(base))
                .write(true))
        })
        .map_err(err)?;
    Ok(Box::new(Qcow2Image {
        access: FormatAccess::new(q),
    }))
}

/// A read-write file in `dir` that has no name (O_TMPFILE, else created and unlinked at once),
/// so nothing is left behind whichever way the VMM ends.
fn unlinked_temp_file(dir: &Path) -> io::Result<File> {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(dir)
    {
        Ok(f) => return Ok(f),
        Err(e) if !unsupported(&e) && e.raw_os_error() != Some(libc::EISDIR) => return Err(e),
        Err(_) => {}
    }
    for i in 0..100u32 {
        let p = dir.join(format!(".vmm-overlay-{}-{i}", std::process::id()));
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
        {
            Ok(f) => {
                std::fs::remove_file(&p)?;
                return Ok(f);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from(io::ErrorKind::AlreadyExists))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, data: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmm-blk-img-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    fn opts(path: &Path) -> DiskOptions {
        DiskOptions {
            path: path.to_path_buf(),
            readonly: false,
            format: None,
            snapshot: false,
        }
    }

    /// A qcow2 image of `size` bytes made by imago, with `data` written at 0.
    fn qcow2_file(name: &str, size: u64, data: &[u8]) -> PathBuf {
        let p = temp(name, b"");
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let storage = ImagoFile::try_from(f).unwrap();
        let q = Qcow2::<ImagoFile>::create_builder(storage)
            .size(size)
            .create_open(DenyImplicitOpenGate::default(), |image| {
                Ok(Qcow2::<ImagoFile>::builder(image).write(true))
            })
            .unwrap();
        let access = FormatAccess::new(q);
        access.write(data, 0).unwrap();
        access.flush().unwrap();
        p
    }

    #[test]
    fn raw_reads_writes_zeroes_and_discards() {
        let p = temp("raw.img", &[7u8; 16384]);
        let mut d = open(&opts(&p)).unwrap();
        assert_eq!(d.len(), 16384);
        let mut buf = [0u8; 4];
        d.read_at(&mut buf, 100).unwrap();
        assert_eq!(buf, [7; 4]);
        d.write_at(b"abcd", 512).unwrap();
        d.write_zeroes(4096, 4096).unwrap();
        d.discard(8192, 4096).unwrap();
        d.flush().unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(
            bytes.len(),
            16384,
            "KEEP_SIZE: the image did not grow or shrink"
        );
        assert_eq!(&bytes[512..516], b"abcd");
        assert!(bytes[4096..12288].iter().all(|&b| b == 0));
        assert!(bytes[12288..].iter().all(|&b| b == 7));
    }

    #[test]
    fn readonly_and_snapshot_open_the_file_read_only() {
        let p = temp("ro.img", &[1u8; 4096]);
        // A raw image opened read-only cannot be written even by mistake: the fd refuses.
        let mut d = open(&DiskOptions {
            readonly: true,
            ..opts(&p)
        })
        .unwrap();
        assert!(d.write_at(b"x", 0).is_err());
        // snapshot=on: the guest's writes read back, the file never changes.
        let mut s = open(&DiskOptions {
            snapshot: true,
            ..opts(&p)
        })
        .unwrap();
        assert_eq!(s.len(), 4096);
        s.write_at(b"overlay", 1000).unwrap();
        s.write_zeroes(2048, 1024).unwrap();
        s.flush().unwrap();
        let mut buf = vec![0u8; 4096];
        s.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[1000..1007], b"overlay");
        assert!(buf[..1000].iter().all(|&b| b == 1), "unwritten: the file's");
        assert!(buf[2048..3072].iter().all(|&b| b == 0));
        assert!(buf[3072..].iter().all(|&b| b == 1));
        drop(s);
        assert_eq!(std::fs::read(&p).unwrap(), vec![1u8; 4096]);
    }

    #[test]
    fn qcow2_needs_format_and_works_with_it() {
        let p = qcow2_file("a.qcow2", 1 << 20, b"hello qcow2");
        let e = open(&opts(&p)).err().unwrap();
        assert!(matches!(e, ImageError::Ambiguous(_)), "{e}");
        assert!(e.to_string().contains("format=qcow2"), "{e}");
        // format=raw gives the bytes as they are (the header).
        let mut raw = open(&DiskOptions {
            format: Some(Format::Raw),
            ..opts(&p)
        })
        .unwrap();
        let mut m = [0u8; 4];
        raw.read_at(&mut m, 0).unwrap();
        assert_eq!(m, QCOW2_MAGIC);
        drop(raw);
        let q = DiskOptions {
            format: Some(Format::Qcow2),
            ..opts(&p)
        };
        let mut d = open(&q).unwrap();
        assert_eq!(d.len(), 1 << 20);
        let mut buf = [0u8; 11];
        d.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"hello qcow2");
        d.write_at(b"second", 600_000).unwrap();
        d.flush().unwrap();
        drop(d);
        let mut d = open(&q).unwrap();
        let mut buf = [0u8; 6];
        d.read_at(&mut buf, 600_000).unwrap();
        assert_eq!(&buf, b"second");
        drop(d);
        // A snapshot overlay over the qcow2: reads through, writes never reach the image.
        let before = std::fs::read(&p).unwrap();
        let mut s = open(&DiskOptions {
            snapshot: true,
            ..q.clone()
        })
        .unwrap();
        s.write_at(b"scratch", 0).unwrap();
        s.flush().unwrap();
        let mut buf = [0u8; 7];
        s.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"scratch");
        s.read_at(&mut buf[..6], 600_000).unwrap();
        assert_eq!(&buf[..6], b"second");
        drop(s);
        assert!(
            std::fs::read(&p).unwrap() == before,
            "snapshot=on modified the image"
        );
    }

    #[test]
    fn broken_qcow2_and_odd_files_are_refused() {
        let mut bad = QCOW2_MAGIC.to_vec();
        bad.extend_from_slice(&[0xff; 508]);
        let p = temp("bad.qcow2", &bad);
        let e = open(&DiskOptions {
            format: Some(Format::Qcow2),
            ..opts(&p)
        })
        .err()
        .unwrap();
        assert!(matches!(e, ImageError::Qcow2 { .. }), "{e}");
        assert!(!e.to_string().contains('\n'), "one line: {e}");
        let e = open(&opts(Path::new("/nonexistent/disk.img")))
            .err()
            .unwrap();
        assert!(matches!(e, ImageError::Open { .. }), "{e}");
        let e = open(&DiskOptions {
            readonly: true,
            ..opts(&std::env::temp_dir())
        })
        .err()
        .unwrap();
        assert!(matches!(e, ImageError::NotAFile(_)), "{e}");
        // Two writers, or a writer and a reader, never share an image; readers do.
        let p = temp("locked.img", &[0u8; 512]);
        let first = open(&opts(&p)).unwrap();
        let e = open(&opts(&p)).err().unwrap();
        assert!(matches!(e, ImageError::Locked(_, false)), "{e}");
        let ro = DiskOptions {
            readonly: true,
            ..opts(&p)
        };
        assert!(matches!(open(&ro).err(), Some(ImageError::Locked(..))));
        drop(first);
        let r1 = open(&ro).unwrap();
        let _r2 = open(&DiskOptions {
            snapshot: true,
            ..opts(&p)
        })
        .unwrap();
        let e = open(&opts(&p)).err().unwrap();
        assert!(matches!(e, ImageError::Locked(_, true)), "{e}");
        drop(r1);
        // A file shorter than the magic is raw (an empty disk).
        let p = temp("tiny.img", b"QF");
        assert_eq!(open(&opts(&p)).unwrap().len(), 2);
    }
}
