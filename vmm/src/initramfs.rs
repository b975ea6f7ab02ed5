//! A minimal initramfs that loads kernel modules before the real root is mounted.
//!
//! `vmm run` mounts the host's root file system over virtio-fs. A kernel with virtio-pci,
//! virtio-fs and FUSE built in does that itself (no initramfs at all: the fastest boot). A
//! distribution kernel (Debian's stock one) has them as modules, which must be loaded from
//! somewhere before the root exists: this module finds them and their dependencies in the
//! kernel's module tree (`/lib/modules/RELEASE`, read through depmod's `modules.dep` and
//! `modules.builtin`), and writes a newc cpio holding the host's static busybox, the modules
//! (decompressed on the host, since busybox's `insmod` may not read xz or zstd), the list of
//! them in load order, `/dev/console` and an init script the caller supplies. This is what
//! virtme-ng does with its own generated initramfs.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Errors finding modules or writing the initramfs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `modules.dep` could not be read: no module tree (or no depmod run) at that directory.
    #[error("{}: cannot read modules.dep ({source}): not a kernel module tree (run depmod?)", .dir.display())]
    NoTree {
        /// The tree's directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A module asked for is neither in `modules.dep` nor built in.
    #[error("{}: no module '{name}' (not in modules.dep nor modules.builtin)", .dir.display())]
    NoModule {
        /// The tree's directory.
        dir: PathBuf,
        /// The module's name.
        name: String,
    },
    /// `modules.dep` names a dependency that has no line of its own.
    #[error("{}: modules.dep line {line}: '{text}' is not `PATH: DEPS`", .dir.display())]
    BadDep {
        /// The tree's directory.
        dir: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// A module file (or busybox) could not be read.
    #[error("{}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A compressed module could not be decompressed with the host's tool.
    #[error("{}: decompressing with {tool}: {why}", .path.display())]
    Decompress {
        /// The module.
        path: PathBuf,
        /// The tool (xz, zstd, gzip).
        tool: &'static str,
        /// What went wrong.
        why: String,
    },
    /// A file is too large for a newc entry (4 GiB).
    #[error("{}: too large for an initramfs entry", .0.display())]
    TooLarge(PathBuf),
    /// Writing the archive failed.
    #[error("writing the initramfs: {0}")]
    Write(#[source] std::io::Error),
}

/// One module to load: its name and its file in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// The name `insmod` reports (dashes as underscores).
    pub name: String,
    /// The module file, compressed or not.
    pub path: PathBuf,
}

/// A kernel's module tree, as depmod indexed it.
#[derive(Debug)]
pub struct ModuleTree {
    dir: PathBuf,
    /// Name → (path relative to `dir`, names of every module it needs).
    deps: HashMap<String, (PathBuf, Vec<String>)>,
    builtin: HashSet<String>,
}

/// The module name of a file in the tree: `kernel/fs/fuse/virtiofs.ko.xz` → `virtiofs`, with
/// dashes made underscores as the kernel does.
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

impl ModuleTree {
    /// Reads `DIR/modules.dep` (required) and `DIR/modules.builtin` (optional).
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let text =
            std::fs::read_to_string(dir.join("modules.dep")).map_err(|source| Error::NoTree {
                dir: dir.to_path_buf(),
                source,
            })?;
        let mut deps = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let Some((path, needs)) = line.split_once(':') else {
                return Err(Error::BadDep {
                    dir: dir.to_path_buf(),
                    line: i + 1,
                    text: line.to_string(),
                });
            };
            let needs = needs.split_whitespace().map(module_name).collect();
            deps.insert(module_name(path), (PathBuf::from(path.trim()), needs));
        }
        let builtin = std::fs::read_to_string(dir.join("modules.builtin"))
            .map(|t| t.lines().map(module_name).collect())
            .unwrap_or_default();
        Ok(ModuleTree {
            dir: dir.to_path_buf(),
            deps,
            builtin,
        })
    }

    /// The tree's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `name` is built into the kernel (nothing to load).
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&name.replace('-', "_"))
    }

    /// Whether the tree has `name` as a loadable module.
    pub fn has(&self, name: &str) -> bool {
        self.deps.contains_key(&name.replace('-', "_"))
    }

    /// The modules to load for `names`, each after everything it needs, each once; built-in
    /// ones are skipped. A name that is neither is an error.
    pub fn resolve<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<Module>, Error> {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for name in names {
            let name = name.replace('-', "_");
            if self.builtin.contains(&name) {
                continue;
            }
            self.visit(&name, &mut seen, &mut order)?;
        }
        Ok(order)
    }

    /// Depth-first: dependencies first. `seen` also ends cycles (which depmod refuses anyway).
    fn visit(
        &self,
        name: &str,
        seen: &mut HashSet<String>,
        order: &mut Vec<Module>,
    ) -> Result<(), Error> {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        let Some((path, needs)) = self.deps.get(name) else {
            return Err(Error::NoModule {
                dir: self.dir.clone(),
                name: name.to_string(),
            });
        };
        for dep in needs {
            self.visit(dep, seen, order)?;
        }
        order.push(Module {
            name: name.to_string(),
            path: self.dir.join(path),
        });
        Ok(())
    }
}

/// The kernel release (`uname -r`) of a kernel image: from a `vmlinuz-RELEASE` file name, else
/// the bzImage header's version string, else the `Linux version RELEASE ` banner of an ELF
/// vmlinux.
pub fn kernel_release(kernel: &Path) -> Option<String> {
    if let Some(v) = kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
    {
        return Some(v.to_string());
    }
    let bytes = std::fs::read(kernel).ok()?;
    release_from_bzimage(&bytes).or_else(|| release_from_banner(&bytes))
}

/// The boot protocol's `kernel_version` field (0x20e): an offset, from 0x200, of a
/// NUL-terminated string that starts with the release.
fn release_from_bzimage(bytes: &[u8]) -> Option<String> {
    if bytes.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let off = u16::from_le_bytes(bytes.get(0x20e..0x210)?.try_into().ok()?) as usize + 0x200;
    let text = bytes.get(off..off.checked_add(256)?.min(bytes.len()))?;
    let end = text.iter().position(|&b| b == 0 || b == b' ')?;
    let v = std::str::from_utf8(&text[..end]).ok()?;
    (!v.is_empty()).then(|| v.to_string())
}

/// `Linux version RELEASE (...)`, as in an uncompressed vmlinux's linux_banner.
fn release_from_banner(bytes: &[u8]) -> Option<String> {
    const BANNER: &[u8] = b"Linux version ";
    let at = bytes.windows(BANNER.len()).position(|w| w == BANNER)? + BANNER.len();
    let rest = &bytes[at..bytes.len().min(at + 256)];
    let end = rest.iter().position(|&b| b == b' ' || b == 0)?;
    let v = std::str::from_utf8(&rest[..end]).ok()?;
    (!v.is_empty()).then(|| v.to_string())
}

/// What `vmm run` needs of its kernel, built in or as a module: the option and the module.
const NEEDED: [(&str, &str); 3] = [
    ("CONFIG_VIRTIO_PCI", "virtio_pci"),
    ("CONFIG_VIRTIO_FS", "virtiofs"),
    ("CONFIG_FUSE_FS", "fuse"),
];
/// Needed with a network device.
const NEEDED_NET: (&str, &str) = ("CONFIG_VIRTIO_NET", "virtio_net");
/// Loaded when the kernel has it as a module: a panic then ends the run at once.
const WANTED: (&str, &str) = ("CONFIG_PVPANIC_PCI", "pvpanic_pci");

/// Why a kernel cannot boot `vmm run`'s way.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The kernel's configuration has a needed option neither built in nor as a module.
    #[error(
        "--kernel {}: {option} is {value} in {}, but vmm run needs it built in (y) or as a \
         module (m): {} are needed",
        .kernel.display(), .config.display(), .needed.join(", ")
    )]
    Missing {
        /// The kernel.
        kernel: PathBuf,
        /// Its configuration file.
        config: PathBuf,
        /// The option.
        option: &'static str,
        /// Its value (`not set` when absent).
        value: String,
        /// Every option needed.
        needed: Vec<&'static str>,
    },
    /// Modules are needed but the kernel's release (hence its tree) cannot be found.
    #[error(
        "--kernel {}: it needs modules ({}) but its release cannot be read from it: give \
         --modules DIR", .kernel.display(), .modules.join(", ")
    )]
    NoRelease {
        /// The kernel.
        kernel: PathBuf,
        /// The modules it needs.
        modules: Vec<String>,
    },
    /// The module tree is missing, broken or lacks a module.
    #[error("--modules: {0}")]
    Tree(#[from] Error),
}

/// The kernel's configuration, where a distribution or our build leaves it beside the image:
/// `config-RELEASE` for `vmlinuz-RELEASE` (/boot), or `config` (resources/out/linux).
pub fn kernel_config(kernel: &Path) -> Option<(PathBuf, String)> {
    let dir = kernel.parent()?;
    let name = kernel.file_name()?.to_str()?;
    let candidates = [
        name.strip_prefix("vmlinuz-")
            .map(|v| dir.join(format!("config-{v}"))),
        Some(dir.join("config")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find_map(|p| std::fs::read_to_string(&p).ok().map(|text| (p, text)))
}

/// An option's value in a kernel configuration: `y`, `m`, or `not set`.
fn config_value<'a>(config: &'a str, option: &str) -> &'a str {
    config
        .lines()
        .find_map(|l| l.strip_prefix(option)?.strip_prefix('='))
        .unwrap_or("not set")
}

/// The modules a `vmm run` guest must load before its root can be mounted, in load order
/// (empty: none, boot without an initramfs), from `modules_dir` or `/lib/modules/RELEASE`.
/// With the kernel's configuration at hand, an option that is `m` needs its module and one not
/// set at all refuses the kernel at once, instead of letting it fail to mount its root after a
/// long boot. Without one, every needed module the tree (if there is one) does not list as
/// built in is loaded. `extra` are modules the user asked for; `net` adds virtio-net.
pub fn plan(
    kernel: &Path,
    modules_dir: Option<&Path>,
    extra: &[String],
    net: bool,
) -> Result<Vec<Module>, PlanError> {
    let needed: Vec<(&str, &str)> = NEEDED
        .into_iter()
        .chain(net.then_some(NEEDED_NET))
        .collect();
    let tree_dir = match modules_dir {
        Some(d) => Some(d.to_path_buf()),
        None => kernel_release(kernel).map(|r| Path::new("/lib/modules").join(r)),
    };
    let mut names: Vec<&str> = Vec::new();
    let mut optional: Vec<&str> = Vec::new();
    match kernel_config(kernel) {
        Some((config, text)) => {
            for (option, module) in &needed {
                match config_value(&text, option) {
                    "y" => {}
                    "m" => names.push(module),
                    value => {
                        return Err(PlanError::Missing {
                            kernel: kernel.to_path_buf(),
                            config,
                            option,
                            value: value.to_string(),
                            needed: needed.iter().map(|(o, _)| *o).collect(),
                        })
                    }
                }
            }
            if config_value(&text, WANTED.0) == "m" {
                optional.push(WANTED.1);
            }
        }
        // No configuration: the tree, when there is one, says what is built in.
        None if tree_dir
            .as_deref()
            .is_some_and(|d| d.join("modules.dep").exists()) =>
        {
            names.extend(needed.iter().map(|(_, m)| *m));
            optional.push(WANTED.1);
        }
        None => {}
    }
    names.extend(extra.iter().map(String::as_str));
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let Some(dir) = tree_dir else {
        return Err(PlanError::NoRelease {
            kernel: kernel.to_path_buf(),
            modules: names.iter().map(|n| n.to_string()).collect(),
        });
    };
    let tree = ModuleTree::open(&dir)?;
    names.extend(optional.into_iter().filter(|m| tree.has(m)));
    Ok(tree.resolve(names)?)
}

/// A module's bytes, decompressed by the host's xz, zstd or gzip when its name says so.
fn module_bytes(path: &Path) -> Result<Vec<u8>, Error> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko.xz") {
        Some("xz")
    } else if name.ends_with(".ko.zst") {
        Some("zstd")
    } else if name.ends_with(".ko.gz") {
        Some("gzip")
    } else {
        None
    };
    let Some(tool) = tool else {
        return std::fs::read(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        });
    };
    let out = Command::new(tool)
        .args(["-d", "-c", "--"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Decompress {
            path: path.to_path_buf(),
            tool,
            why: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(Error::Decompress {
            path: path.to_path_buf(),
            tool,
            why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// What goes into the archive besides directories.
enum Content {
    File(Vec<u8>, u32),
    CharDev(u32, u32),
}

/// Writes the initramfs: `/init` (mode 0755, the caller's script), `/bin/busybox` (a copy of
/// `busybox`, which must be static), `/lib/modules/NAME.ko` for each module and `/modules`
/// listing their file names in load order, `/dev/console`, and empty `/newroot`, `/proc`,
/// `/sys`.
pub fn write(out: impl Write, init: &str, busybox: &Path, modules: &[Module]) -> Result<(), Error> {
    let mut entries: Vec<(String, Content)> = Vec::new();
    for dir in ["bin", "dev", "lib", "lib/modules", "newroot", "proc", "sys"] {
        entries.push((dir.to_string(), Content::File(Vec::new(), 0o040755)));
    }
    entries.push(("dev/console".into(), Content::CharDev(5, 1)));
    entries.push((
        "init".into(),
        Content::File(init.as_bytes().to_vec(), 0o100755),
    ));
    let bb = std::fs::read(busybox).map_err(|source| Error::Read {
        path: busybox.to_path_buf(),
        source,
    })?;
    entries.push(("bin/busybox".into(), Content::File(bb, 0o100755)));
    let mut list = String::new();
    for m in modules {
        let file = format!("{}.ko", m.name);
        entries.push((
            format!("lib/modules/{file}"),
            Content::File(module_bytes(&m.path)?, 0o100644),
        ));
        list.push_str(&file);
        list.push('\n');
    }
    entries.push(("modules".into(), Content::File(list.into_bytes(), 0o100644)));

    let mut w = out;
    for (ino, (name, content)) in entries.into_iter().enumerate() {
        let builder = cpio::newc::Builder::new(&name)
            .ino(ino as u32 + 1)
            .uid(0)
            .gid(0)
            .nlink(1);
        w = match content {
            Content::File(bytes, mode) => {
                let len = u32::try_from(bytes.len())
                    .map_err(|_| Error::TooLarge(PathBuf::from(&name)))?;
                let mut f = builder.mode(mode).write(w, len);
                f.write_all(&bytes).map_err(Error::Write)?;
                f.finish().map_err(Error::Write)?
            }
            Content::CharDev(major, minor) => builder
                .mode(0o020600)
                .rdev_major(major)
                .rdev_minor(minor)
                .write(w, 0)
                .finish()
                .map_err(Error::Write)?,
        };
    }
    let mut w = cpio::newc::trailer(w).map_err(Error::Write)?;
    w.flush().map_err(Error::Write)
}

/// Reads an archive back: (name, mode, contents) per entry. For the tests.
#[doc(hidden)]
pub fn read_entries(mut bytes: &[u8]) -> std::io::Result<Vec<(String, u32, Vec<u8>)>> {
    let mut entries = Vec::new();
    loop {
        let mut r = cpio::newc::Reader::new(bytes)?;
        if r.entry().is_trailer() {
            return Ok(entries);
        }
        let (name, mode) = (r.entry().name().to_string(), r.entry().mode());
        let mut data = Vec::new();
        r.read_to_end(&mut data)?;
        entries.push((name, mode, data));
        bytes = r.finish()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A tree shaped like Debian's: virtiofs needs fuse and virtio_ring (compressed with xz),
    /// virtio_pci needs three more, one dashed file name, one built-in module.
    fn tree(test: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("vmm-modtree-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["kernel/fs/fuse", "kernel/drivers/virtio"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let dep = "kernel/fs/fuse/virtiofs.ko.xz: kernel/fs/fuse/fuse.ko kernel/drivers/virtio/virtio_ring.ko\n\
                   kernel/fs/fuse/fuse.ko:\n\
                   kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci-modern-dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
                   kernel/drivers/virtio/virtio_pci-modern-dev.ko: kernel/drivers/virtio/virtio.ko\n\
                   kernel/drivers/virtio/virtio_ring.ko:\n\
                   kernel/drivers/virtio/virtio.ko:\n";
        std::fs::write(dir.join("modules.dep"), dep).unwrap();
        std::fs::write(
            dir.join("modules.builtin"),
            "kernel/drivers/misc/pvpanic/pvpanic-pci.ko\n",
        )
        .unwrap();
        for line in dep.lines() {
            let path = line.split(':').next().unwrap();
            let plain = path.trim_end_matches(".xz");
            std::fs::write(dir.join(plain), format!("ELF {}", module_name(path))).unwrap();
            if path.ends_with(".xz") {
                let st = Command::new("xz").arg(dir.join(plain)).status().unwrap();
                assert!(st.success());
            }
        }
        Dir(dir)
    }

    #[test]
    fn dependencies_load_first_each_once_and_builtins_are_skipped() {
        let t = tree("order");
        let tree = ModuleTree::open(&t.0).unwrap();
        let order: Vec<String> = tree
            .resolve(["virtiofs", "virtio_pci", "pvpanic-pci"])
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(
            order,
            [
                "fuse",
                "virtio_ring",
                "virtiofs",
                "virtio",
                "virtio_pci_modern_dev",
                "virtio_pci"
            ]
        );
        assert!(tree.is_builtin("pvpanic_pci"));
        let e = tree.resolve(["virtio_blk"]).unwrap_err();
        assert!(e.to_string().contains("no module 'virtio_blk'"), "{e}");
    }

    #[test]
    fn the_archive_holds_init_busybox_modules_decompressed_and_the_load_order() {
        let t = tree("archive");
        let tree = ModuleTree::open(&t.0).unwrap();
        let mods = tree.resolve(["virtiofs"]).unwrap();
        let bb = t.0.join("busybox");
        std::fs::write(&bb, b"\x7fELF busybox").unwrap();
        let mut out = Vec::new();
        write(&mut out, "#!/bin/busybox sh\necho hi\n", &bb, &mods).unwrap();
        let entries = read_entries(&out).unwrap();
        let get = |n: &str| {
            entries
                .iter()
                .find(|e| e.0 == n)
                .unwrap_or_else(|| panic!("{n} missing"))
        };
        assert_eq!(get("init").2, b"#!/bin/busybox sh\necho hi\n");
        assert_eq!(get("init").1, 0o100755);
        assert_eq!(get("bin/busybox").2, b"\x7fELF busybox");
        assert_eq!(
            get("lib/modules/virtiofs.ko").2,
            b"ELF virtiofs",
            "xz was decompressed"
        );
        assert_eq!(get("modules").2, b"fuse.ko\nvirtio_ring.ko\nvirtiofs.ko\n");
        assert_eq!(get("dev/console").1, 0o020600);
        assert_eq!(get("newroot").1, 0o040755);
    }

    #[test]
    fn broken_trees_and_modules_are_errors_that_say_where() {
        let t = tree("broken");
        std::fs::write(t.0.join("kernel/fs/fuse/virtiofs.ko.xz"), b"not xz").unwrap();
        let tree = ModuleTree::open(&t.0).unwrap();
        let mods = tree.resolve(["virtiofs"]).unwrap();
        let e = write(Vec::new(), "", Path::new("/bin/sh"), &mods).unwrap_err();
        assert!(matches!(e, Error::Decompress { tool: "xz", .. }), "{e}");
        std::fs::write(t.0.join("modules.dep"), "no colon here\n").unwrap();
        let e = ModuleTree::open(&t.0).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = ModuleTree::open(&t.0.join("nothing")).unwrap_err();
        assert!(matches!(e, Error::NoTree { .. }), "{e}");
    }

    #[test]
    fn releases_come_from_names_headers_and_banners() {
        assert_eq!(
            kernel_release(Path::new("/boot/vmlinuz-6.1.0-27-amd64")).as_deref(),
            Some("6.1.0-27-amd64")
        );
        let mut bz = vec![0u8; 0x1000];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        bz[0x500..0x520].copy_from_slice(b"6.1.192 (root@x) #1 SMP\0\0\0\0\0\0\0\0\0");
        assert_eq!(release_from_bzimage(&bz).as_deref(), Some("6.1.192"));
        let elf = b"\x7fELF....Linux version 6.1.192-pvm (gcc) #1\0";
        assert_eq!(release_from_banner(elf).as_deref(), Some("6.1.192-pvm"));
        assert_eq!(release_from_bzimage(elf), None);
    }
}
