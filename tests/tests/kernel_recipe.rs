//! The PVM test kernel's cache (resources/kernel/build.sh): a cached build is used only when
//! its files match the checksums written when it was built; a missing or corrupt file means a
//! rebuild. Checked with `build.sh --check` on a copy of the cache, so nothing is rebuilt here.

use std::path::{Path, PathBuf};

use vmm_tests::TempDir;

fn cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("VMM_CACHE_DIR") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
    base.join("vmm")
}

/// `build.sh --check` with the cache at `cache`: (exit code, output).
fn check(cache: &Path) -> (i32, String) {
    vmm_tests::recipe_check("resources/kernel/build.sh", cache)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn a_missing_or_corrupt_cached_kernel_is_not_used() {
    let key = std::fs::read_to_string(vmm_tests::guest::built("linux/key")).unwrap();
    let real = cache_root().join("linux-pvm").join(key.trim());
    assert!(
        real.join("SHA256SUMS").exists(),
        "{} has no cached build: run resources/setup.sh",
        real.display()
    );
    let (code, text) = check(&cache_root());
    assert_eq!(code, 0, "the real cache is valid: {text}");

    let tmp = TempDir::new("kc");
    let copy = tmp.path().join("linux-pvm").join(key.trim());
    copy_dir(&real, &copy);
    vmm_tests::assert_cache_refuses_damage(&copy, "vmlinux", "bzImage", || check(tmp.path()));
}
