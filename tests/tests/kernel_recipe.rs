//! The PVM test kernel's cache (resources/kernel/build.sh): a cached build is used only when
//! its files match the checksums written when it was built; a missing or corrupt file means a
//! rebuild. Checked with `build.sh --check` on a copy of the cache, so nothing is rebuilt here.

use std::path::Path;

use vmm_tests::TempDir;

/// `build.sh --check` with the cache at `cache`: (exit code, output).
const RECIPE: &str = "resources/kernel/build.sh";

fn check(cache: &Path) -> (i32, String) {
    vmm_tests::recipe_check(RECIPE, cache)
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
    let real = vmm_tests::valid_cached_build(RECIPE, "linux-pvm", key.trim());

    let tmp = TempDir::new("kc");
    let copy = tmp.path().join("linux-pvm").join(key.trim());
    copy_dir(&real, &copy);
    vmm_tests::assert_cache_refuses_damage(&copy, "vmlinux", "bzImage", || check(tmp.path()));
}
