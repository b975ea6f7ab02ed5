#!/usr/bin/env bash
# The real-Linux guest's boot timeline on vmm, both image forms, in one run:
#   resources/bench/real-linux-boot.sh [FORM...]     FORM: pvh (vmlinux) | bzimage; default both
# Each boot runs /init's `cpus:1` step and exits through the debug-exit port; no network.
# Prints, per form, when (host wall clock from vmm's start) the console showed its first line,
# the kernel banner (when the console came up), the end of the initcalls, /init, and the end of
# the steps, then the exit.
# On PVM the bzImage's decompressor is emulated too (~4 min in all): that is why the CI tests
# boot the ELF through PVH and this script covers the bzImage form.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
vmm="$root/target/release/vmm"
out="$root/resources/out/linux"
[ -x "$vmm" ] || cargo build --release -p vmm-cli --manifest-path "$root/Cargo.toml"
[ -f "$out/vmlinux" ] && [ -f "$out/initramfs.cpio" ] && [ -f "$out/cmdline" ] || bash "$root/resources/images/linux-guest.sh"
forms=("$@")
[ ${#forms[@]} -gt 0 ] || forms=(pvh bzimage)
[ -e /sys/module/kvm_pvm ] && echo "KVM here is PVM: the guest is instruction-emulated (~1 MIPS)"

for form in "${forms[@]}"; do
    case "$form" in
        pvh) kernel="$out/vmlinux" ;;
        bzimage) kernel="$out/bzImage" ;;
        *) echo "real-linux-boot: unknown form '$form' (pvh or bzimage)" >&2; exit 2 ;;
    esac
    log="$(mktemp)"
    start=$EPOCHREALTIME
    set +e
    "$vmm" --kernel "$kernel" --initrd "$out/initramfs.cpio" --mem 128 \
        --cmdline "console=ttyS0 reboot=k panic=1 $(cat "$out/cmdline") vmtest.steps=cpus:1 vmtest.exitport=0xf4" \
        < /dev/null 2>&1 | while IFS= read -r line; do
            printf '%8.2f %s\n' "$(echo "$EPOCHREALTIME - $start" | bc)" "$line"
        done > "$log"
    status=${PIPESTATUS[0]}
    set -e
    end="$(echo "$EPOCHREALTIME - $start" | bc)"
    at() { grep -m1 -F -- "$1" "$log" | awk '{print $1 " s"}' || true; }
    echo "== $form: $(basename "$kernel"), exit status $status"
    printf '  %-28s %s\n' "first console line" "$(head -n1 "$log" | awk '{print $1 " s"}')" \
        "console up (kernel banner)" "$(at 'Linux version')" \
        "initcalls done" "$(at 'Run /init as init process')" \
        "/init started" "$(at 'vmtest: /init started')" \
        "steps done" "$(at 'VMTEST-EXIT=')" \
        "vmm exited" "$(printf '%.2f' "$end") s"
    if [ "$status" != 0 ] || ! grep -q 'VMTEST-EXIT=0' "$log"; then
        echo "  the guest did not finish its steps; console:" >&2
        tail -n 30 "$log" >&2
    fi
    rm -f "$log"
done
