//! `--disk path=FILE[,readonly=on][,format=raw|qcow2][,snapshot=on][,serial=ID]` (the device
//! layer's virtio-blk file): a virtio-blk device (one PCI slot each) served by a thread of the
//! VMM.
//!
//! The format is never guessed into qcow2: without `format=` a file is raw, and one that starts
//! with the qcow2 magic is refused until the user says which it is (a raw disk whose guest wrote
//! a qcow2 header must not turn into a qcow2 image with a backing file of the guest's choosing).

use std::fmt;
use std::path::PathBuf;

use vmm_devices::virtio_blk::{self, DiskOptions, Format, VirtioBlk};

/// One `--disk` argument, parsed and checked against the file system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskArg {
    /// How to open the image.
    pub opts: DiskOptions,
    /// What the guest reads with GET_ID (`/sys/block/vdX/serial`): `serial=`, else the file's
    /// name, cut to 20 bytes.
    pub serial: String,
}

/// A `--disk` argument that cannot be used: the message names the option and value. Always bad
/// input (exit 2): every failure is about the file the user named.
#[derive(Debug)]
pub struct DiskArgError {
    arg: String,
    msg: String,
}

impl fmt::Display for DiskArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "--disk {}: {}", self.arg, self.msg)
    }
}

/// `on`/`off` of a boolean key.
fn on_off(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{key}={v}: say on or off")),
    }
}

impl DiskArg {
    /// Parses `arg`; the file must exist and be a regular file or block device (a mistyped path
    /// would otherwise surface as a missing disk a minute into the boot).
    pub fn parse(arg: &str) -> Result<DiskArg, DiskArgError> {
        let err = |msg: String| DiskArgError {
            arg: arg.to_string(),
            msg,
        };
        let (mut path, mut readonly, mut format, mut snapshot, mut serial) =
            (None, None, None, None, None);
        for kv in arg.split(',') {
            let Some((k, v)) = kv.split_once('=') else {
                return Err(err(format!(
                    "'{kv}' is not key=value (--disk takes path=FILE[,readonly=on]\
                     [,format=raw|qcow2][,snapshot=on][,serial=ID])"
                )));
            };
            let twice = || err(format!("{k} given twice"));
            match k {
                "path" if v.is_empty() => return Err(err("path= needs a file".into())),
                "path" => path
                    .replace(PathBuf::from(v))
                    .map_or(Ok(()), |_| Err(twice()))?,
                "readonly" => readonly
                    .replace(on_off(k, v).map_err(err)?)
                    .map_or(Ok(()), |_| Err(twice()))?,
                "snapshot" => snapshot
                    .replace(on_off(k, v).map_err(err)?)
                    .map_or(Ok(()), |_| Err(twice()))?,
                "format" => {
                    let f = match v {
                        "raw" => Format::Raw,
                        "qcow2" => Format::Qcow2,
                        _ => return Err(err(format!("format={v}: say raw or qcow2"))),
                    };
                    format.replace(f).map_or(Ok(()), |_| Err(twice()))?
                }
                "serial" if v.len() > virtio_blk::ID_BYTES => {
                    return Err(err(format!(
                        "serial={v}: at most {} bytes",
                        virtio_blk::ID_BYTES
                    )))
                }
                "serial" => serial
                    .replace(v.to_string())
                    .map_or(Ok(()), |_| Err(twice()))?,
                _ => {
                    return Err(err(format!(
                        "unknown key '{k}' (path, readonly, format, snapshot, serial)"
                    )))
                }
            }
        }
        let path = path.ok_or_else(|| err("needs path=FILE".into()))?;
        match std::fs::metadata(&path) {
            Ok(m)
                if m.is_file()
                    || std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()) => {}
            Ok(_) => {
                return Err(err(format!(
                    "{} is not a regular file or block device",
                    path.display()
                )))
            }
            Err(e) => return Err(err(format!("{}: {e}", path.display()))),
        }
        let serial = serial.unwrap_or_else(|| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut end = name.len().min(virtio_blk::ID_BYTES);
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            name[..end].to_string()
        });
        Ok(DiskArg {
            opts: DiskOptions {
                path,
                readonly: readonly.unwrap_or(false),
                format,
                snapshot: snapshot.unwrap_or(false),
            },
            serial,
        })
    }
}

/// Opens the image and builds the device (nothing runs until the guest starts the driver).
pub fn open(
    arg: &str,
    disk: &DiskArg,
    mem: &crate::memory::GuestMemoryMmap,
) -> Result<VirtioBlk, DiskArgError> {
    let image = virtio_blk::image::open(&disk.opts).map_err(|e| DiskArgError {
        arg: arg.to_string(),
        msg: e.to_string(),
    })?;
    let name = disk.opts.path.display().to_string();
    Ok(VirtioBlk::new(
        image,
        disk.opts.readonly,
        &name,
        &disk.serial,
        mem.clone(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax() {
        let f = std::env::temp_dir().join(format!("vmm-d-{}.img", std::process::id()));
        std::fs::write(&f, [0u8; 512]).unwrap();
        let p = f.display().to_string();
        let d = DiskArg::parse(&format!("path={p},readonly=on,format=qcow2,snapshot=off")).unwrap();
        assert_eq!(
            d.opts,
            DiskOptions {
                path: f.clone(),
                readonly: true,
                format: Some(Format::Qcow2),
                snapshot: false,
            }
        );
        assert_eq!(d.serial, f.file_name().unwrap().to_str().unwrap());
        let d = DiskArg::parse(&format!("path={p},serial=abc")).unwrap();
        assert_eq!((d.opts.format, d.serial.as_str()), (None, "abc"));
        for (bad, why) in [
            (
                format!("path={p},format=vmdk"),
                "format=vmdk: say raw or qcow2",
            ),
            (format!("path={p},readonly=yes"), "say on or off"),
            (format!("path={p},path={p}"), "path given twice"),
            (format!("path={p},cache=none"), "unknown key 'cache'"),
            (format!("path={p},ro"), "'ro' is not key=value"),
            (format!("path={p},serial={}", "s".repeat(21)), "at most 20"),
            ("readonly=on".to_string(), "needs path=FILE"),
            ("path=".to_string(), "needs a file"),
            ("path=/nonexistent/disk.img".to_string(), "No such file"),
            ("path=/tmp".to_string(), "not a regular file"),
        ] {
            let e = DiskArg::parse(&bad).err().unwrap().to_string();
            assert!(e.starts_with(&format!("--disk {bad}: ")), "{e}");
            assert!(e.contains(why), "{e} lacks {why}");
            assert!(!e.contains('\n'));
        }
        std::fs::remove_file(&f).unwrap();
    }
}
