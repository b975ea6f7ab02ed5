#!/usr/bin/env bash
# The main job, end to end on a fresh machine (root): installs what is missing, builds `vmm`
# and the guest images, then boots a real Linux guest (UML's virtio_uml, a vhost-user frontend)
# on our backend with `vec0:transport=raw,gro=1` on a veth into a fresh namespace, pings the host,
# runs iperf3 both ways, and cleans up.
#   resources/demo.sh [TRANSPORT_OPTIONS]      e.g. resources/demo.sh depth=128
# Exit status: the guest's.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
extra="${1:+,$1}"
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (it creates a namespace and a veth)" >&2; exit 2; }
bash "$root/resources/setup.sh"
(cd "$root" && cargo build --release --quiet --bin vmm)

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
echo "demo: vmm net-backend $spec"
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
