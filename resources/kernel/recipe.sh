# Shared by the kernel recipes, resources/kernel/build.sh (the PVM test kernel) and
# resources/uml/build.sh (the UML guests' kernel); sourced, not run. Both build Linux from
# Debian's linux-source-6.1 with a config fragment and patches, cached outside the clone by a
# key of what decides the kernel's bytes. The sourcing script sets, before calling these:
#   here            its own directory (config.fragment and patches/ are there)
#   src_pkg         the Debian source package
#   build_deps      the Debian packages the build needs
#   recipe_version  bumped when its build steps change
#   artifacts       the files a valid cached build holds (checked against its SHA256SUMS)
#   cache_root      where its builds are cached
# and defines say and die (messages prefixed with its name), and install_more where it installs
# more than its artifacts (see install_out).

# recipe_packages: installs the source package and the build tools that are missing; sets
# src_version and tarball.
recipe_packages() {
    local missing=() p
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
}

# recipe_key: sets key (a hash of the recipe version, the source package's version, the
# fragment and the patches) and cache (that build's directory).
recipe_key() {
    key="$( { echo "recipe $recipe_version, $src_pkg $src_version"; cat "$here/config.fragment" \
              "$here"/patches/*.patch; } | sha256sum | cut -c1-16)"
    cache="$cache_root/$key"
}

# cache_valid: the cached build is complete and its files match their checksums.
cache_valid() {
    [ -f "$cache/SHA256SUMS" ] || return 1
    (cd "$cache" && sha256sum --quiet --strict -c SHA256SUMS >/dev/null 2>&1) || return 1
    local f
    for f in "${artifacts[@]}"; do grep -q " $f\$" "$cache/SHA256SUMS" || return 1; done
}

# install_out: the cached build's artifacts into out (each replaced only where it differs),
# then what the recipe's install_more adds, then out/key; marks the build as used (other
# recipes' builds are removed once unused for a week, see recipe_store).
install_out() {
    mkdir -p "$out"
    local f
    for f in "${artifacts[@]}"; do
        cmp -s "$cache/$f" "$out/$f" 2>/dev/null && continue
        cp "$cache/$f" "$out/$f.tmp"
        mv -f "$out/$f.tmp" "$out/$f"
    done
    if declare -F install_more >/dev/null; then install_more; fi
    echo "$key" > "$out/key"
    touch "$cache"
}

# recipe_cached CHECK_ONLY: with CHECK_ONLY 1 (`--check`), exits 0 if the cached build is valid
# and 1 if it would be built. Otherwise a valid cached build is installed (install_out) and
# the recipe ends there; else this returns and the recipe builds.
recipe_cached() {
    if [ "$1" = 1 ]; then
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
    return 0
}

# recipe_workdir: a fresh build directory under the cache root, removed when the recipe
# exits; sets work and start ($SECONDS now).
recipe_workdir() {
    mkdir -p "$cache_root"
    work="$(mktemp -d "$cache_root/build.XXXXXX")"
    # shellcheck disable=SC2064 # the directory is fixed now
    trap "rm -rf '$work'" EXIT
    start=$SECONDS
}

# recipe_tree WORK: unpacks the source into WORK and applies patches/*.patch; sets tree.
recipe_tree() {
    local work="$1" p
    tar -xf "$tarball" -C "$work"
    tree="$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'linux-source-*' | head -n 1)"
    [ -n "$tree" ] || die "no source tree in $tarball"
    for p in "$here"/patches/*.patch; do
        patch -d "$tree" -p1 --quiet --forward < "$p" > "$work/patch.log" 2>&1 \
            || { cat "$work/patch.log" >&2; die "patch $(basename "$p") does not apply to $src_version"; }
    done
}

# recipe_config BASE LOG: `make BASE` (tinyconfig, defconfig), config.fragment merged on top,
# olddefconfig; dies unless every option the fragment sets or unsets survived.
recipe_config() {
    local base="$1" log="$2" line opt bad=0
    make -C "$tree" -s "$base" > "$log" 2>&1 || { tail -n 20 "$log" >&2; die "make $base failed"; }
    "$tree/scripts/kconfig/merge_config.sh" -m -O "$tree" "$tree/.config" "$here/config.fragment" \
        >> "$log" 2>&1 || die "merging config.fragment failed (see $log)"
    make -C "$tree" -s olddefconfig >> "$log" 2>&1 || die "make olddefconfig failed"
    while IFS= read -r line; do
        case "$line" in
            CONFIG_*=*) grep -qxF "$line" "$tree/.config" || { say "config.fragment: '$line' did not take (missing dependency?)" >&2; bad=1; } ;;
            "# CONFIG_"*" is not set") opt="${line#\# }"; opt="${opt%% *}"
                grep -q "^$opt=" "$tree/.config" && { say "config.fragment: '$opt' is still set" >&2; bad=1; } ;;
        esac
    done < "$here/config.fragment"
    [ $bad = 0 ] || die "the configuration is not what config.fragment asks for"
}

# recipe_make LOG START TARGET...: builds the targets on every CPU, saying every 30 s how far
# it got (the build takes minutes); START is when the recipe began ($SECONDS).
recipe_make() {
    local log="$1" start="$2" make_pid
    shift 2
    make -C "$tree" -j"$(nproc)" "$@" >> "$log" 2>&1 &
    make_pid=$!
    while kill -0 "$make_pid" 2>/dev/null; do
        for _ in $(seq 30); do kill -0 "$make_pid" 2>/dev/null || break; sleep 1; done
        kill -0 "$make_pid" 2>/dev/null && say "$(grep -cE '^  (CC|AS|LD|AR)' "$log") objects built, $((SECONDS - start)) s"
    done
    wait "$make_pid" || { tail -n 30 "$log" >&2; die "the kernel build failed"; }
}

# recipe_store STAGED: STAGED (its files checksummed in SHA256SUMS) becomes the cached build;
# builds of other recipes (another branch's worktree may still use one) go once a week unused.
recipe_store() {
    rm -rf "$cache"
    mv "$1" "$cache"
    find "$cache_root" -mindepth 1 -maxdepth 1 -type d ! -name "$key" ! -name "build.*" -mtime +7 \
        -exec rm -rf {} +
}
