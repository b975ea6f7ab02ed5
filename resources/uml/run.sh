#!/usr/bin/env bash
# Boots the UML test guest (resources/images/uml-guest.sh builds it and its kernel).
#   run.sh [--vhost-user SOCK] [--uml-net SPEC] [--ip ADDR/PREFIX] [--ip6 ADDR/PREFIX]
#          [--mtu N] [--run SCRIPT] [--mem SIZE] [-- extra kernel args]
# --vhost-user SOCK  the guest's virtio-net device is a vhost-user frontend on SOCK (our backend)
# --uml-net SPEC     UML's own transport instead, e.g. 'vec0:transport=raw,ifname=veth0'
# --run SCRIPT       a host script the guest runs (through hostfs); the guest then powers off
# Exits with the script's exit status (from the guest's `VMTEST-EXIT=` line), 125 if the guest
# never reported one.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
initrd="$here/out/uml/initramfs.cpio.gz"
kernel="$here/out/uml/linux"
for f in "$initrd" "$kernel"; do
    [ -f "$f" ] || { echo "run.sh: $f missing: run resources/setup.sh" >&2; exit 2; }
done
mem=256M; net=(); args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --vhost-user) net+=("virtio_uml.device=$2:1"); shift 2 ;;
        --uml-net) net+=("$2"); shift 2 ;;
        --ip) args+=("vmtest.ip=$2"); shift 2 ;;
        --ip6) args+=("vmtest.ip6=$2"); shift 2 ;;
        --mtu) args+=("vmtest.mtu=$2"); shift 2 ;;
        --run) args+=("vmtest.run=$(readlink -f "$2")"); shift 2 ;;
        --mem) mem="$2"; shift 2 ;;
        --) shift; args+=("$@"); break ;;
        *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
umldir="$(mktemp -d)"
trap 'rm -rf "$umldir"' EXIT
log="$umldir/console"
# UML keeps its per-instance files (umid, mconsole socket) under uml_dir; TMPDIR holds its
# memory file.
TMPDIR="$umldir" "$kernel" mem="$mem" initrd="$initrd" umid=vmtest uml_dir="$umldir" \
    con=null con0=fd:0,fd:1 quiet "${net[@]}" "${args[@]}" < /dev/null | tee "$log"
status="$(sed -n 's/^VMTEST-EXIT=\([0-9]*\).*/\1/p' "$log" | tail -n 1)"
exit "${status:-125}"
