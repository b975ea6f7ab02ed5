#!/usr/bin/env bash
# Builds the UML test guest's initramfs from Debian packages:
#   resources/out/uml/initramfs.cpio.gz
# Contents: busybox-static, iperf3 with the shared libraries ldd lists, UML's virtio_net.ko
# (+ failover, net_failover), and resources/uml/init as /init.
# Needs: user-mode-linux, busybox-static, iperf3, cpio (resources/setup.sh installs them).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="$here/out/uml"
img="$out/initramfs.cpio.gz"
init="$here/uml/init"

kver="$(ls /usr/lib/uml/modules | sort -V | tail -n 1)"
moddir="/usr/lib/uml/modules/$kver/kernel"
mods=("$moddir/net/core/failover.ko" "$moddir/drivers/net/net_failover.ko"
      "$moddir/drivers/net/virtio_net.ko")

# Rebuild only when an input is newer than the image.
if [ -f "$img" ]; then
    stale=0
    for f in "$init" "$0" /bin/busybox /usr/bin/iperf3 "${mods[@]}"; do
        [ "$f" -nt "$img" ] && stale=1
    done
    [ "$stale" = 0 ] && { echo "uml-guest: $img is up to date"; exit 0; }
fi

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,host,lib/modules,usr/bin,run}
cp /bin/busybox "$root/bin/busybox"
# One link per applet; `busybox --list` also names busybox itself, which must stay a file.
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] && continue
    ln -sf busybox "$root/bin/$applet"
done
cp /usr/bin/iperf3 "$root/usr/bin/iperf3"
# The shared libraries iperf3 needs, at the paths the dynamic loader looks for them.
for lib in $(ldd /usr/bin/iperf3 | grep -oE '/[^ ]+'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
for m in "${mods[@]}"; do cp "$m" "$root/lib/modules/"; done
install -m 0755 "$init" "$root/init"
echo "root:x:0:0:root:/:/bin/sh" > "$root/etc/passwd"
echo "127.0.0.1 localhost" > "$root/etc/hosts"

mkdir -p "$out"
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 > "$img.tmp"
mv "$img.tmp" "$img"
echo "uml-guest: built $img ($(du -h "$img" | cut -f1), UML $kver)"
