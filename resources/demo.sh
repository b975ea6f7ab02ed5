#!/usr/bin/env bash
# The main job, end to end on a fresh machine (root): installs what is missing, builds `vmm`
# and the guest images, then, on a veth into a fresh namespace with `vec0:transport=raw,gro=1`:
#   1. a KVM guest through `vmm --kernel ... --net`: where KVM is hardware, Debian's cloud
#      kernel pings the host; on PVM (stock kernels cannot boot there) the project's real-Linux
#      test kernel built for PVM (resources/kernel) boots with two CPUs, pings the host, and
#      the host pings it (about two minutes: the guest is emulated);
#   2. a real Linux guest (UML's virtio_uml, a vhost-user frontend) on `vmm net-backend`: pings
#      the host and runs iperf3 both ways (on the project's own build of UML 6.1,
#      resources/uml/build.sh; skipped, saying why, where it cannot run);
# and cleans up.
#   resources/demo.sh [TRANSPORT_OPTIONS]      e.g. resources/demo.sh depth=128
# Exit status: the guest's.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
extra="${1:+,$1}"
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (it creates a namespace and a veth)" >&2; exit 2; }
bash "$root/resources/setup.sh"
(cd "$root" && cargo build --release --quiet -p vmm-cli -p vmm-test-guest)

# shellcheck source=resources/bench/scratch.sh
. "$root/resources/bench/scratch.sh"
scratch_ns vmmdemo
ip -n "$ns" link add host0 type veth peer name guest0
ip -n "$ns" addr add 10.0.2.1/24 dev host0
ip -n "$ns" link set host0 up
ip -n "$ns" link set guest0 up
ip netns exec "$ns" iperf3 -s -B 10.0.2.1 >/dev/null 2>&1 &

# gro=1: the veth hands over TSO frames; with offloads on they reach the guest whole (gro=0
# would need the host side's TSO turned off, as with UML).
spec="vec0:transport=raw,ifname=guest0,gro=1$extra"
echo "demo: KVM guest with vmm --net $spec"
stock="$root/resources/out/stock"
if [ ! -e /sys/module/kvm_pvm ] && [ -e "$stock/vmlinuz" ]; then
    ip netns exec "$ns" "$root/target/release/vmm" --kernel "$stock/vmlinuz" \
        --initrd "$stock/initramfs.cpio.gz" --mem 512 --cpus 2 --net "$spec" \
        --cmdline "console=ttyS0 reboot=k panic=1 vmtest.ip=10.0.2.15/24 vmtest.cmd=ping,-c,3,10.0.2.1 vmtest.exitport=0xf4"
else
    echo "demo: KVM here is PVM (/sys/module/kvm_pvm): a stock kernel cannot boot in useful time;"
    echo "demo: booting the real-Linux PVM test kernel instead (emulated: about two minutes)"
    linux="$root/resources/out/linux"
    status=0
    # The host's half: a greeting the guest's last step fetches (it keeps the guest up until
    # the host has pinged it), and the ping.
    echo "hello from the host" | ip netns exec "$ns" timeout 600 socat -u - TCP-LISTEN:5001,bind=10.0.2.1,reuseaddr &
    greeter=$!
    ip netns exec "$ns" "$root/target/release/vmm" --kernel "$linux/vmlinux" \
        --initrd "$linux/initramfs.cpio" --mem 128 --cpus 2 --net "$spec" --timeout 600 \
        --cmdline "console=ttyS0 reboot=k panic=1 $(cat "$linux/cmdline") vmtest.ip=10.0.2.15/24 vmtest.steps=cpus:2,ping:10.0.2.1,get:10.0.2.1:5001 vmtest.exitport=0xf4" &
    vm=$!
    for _ in $(seq 600); do
        ip netns exec "$ns" ping -c 1 -W 1 10.0.2.15 >/dev/null 2>&1 && break
        kill -0 "$vm" 2>/dev/null || break
    done
    ip netns exec "$ns" ping -c 3 10.0.2.15 || status=1
    wait "$vm" || status=$?
    kill "$greeter" 2>/dev/null || true
    [ "$status" = 0 ] || { echo "demo: the KVM guest failed (status $status)" >&2; exit 1; }
fi

probe="$(cd "$work" && timeout 60 "$root/resources/out/uml/linux" mem=64M initrd="$root/resources/out/uml/initramfs.cpio.gz" \
    uml_dir="$work" umid=probe con=null con0=fd:0,fd:1 quiet vmtest.cmd=true < /dev/null 2>&1 || true)"
if ! grep -q 'VMTEST-EXIT=0' <<< "$probe"; then
    if grep -q 'ptrace set fp regs failed' <<< "$probe"; then
        echo "demo: skipping the UML guest: UML cannot run on this CPU (the host's ptrace refuses its XSAVE buffer: 'ptrace set fp regs failed, errno = 14')"
    else
        echo "demo: skipping the UML guest: it does not boot here: $(tail -n 3 <<< "$probe" | tr '\n' ' ')"
    fi
    exit 0
fi
echo "demo: UML guest on vmm net-backend $spec"
RUST_LOG=info ip netns exec "$ns" "$root/target/release/vmm" net-backend \
    --socket "$work/vec0.sock" "$spec" 2> "$work/backend.log" &
backend_pid=$!
for _ in $(seq 100); do [ -S "$work/vec0.sock" ] && break; sleep 0.05; done
[ -S "$work/vec0.sock" ] || { cat "$work/backend.log"; exit 1; }

cat > "$work/guest.sh" <<'SCRIPT'
set -e
ping -c 3 10.0.2.1
iperf3 -c 10.0.2.1 -t 3
iperf3 -c 10.0.2.1 -t 3 -R
SCRIPT
"$root/resources/uml/run.sh" --vhost-user "$work/vec0.sock" --ip 10.0.2.15/24 --run "$work/guest.sh"
