#!/usr/bin/env bash
# Builds the UML test guest's initramfs from Debian packages:
#   resources/out/uml/initramfs.cpio.gz
# busybox-static, iperf3 and its libraries, UML's virtio_net.ko (with failover, net_failover),
# resources/guest/init. The kernel is Debian's /usr/bin/linux.uml itself.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
source "$here/images/lib.sh"
img="$here/out/uml/initramfs.cpio.gz"

kver="$(ls /usr/lib/uml/modules | sort -V | tail -n 1)"
moddir="/usr/lib/uml/modules/$kver/kernel"
mods=("$moddir/net/core/failover.ko" "$moddir/drivers/net/net_failover.ko"
      "$moddir/drivers/net/virtio_net.ko")
if ! is_stale "$img" "$here/guest/init" "$here/images/lib.sh" "$0" /bin/busybox \
        /usr/bin/iperf3 "${mods[@]}"; then
    echo "uml-guest: $img is up to date"
    exit 0
fi
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
make_root "$root"
add_modules "$root" "${mods[@]}"
pack "$root" "$img"
echo "uml-guest: built $img ($(du -h "$img" | cut -f1), UML $kver)"
