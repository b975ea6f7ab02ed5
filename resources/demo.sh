#!/usr/bin/env bash
# The main job, end to end on a fresh machine (root): installs what is missing, builds `vmm`
# and the guest images, then, on a veth into a fresh namespace with `vec0:transport=raw,gro=1`:
#   1. a KVM guest through `vmm --kernel ... --net`: where KVM is hardware, Debian's cloud
#      kernel pings the host; on PVM (stock kernels cannot boot there) the project's test guest
#      drives its virtio-net device and gets the host's ARP reply;
#   2. a real Linux guest (UML's virtio_uml, a vhost-user frontend) on `vmm net-backend`: pings
#      the host and runs iperf3 both ways;
# and cleans up.
#   resources/demo.sh [TRANSPORT_OPTIONS]      e.g. resources/demo.sh depth=128
# Exit status: the guest's.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
extra="${1:+,$1}"
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (it creates a namespace and a veth)" >&2; exit 2; }
bash "$root/resources/setup.sh"
(cd "$root" && cargo build --release --quiet -p vmm-cli -p vmm-test-guest)

ns="vmmdemo$$"
work="$(mktemp -d)"
cleanup() {
    [ -n "${backend:-}" ] && kill "$backend" 2>/dev/null && wait "$backend" 2>/dev/null
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
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
    echo "demo: KVM here is PVM (/sys/module/kvm_pvm): a stock kernel cannot boot in useful time, so the test guest runs instead"
    elf="$(ls -t "$root"/target/release/build/vmm-test-guest-*/out/test-guest.elf | head -1)"
    status=0
    ip netns exec "$ns" "$root/target/release/vmm" --kernel "$elf" --mem 64 --net "$spec" \
        --cmdline "console=ttyS0 vmtest.arp=10.0.2.15,10.0.2.1" || status=$?
    # The test guest reports success as 0x31.
    [ "$status" = 49 ] || { echo "demo: the KVM guest failed (status $status)" >&2; exit 1; }
fi

echo "demo: UML guest on vmm net-backend $spec"
RUST_LOG=info ip netns exec "$ns" "$root/target/release/vmm" net-backend \
    --socket "$work/vec0.sock" "$spec" 2> "$work/backend.log" &
backend=$!
for _ in $(seq 100); do [ -S "$work/vec0.sock" ] && break; sleep 0.05; done
[ -S "$work/vec0.sock" ] || { cat "$work/backend.log"; exit 1; }

cat > "$work/guest.sh" <<'SCRIPT'
set -e
ping -c 3 10.0.2.1
iperf3 -c 10.0.2.1 -t 3
iperf3 -c 10.0.2.1 -t 3 -R
SCRIPT
"$root/resources/uml/run.sh" --vhost-user "$work/vec0.sock" --ip 10.0.2.15/24 --run "$work/guest.sh"
