#!/usr/bin/env bash
# Builds the UML guests' kernel: Linux 6.1 from Debian's linux-source-6.1 for ARCH=um,
# `make defconfig` plus config.fragment, with patches/*.patch applied (each says what it mends).
# Debian's own /usr/bin/linux.uml (6.1) cannot run on a CPU whose XSAVE area is larger than
# 2696 bytes (AMX): every UML process dies at its first system call; this one can.
#
#   resources/uml/build.sh [OUT_DIR]     (default OUT_DIR: resources/out/uml)
#   resources/uml/build.sh --check       exit 0 if the cached build is valid and would be used,
#                                        1 if it would be (re)built; builds nothing
#
# Writes OUT_DIR/linux (the UML kernel, an ordinary host program) and OUT_DIR/config. The
# build is cached outside the clone, in ${VMM_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/vmm}/uml/KEY,
# where KEY hashes the fragment, the patches, the source package's version and recipe_version
# below: a recipe change rebuilds, anything else reuses. A cached build is used only when its
# files match the checksums written at the end of that build; a missing or corrupt one is
# rebuilt. A cold build takes about 2.5 minutes on this project's 2-core machines.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
check_only=0
if [ "${1:-}" = --check ]; then check_only=1; shift; fi
out="${1:-$here/../out/uml}"
cache_root="${VMM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmm}/uml"
src_pkg=linux-source-6.1
# libvdeplug-dev: UML's vde transport links libvdeplug.
build_deps=(gcc make bc flex bison xz-utils patch libvdeplug-dev)

say() { echo "uml-kernel: $*"; }
die() { echo "uml-kernel: $*" >&2; exit 1; }

# shellcheck source=resources/kernel/recipe.sh
. "$here/../kernel/recipe.sh"
recipe_packages

# The cache key: what decides the kernel's bytes. Bump recipe_version when the build steps
# below change (comments and progress output do not count).
recipe_version=1
recipe_key
artifacts=(linux config)

recipe_cached "$check_only"
recipe_workdir
say "building $key from $src_pkg $src_version (cold build: about 2.5 minutes; log: $work/build.log)"
recipe_tree "$work"
export ARCH=um
recipe_config defconfig "$work/build.log"
recipe_make "$work/build.log" "$start" linux

staged="$work/out"
mkdir -p "$staged"
cp "$tree/linux" "$staged/linux"
cp "$tree/.config" "$staged/config"
(cd "$staged" && sha256sum "${artifacts[@]}" > SHA256SUMS)
recipe_store "$staged"
say "built $key in $((SECONDS - start)) s"
install_out
