#!/usr/bin/env bash
# `vmm run -- uname -r` against virtme-ng's `vng -- uname -r` (QEMU) on the same kernel, in one
# run: wall time from the command's start to its exit, median of RUNS, and the ratio.
#   resources/bench/run-vs-vng.sh [KERNEL] [RUNS]
# KERNEL: a kernel with virtio-pci, VIRTIO_FS, FUSE_FS, DEVTMPFS_MOUNT and DEVPORT built in
# (default: the PVM test kernel, resources/out/linux/vmlinux). RUNS: default 5.
# virtme-ng comes from PyPI (installed into ~/.cache/vmm/vng-venv on first use). Where KVM is
# PVM (this project's machines) guests are instruction-emulated, so a comparison means
# nothing: the script then prints the timeline of one `vmm run` instead and says so.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
vmm="$root/target/release/vmm"
kernel="${1:-$root/resources/out/linux/vmlinux}"
runs="${2:-5}"
[ -x "$vmm" ] || cargo build --release -p vmm-cli --manifest-path "$root/Cargo.toml"
[ -f "$kernel" ] || { echo "run-vs-vng: no kernel at $kernel (bash resources/setup.sh)" >&2; exit 2; }
append=""
[ "$kernel" = "$root/resources/out/linux/vmlinux" ] && append="$(cat "$root/resources/out/linux/cmdline")"

# seconds CMD...: wall time of one run, the command's output discarded; fails if it does.
seconds() {
    local t0 t1
    t0=$EPOCHREALTIME
    "$@" > /dev/null 2>&1 || return 1
    t1=$EPOCHREALTIME
    echo "$t1 - $t0" | bc
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

if [ -e /sys/module/kvm_pvm ]; then
    echo "KVM here is PVM: guests are emulated, so vmm and vng cannot be compared here."
    echo "The timeline of one 'vmm run -- uname -r' on $(basename "$kernel"):"
    start=$EPOCHREALTIME
    "$vmm" run --kernel "$kernel" --append "$append" -- uname -r 2>&1 \
        | while IFS= read -r line; do
            printf '%8.2f %s\n' "$(echo "$EPOCHREALTIME - $start" | bc)" "$line"
        done | head -n 40
    printf '%8.2f vmm exited\n' "$(echo "$EPOCHREALTIME - $start" | bc)"
    exit 0
fi

venv="${XDG_CACHE_HOME:-$HOME/.cache}/vmm/vng-venv"
if ! command -v vng > /dev/null && [ ! -x "$venv/bin/vng" ]; then
    echo "run-vs-vng: installing virtme-ng from PyPI into $venv"
    python3 -m venv "$venv" && "$venv/bin/pip" install --quiet virtme-ng
fi
vng="$(command -v vng || echo "$venv/bin/vng")"

ours=(); theirs=()
for i in $(seq "$runs"); do
    ours+=("$(seconds "$vmm" run --kernel "$kernel" ${append:+--append "$append"} -- uname -r)") \
        || { echo "run-vs-vng: vmm run failed (run $i)" >&2; exit 1; }
    theirs+=("$(seconds "$vng" --run "$kernel" -- uname -r)") \
        || { echo "run-vs-vng: vng failed (run $i)" >&2; exit 1; }
done
o="$(printf '%s\n' "${ours[@]}" | median)"
t="$(printf '%s\n' "${theirs[@]}" | median)"
printf '| command | median of %d, s |\n| --- | --- |\n' "$runs"
printf '| vmm run -- uname -r | %.3f |\n| vng -- uname -r | %.3f |\n' "$o" "$t"
printf 'vmm/vng: %.2f (goal: <= 0.50)\n' "$(echo "$o / $t" | bc -l)"
