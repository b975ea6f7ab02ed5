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

# The source package and the build tools, installed when missing.
missing=()
for p in "$src_pkg" "${build_deps[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "cannot install ${missing[*]}"
fi
src_version="$(dpkg-query -W -f='${Version}' "$src_pkg")"
tarball="$(dpkg-query -L "$src_pkg" | grep -E '/linux-source-[0-9.]+\.tar\.xz$' | head -n 1)"
[ -f "$tarball" ] || die "$src_pkg $src_version is installed but its tarball is missing"

# The cache key: what decides the kernel's bytes. Bump recipe_version when the build steps
# below change (comments and progress output do not count).
recipe_version=2
key="$( { echo "recipe $recipe_version, $src_pkg $src_version"; cat "$here/config.fragment" \
          "$here"/patches/*.patch; } | sha256sum | cut -c1-16)"
cache="$cache_root/$key"
artifacts=(vmlinux bzImage config modules.sha256)

cache_valid() {
    [ -f "$cache/SHA256SUMS" ] || return 1
    (cd "$cache" && sha256sum --quiet --strict -c SHA256SUMS >/dev/null 2>&1) || return 1
    local f
    for f in "${artifacts[@]}"; do grep -q " $f\$" "$cache/SHA256SUMS" || return 1; done
}

install_out() {
    mkdir -p "$out"
    local f
    for f in "${artifacts[@]}"; do
        cmp -s "$cache/$f" "$out/$f" 2>/dev/null && continue
        cp "$cache/$f" "$out/$f.tmp"
        mv -f "$out/$f.tmp" "$out/$f"
    done
    if ! cmp -s "$cache/modules.sha256" "$out/modules/.sha256" 2>/dev/null; then
        rm -rf "$out/modules.tmp" "$out/modules"
        cp -a "$cache/modules" "$out/modules.tmp"
        cp "$cache/modules.sha256" "$out/modules.tmp/.sha256"
        mv "$out/modules.tmp" "$out/modules"
    fi
    echo "$key" > "$out/key"
    # Marks the build as used: other recipes' builds are removed once unused for a week.
    touch "$cache"
}

if [ $check_only = 1 ]; then
    if cache_valid; then say "cached build $key is valid: $cache"; exit 0; fi
    say "cached build $key is missing, incomplete or corrupt: it would be built"
    exit 1
fi
if cache_valid; then
    say "cached build $key ($src_pkg $src_version) in $cache"
    install_out
    exit 0
fi
[ -d "$cache" ] && say "cached build $key is incomplete or corrupt: rebuilding"

mkdir -p "$cache_root"
work="$(mktemp -d "$cache_root/build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
start=$SECONDS
say "building $key from $src_pkg $src_version (cold build: about 7 minutes; log: $work/build.log)"
tar -xf "$tarball" -C "$work"
tree="$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'linux-source-*' | head -n 1)"
[ -n "$tree" ] || die "no source tree in $tarball"
for p in "$here"/patches/*.patch; do
    patch -d "$tree" -p1 --quiet --forward < "$p" > "$work/patch.log" 2>&1 \
        || { cat "$work/patch.log" >&2; die "patch $(basename "$p") does not apply to $src_version"; }
done

make -C "$tree" -s tinyconfig > "$work/build.log" 2>&1 || { tail -n 20 "$work/build.log" >&2; die "make tinyconfig failed"; }
"$tree/scripts/kconfig/merge_config.sh" -m -O "$tree" "$tree/.config" "$here/config.fragment" \
    >> "$work/build.log" 2>&1 || die "merging config.fragment failed (see $work/build.log)"
make -C "$tree" -s olddefconfig >> "$work/build.log" 2>&1 || die "make olddefconfig failed"
# Every option the fragment asks for must have survived olddefconfig.
bad=0
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*) grep -qxF "$line" "$tree/.config" || { echo "kernel: config.fragment: '$line' did not take (missing dependency?)" >&2; bad=1; } ;;
        "# CONFIG_"*" is not set") opt="${line#\# }"; opt="${opt%% *}"
            grep -q "^$opt=" "$tree/.config" && { echo "kernel: config.fragment: '$opt' is still set" >&2; bad=1; } ;;
    esac
done < "$here/config.fragment"
[ $bad = 0 ] || die "the configuration is not what config.fragment asks for"

# Progress on stdout every 30 s: the build takes minutes.
make -C "$tree" -j"$(nproc)" vmlinux bzImage modules >> "$work/build.log" 2>&1 &
make_pid=$!
while kill -0 "$make_pid" 2>/dev/null; do
    for _ in $(seq 30); do kill -0 "$make_pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$make_pid" 2>/dev/null && say "$(grep -cE '^  (CC|AS|LD|AR)' "$work/build.log") objects built, $((SECONDS - start)) s"
done
wait "$make_pid" || { tail -n 30 "$work/build.log" >&2; die "the kernel build failed"; }

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
rm -rf "$cache"
mv "$staged" "$cache"
# Builds of other recipes (another branch's worktree may still use one) go once a week unused.
find "$cache_root" -mindepth 1 -maxdepth 1 -type d ! -name "$key" ! -name "build.*" -mtime +7 \
    -exec rm -rf {} +
say "built $key in $((SECONDS - start)) s"
install_out
