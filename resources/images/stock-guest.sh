#!/usr/bin/env bash
# Builds the stock Linux guest from Debian's packages:
#   resources/out/stock/vmlinuz          Debian's linux-image-cloud-amd64 bzImage
#   resources/out/stock/initramfs.cpio.gz  busybox-static, iperf3, the kernel's virtio-pci and
#                                        virtio-net modules, vmexit, resources/guest/init
#   resources/out/stock/config           the kernel's configuration (its /boot/config-*)
#   resources/out/stock/modules/RELEASE  its module tree with depmod's indexes, which `vmm run`
#                                        builds its initramfs from (tests/tests/stock_run.rs)
# The cloud kernel builds virtio, virtio_pci and virtio_net as modules and finds virtio devices
# over PCI, like any distribution kernel.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
source "$here/images/lib.sh"
out="$here/out/stock"
img="$out/initramfs.cpio.gz"
if ! is_stale "$img" "$here/guest/init" "$here/guest/vmexit.c" "$here/images/lib.sh" "$0" \
        && [ -f "$out/vmlinuz" ] && [ -f "$out/config" ] \
        && compgen -G "$out/modules/*/modules.dep" >/dev/null; then
    echo "stock-guest: $out is up to date"
    exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
pkg="$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/.*Depends: \(linux-image-[^ ]*\)/\1/p' | head -n 1)"
[ -n "$pkg" ] || { echo "stock-guest: cannot resolve linux-image-cloud-amd64 (apt-get update?)" >&2; exit 1; }
(cd "$work" && apt-get download -q "$pkg" >/dev/null 2>&1) || { echo "stock-guest: apt-get download $pkg failed" >&2; exit 1; }
dpkg-deb -x "$work"/linux-image-*.deb "$work/pkg"
kver="$(ls "$work/pkg/lib/modules")"
k="$work/pkg/lib/modules/$kver/kernel"
mkdir -p "$out"
cp "$work/pkg/boot/vmlinuz-$kver" "$out/vmlinuz"
cp "$work/pkg/boot/config-$kver" "$out/config"
# The package ships no modules.dep: its postinst runs depmod.
command -v depmod >/dev/null || apt-get install -y -qq kmod >/dev/null
depmod -b "$work/pkg" "$kver"
rm -rf "$out/modules"
mkdir -p "$out/modules"
cp -a "$work/pkg/lib/modules/$kver" "$out/modules/$kver"

root="$work/root"
make_root "$root"
add_modules "$root" "$k/drivers/virtio/virtio.ko" "$k/drivers/virtio/virtio_ring.ko" \
    "$k/drivers/virtio/virtio_pci_modern_dev.ko" "$k/drivers/virtio/virtio_pci_legacy_dev.ko" \
    "$k/drivers/virtio/virtio_pci.ko" "$k/net/core/failover.ko" \
    "$k/drivers/net/net_failover.ko" "$k/drivers/net/virtio_net.ko"
gcc -static -O2 -o "$root/bin/vmexit" "$here/guest/vmexit.c"
pack "$root" "$img"
echo "$kver" > "$out/version"
echo "stock-guest: built $out/vmlinuz ($kver) and $img ($(du -h "$img" | cut -f1))"
