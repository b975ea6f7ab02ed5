#!/usr/bin/env bash
# Builds the PVM test kernel: Linux 6.1 from Debian's linux-source-6.1, `make tinyconfig` plus
# config.fragment, with patches/*.patch applied (each names the PVM emulator gap it avoids).
#
#   resources/kernel/build.sh [OUT_DIR]     (default OUT_DIR: resources/out/linux)
#   resources/kernel/build.sh --check       exit 0 if the cached build is valid and would be
#                                           used, 1 if it would be (re)built; builds nothing
#
# Writes OUT_DIR/vmlinux (the ELF, booted through its PVH entry), OUT_DIR/bzImage,
# OUT_DIR/config and OUT_DIR/modules/lib/modules/VERSION (the few modules config.fragment
# builds, installed with depmod's indexes: `vmm run --modules` loads them from there). The build is cached outside the clone, in
# ${VMM_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/vmm}/linux-pvm/KEY, where KEY hashes the
# fragment, the patches, the source package's version and recipe_version below: a recipe
# change rebuilds, anything else reuses. A cached build is used only when its files match the
# checksums written at the end of that build; a missing or corrupt one is rebuilt.
# A cold build takes about 7 minutes on this project's 2-core machines.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
check_only=0
if [ "${1:-}" = --check ]; then check_only=1; shift; fi
out="${1:-$here/../out/linux}"
cache_root="${VMM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmm}/linux-pvm"
src_pkg=linux-source-6.1
build_deps=(gcc make bc flex bison libelf-dev xz-utils patch lz4 kmod)

say() { echo "kernel: $*"; }
die() { echo "kernel: $*" >&2; exit 1; }

# shellcheck source=resources/kernel/recipe.sh
. "$here/recipe.sh"
recipe_packages

# The cache key: what decides the kernel's bytes. Bump recipe_version when the build steps
# below change (comments and progress output do not count).
recipe_version=2
recipe_key
artifacts=(vmlinux bzImage config modules.sha256)

# The module tree beside the artifacts (install_out, recipe.sh), replaced whole when it differs.
install_more() {
    if ! cmp -s "$cache/modules.sha256" "$out/modules/.sha256" 2>/dev/null; then
        rm -rf "$out/modules.tmp" "$out/modules"
        cp -a "$cache/modules" "$out/modules.tmp"
        cp "$cache/modules.sha256" "$out/modules.tmp/.sha256"
        mv "$out/modules.tmp" "$out/modules"
    fi
}

recipe_cached "$check_only"
recipe_workdir
say "building $key from $src_pkg $src_version (cold build: about 7 minutes; log: $work/build.log)"
recipe_tree "$work"
recipe_config tinyconfig "$work/build.log"
recipe_make "$work/build.log" "$start" vmlinux bzImage modules

staged="$work/out"
mkdir -p "$staged"
cp "$tree/vmlinux" "$staged/vmlinux"
cp "$tree/arch/x86/boot/bzImage" "$staged/bzImage"
cp "$tree/.config" "$staged/config"
make -C "$tree" -s INSTALL_MOD_PATH="$staged/modules" modules_install >> "$work/build.log" 2>&1 \
    || { tail -n 20 "$work/build.log" >&2; die "make modules_install failed"; }
# The links back into the (deleted) source tree would dangle.
find "$staged/modules" -maxdepth 4 -type l \( -name build -o -name source \) -delete
(cd "$staged" && find modules -type f | LC_ALL=C sort | xargs -r sha256sum > modules.sha256)
(cd "$staged" && sha256sum "${artifacts[@]}" > SHA256SUMS && cat modules.sha256 >> SHA256SUMS)
recipe_store "$staged"
say "built $key in $((SECONDS - start)) s"
install_out
