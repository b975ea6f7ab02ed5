#!/usr/bin/env bash
# Builds the desktop sandbox: a Debian 12 root file system from Debian's packages
# (mmdebstrap), with Debian's cloud kernel extracted next to it so `vmm` needs nothing else.
#
#   resources/images/sandbox.sh [OUT_DIR]    (default OUT_DIR: resources/out/sandbox)
#   resources/images/sandbox.sh --check      exit 0 if the cached build is valid and would be
#                                            used, 1 if it would be (re)built; builds nothing
#   VMM_SANDBOX_MODE=root|unshare            mmdebstrap's mode (default: root when run as
#                                            root, else unshare). As non-root, unshare needs
#                                            unprivileged user namespaces, newuidmap (uidmap)
#                                            and your ranges in /etc/subuid and /etc/subgid;
#                                            the image is then made in such a namespace too
#
# Writes OUT_DIR/rootfs.img (raw ext4, 4 GiB sparse, label `sandbox`), OUT_DIR/vmlinuz and
# OUT_DIR/initrd.img (the image's own /boot/vmlinuz and /boot/initrd.img), OUT_DIR/key.
# The system: systemd on ttyS0 with a getty (root logs in without a password: it is a local
# sandbox; so does the user `sandbox`), systemd-networkd leasing the first NIC by DHCP
# (libslirp's 10.0.2.15) with systemd-resolved for DNS, sshd (host keys made at first boot),
# the root on /dev/vda and the virtio-fs tag `src` mounted at /mnt/src when there is one.
#
# rootfs.img is the sandbox's writable disk: once installed it is never overwritten while the
# cached build it came from is current; delete it to get a fresh one. The build is cached
# outside the clone, in ${VMM_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/vmm}/sandbox/KEY, where
# KEY hashes the suite, the package list, the customization below and recipe_version; the
# cached image is compact (it is grown to 4 GiB when installed) and used only when its files
# match the checksums written at the end of its build. A mirror update alone does not
# rebuild: delete the cache directory for newer packages. A cold build takes about 2 minutes
# on this project's 2-core machines (most of it downloading and installing ~200 packages).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
check_only=0
if [ "${1:-}" = --check ]; then check_only=1; shift; fi
out="${1:-$here/out/sandbox}"
cache_root="${VMM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmm}/sandbox"
size=4G

say() { echo "sandbox: $*"; }
die() { echo "sandbox: $*" >&2; exit 1; }

suite=bookworm
mirror=http://deb.debian.org/debian
variant=minbase
packages=(systemd-sysv udev systemd-resolved dbus linux-image-cloud-amd64 initramfs-tools
          iproute2 iputils-ping procps openssh-server less)

# Run in the chroot after the packages are installed (as root there, whatever the mode).
# shellcheck disable=SC2016  # expanded by the hook's shell, not here
customize='set -e
r="$1"
echo sandbox > "$r/etc/hostname"
printf "127.0.0.1 localhost\n127.0.1.1 sandbox\n::1 localhost ip6-localhost ip6-loopback\n" > "$r/etc/hosts"
printf "/dev/vda / ext4 rw,errors=remount-ro 0 1\nsrc /mnt/src virtiofs nofail 0 0\n" > "$r/etc/fstab"
mkdir -p "$r/mnt/src"
# DHCP on the first NIC, whatever the kernel names it.
printf "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n" > "$r/etc/systemd/network/20-dhcp.network"
chroot "$r" systemctl enable systemd-networkd.service systemd-resolved.service
chroot "$r" systemctl mask systemd-networkd-wait-online.service
ln -sf ../run/systemd/resolve/stub-resolv.conf "$r/etc/resolv.conf"
# No passwords: a local sandbox.
chroot "$r" passwd -d root
chroot "$r" useradd -m -s /bin/bash sandbox
chroot "$r" passwd -d sandbox
# Every image gets its own ssh host keys, made at its first boot.
rm -f "$r"/etc/ssh/ssh_host_*
printf "[Unit]\nDescription=ssh host keys\nBefore=ssh.service\nConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n\n[Service]\nType=oneshot\nExecStart=/usr/bin/ssh-keygen -A\n\n[Install]\nWantedBy=ssh.service\n" > "$r/etc/systemd/system/ssh-keygen.service"
chroot "$r" systemctl enable ssh-keygen.service
: > "$r/etc/machine-id"
rm -f "$r/var/lib/dbus/machine-id"
'

# The cache key: what decides the image's contents. Bump recipe_version when the build steps
# below change (comments and progress output do not count).
recipe_version=1
key="$( { echo "recipe $recipe_version, $suite $variant $mirror"; echo "${packages[*]}"
          echo "$customize"; } | sha256sum | cut -c1-16)"
cache="$cache_root/$key"
artifacts=(rootfs.img vmlinuz initrd.img)

cache_valid() {
    [ -f "$cache/SHA256SUMS" ] || return 1
    (cd "$cache" && sha256sum --quiet --strict -c SHA256SUMS >/dev/null 2>&1) || return 1
    local f
    for f in "${artifacts[@]}"; do grep -q " $f\$" "$cache/SHA256SUMS" || return 1; done
}

# Up to date: the installed files came from this key. rootfs.img is the user's disk from then
# on (it changes as the sandbox runs), so it is not compared with the cache.
out_current() {
    [ "$(cat "$out/key" 2>/dev/null)" = "$key" ] && [ -f "$out/rootfs.img" ] \
        && cmp -s "$cache/vmlinuz" "$out/vmlinuz" && cmp -s "$cache/initrd.img" "$out/initrd.img"
}

install_out() {
    mkdir -p "$out"
    local f
    for f in vmlinuz initrd.img; do
        cp "$cache/$f" "$out/$f.tmp"
        mv -f "$out/$f.tmp" "$out/$f"
    done
    if [ "$(cat "$out/key" 2>/dev/null)" != "$key" ] || [ ! -f "$out/rootfs.img" ]; then
        [ -f "$out/rootfs.img" ] && say "replacing $out/rootfs.img (built by another recipe)"
        cp --sparse=always "$cache/rootfs.img" "$out/rootfs.img.tmp"
        truncate -s "$size" "$out/rootfs.img.tmp"
        e2fsck -fp "$out/rootfs.img.tmp" >/dev/null || die "e2fsck of the new image failed"
        resize2fs -f "$out/rootfs.img.tmp" >/dev/null 2>&1 || die "resize2fs to $size failed"
        mv -f "$out/rootfs.img.tmp" "$out/rootfs.img"
    fi
    echo "$key" > "$out/key"
    # Marks the build as used: other recipes' builds are removed once unused for a week.
    touch "$cache"
    say "$out: rootfs.img ($size sparse, $(du -h "$out/rootfs.img" | cut -f1) used), vmlinuz, initrd.img"
}

if [ $check_only = 1 ]; then
    if cache_valid; then say "cached build $key is valid: $cache"; exit 0; fi
    say "cached build $key is missing, incomplete or corrupt: it would be built"
    exit 1
fi
if out_current; then
    say "$out is up to date ($key)"
    exit 0
fi
if cache_valid; then
    say "cached build $key in $cache"
    install_out
    exit 0
fi
[ -d "$cache" ] && say "cached build $key is incomplete or corrupt: rebuilding"

mode="${VMM_SANDBOX_MODE:-$([ "$(id -u)" = 0 ] && echo root || echo unshare)}"
case "$mode" in
    root) [ "$(id -u)" = 0 ] || die "VMM_SANDBOX_MODE=root needs root" ;;
    unshare) ;;
    *) die "VMM_SANDBOX_MODE must be root or unshare, not '$mode'" ;;
esac
# The tools, installed when missing (as root only).
need=(mmdebstrap e2fsprogs)
[ "$(id -u)" = 0 ] || need+=(uidmap)
missing=()
for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing Debian packages: ${missing[*]} (apt-get install them)"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
        || die "cannot install ${missing[*]}"
fi

mkdir -p "$cache_root"
work="$(mktemp -d "$cache_root/build.XXXXXX")"
# As non-root the extracted tree belongs to subordinate ids: remove it from inside.
as_ids() { if [ "$(id -u)" = 0 ]; then "$@"; else unshare --map-root-user --map-auto "$@"; fi; }
cleanup() {
    if [ "$(id -u)" != 0 ] && [ -d "$work/root" ]; then
        unshare --map-root-user --map-auto rm -rf "$work/root" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
start=$SECONDS
log="$work/build.log"
# fail WHAT: one line naming the log's last error, the log kept beside the cache.
fail() {
    cp "$log" "$cache_root/failed-build.log" 2>/dev/null || true
    local why
    why="$(grep -E '^(E: |[a-z0-9.]+: )' "$log" | tail -n 1 | cut -c1-160)"
    die "$1${why:+: $why} (log: $cache_root/failed-build.log)"
}
say "building $key: Debian $suite ($variant + ${#packages[@]} packages, mmdebstrap --mode=$mode; cold build: about 2 minutes; log: $log)"
printf '%s\n' "$customize" > "$work/customize.sh"
chmod 0755 "$work" "$work/customize.sh"
mmdebstrap --mode="$mode" --variant="$variant" --include="$(IFS=,; echo "${packages[*]}")" \
    --customize-hook="sh $work/customize.sh \"\$1\"" \
    "$suite" "$work/rootfs.tar" "$mirror" > "$log" 2>&1 &
pid=$!
# Progress on stdout every 30 s: the build takes minutes.
while kill -0 "$pid" 2>/dev/null; do
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null \
        && say "$(grep -E '^I: ' "$log" | tail -n 1 | cut -c4-80), $((SECONDS - start)) s"
done
wait "$pid" || fail "mmdebstrap failed"
say "packages installed in $((SECONDS - start)) s; making the ext4 image"

# The tar keeps owners and modes; the file system is populated from a directory
# (mkfs.ext4 -d): no loop mount, so it works in containers. In unshare mode that runs in a
# user namespace mapping root and the subordinate ids, as mmdebstrap's did.
staged="$work/out"
mkdir -p "$staged"
# shellcheck disable=SC2016  # expanded by the inner shell
mkimage='set -e
work="$1"; staged="$2"
mkdir "$work/root"
tar -C "$work/root" --numeric-owner --xattrs --xattrs-include="*" -xpf "$work/rootfs.tar"
rm -f "$work/rootfs.tar"
# Which build this is (the tests read it back from a guest booted on the image).
echo "$3" > "$work/root/etc/vmm-sandbox"
cp "$work/root/boot/vmlinuz-"* "$staged/vmlinuz"
cp "$work/root/boot/initrd.img-"* "$staged/initrd.img"
chmod 0644 "$staged/vmlinuz" "$staged/initrd.img"
# Compact: the data plus a quarter and 64 MiB; install_out grows it.
kib=$(du -sk "$work/root" | cut -f1)
mkfs.ext4 -q -F -L sandbox -b 4096 -i 8192 -d "$work/root" "$staged/rootfs.img" "$((kib * 5 / 4 + 65536))k"
rm -rf "$work/root"
'
as_ids sh -c "$mkimage" sh "$work" "$staged" "$key" >> "$log" 2>&1 || fail "making the ext4 image failed"
e2fsck -fn "$staged/rootfs.img" >> "$log" 2>&1 || fail "the new image does not pass e2fsck"
(cd "$staged" && sha256sum "${artifacts[@]}" > SHA256SUMS)
rm -rf "$cache"
mv "$staged" "$cache"
# Builds of other recipes (another branch's worktree may still use one) go once a week unused.
find "$cache_root" -mindepth 1 -maxdepth 1 -type d ! -name "$key" ! -name "build.*" -mtime +7 \
    -exec rm -rf {} +
say "built $key in $((SECONDS - start)) s ($(du -h "$cache/rootfs.img" | cut -f1) image)"
install_out
