#!/usr/bin/env bash
# Builds the UML test guest: its kernel (resources/uml/build.sh, cached by its recipe) into
# resources/out/uml/linux, and its initramfs from Debian packages:
#   resources/out/uml/initramfs.cpio.gz
# busybox-static, iperf3 and its libraries, resources/guest/init. The kernel has virtio_net
# built in, so the initramfs carries no modules.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
source "$here/images/lib.sh"
bash "$here/uml/build.sh"
img="$here/out/uml/initramfs.cpio.gz"

if ! is_stale "$img" "$here/guest/init" "$here/images/lib.sh" "$0" /bin/busybox \
        /usr/bin/iperf3; then
    echo "uml-guest: $img is up to date"
    exit 0
fi
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
make_root "$root"
pack "$root" "$img"
echo "uml-guest: built $img ($(du -h "$img" | cut -f1))"
