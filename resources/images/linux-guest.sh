#!/usr/bin/env bash
# The real-Linux guest for PVM (and hardware KVM):
#   resources/out/linux/vmlinux, bzImage, config   the PVM test kernel (resources/kernel/build.sh,
#                                                 cached outside the clone)
#   resources/out/linux/cmdline                   the command-line words the kernel needs on PVM
#                                                 (resources/kernel/cmdline without comments)
#   resources/out/linux/initramfs.cpio            busybox-static, resources/guest/init and
#                                                 guest/udhcpc.script, nothing
#                                                 else: every byte is unpacked by emulated code
#                                                 here, and a gzip one costs the emulated inflate
#                                                 on top (measured in the README)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
source "$here/images/lib.sh"
out="$here/out/linux"
bash "$here/kernel/build.sh" "$out"
grep -v '^#' "$here/kernel/cmdline" | tr -s ' \n' ' ' | sed 's/ $//' > "$out/cmdline.tmp"
mv "$out/cmdline.tmp" "$out/cmdline"

img="$out/initramfs.cpio"
if ! is_stale "$img" "$here/guest/init" "$here/guest/udhcpc.script" "$0" /bin/busybox; then
    echo "linux-guest: $img is up to date"
    exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,usr/bin,run,var/run}
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
    # `busybox --list` also names busybox itself, which must stay a file.
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
install -m 0755 "$here/guest/init" "$root/init"
install -D -m 0755 "$here/guest/udhcpc.script" "$root/etc/udhcpc/default.script"
echo "root:x:0:0:root:/:/bin/sh" > "$root/etc/passwd"
echo "127.0.0.1 localhost" > "$root/etc/hosts"
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) > "$img.tmp"
mv "$img.tmp" "$img"
echo "linux-guest: built $img ($(du -h "$img" | cut -f1))"
