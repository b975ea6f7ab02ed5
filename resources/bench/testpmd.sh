#!/usr/bin/env bash
# Guest-to-host packet rate with a real vhost-user frontend: DPDK's testpmd (`net_virtio_user`,
# txonly, 64-byte frames, --no-huge) drives `vmm net-backend` on `raw` over a veth pair in a
# fresh namespace; the rate is what the veth's far end receives (its rx_packets counter over
# SECONDS). The anchors in the same run, on the same veth end:
# - DPDK's own vhost-user backend doing the same job: a second testpmd forwarding (io mode)
#   from its vhost PMD (`net_vhost`) to its AF_PACKET PMD (`net_af_packet`);
# - testpmd's AF_PACKET PMD sending by itself: what the socket gives without vhost-user.
# Each forwarding loop gets a core of its own (our backend's thread is left to the scheduler).
#   resources/bench/testpmd.sh [SECONDS]        default 10; as root, after a release build
# QUEUES=N (default 1): N queue pairs everywhere (testpmd --txq/--rxq, virtio_user queues=N
# with its control queue, our `queues=N`, DPDK's vhost PMD queues=N, its AF_PACKET PMD
# qpairs=N), still one forwarding core per testpmd.
# Needs Debian's dpdk-dev (dpdk-testpmd). Prints Mpps for each and the ratio.
set -euo pipefail
secs="${1:-10}"
case "$secs" in '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac
queues="${QUEUES:-1}"
case "$queues" in '' | *[!0-9]* | 0) echo "QUEUES must be a number from 1" >&2; exit 2 ;; esac
cq=""
[ "$queues" -gt 1 ] && cq=",cq=1"
root="$(cd "$(dirname "$0")/../.." && pwd)"
vmm="${VMM:-$root/target/release/vmm}"
[ -x "$vmm" ] || { echo "build first: cargo build --release ($vmm missing)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run as root (a namespace, a veth pair)" >&2; exit 2; }
command -v dpdk-testpmd >/dev/null || { echo "dpdk-testpmd missing: apt-get install dpdk-dev" >&2; exit 2; }

# testpmd's own processes (outside the namespace): by the file prefix each run gives them.
scratch_also() { pkill -f "file-prefix=$ns" 2>/dev/null || true; }
# shellcheck source=resources/bench/scratch.sh
. "$root/resources/bench/scratch.sh"
scratch_ns vtpmd
ip -n "$ns" link add va type veth peer name vb
ip -n "$ns" link set va up
ip -n "$ns" link set vb up

received() { ip netns exec "$ns" cat /sys/class/net/vb/statistics/rx_packets; }

# testpmd (in the namespace when $1 is "ns") with VDEV, txonly 64-byte frames, for SECONDS plus
# start-up; prints the rate vb received over SECONDS once testpmd runs, in packets per second.
testpmd_rate() {
    local where="$1" vdev="$2" log="$work/testpmd-$3.log"
    start_testpmd "$where" "$vdev" "$3" txonly 0 "$log"
    local pmd=$!
    sleep 1
    local a b
    a=$(received)
    sleep "$secs"
    b=$(received)
    kill -INT "$pmd" 2>/dev/null || true
    wait "$pmd" 2>/dev/null || true
    echo $(((b - a) / secs))
}

# Starts testpmd in the background ($! is its pid) and waits until it forwards: where (ns or
# host), VDEVS (comma-separated --vdev values, ; between devices), name, forwarding mode, the
# main lcore (the other one forwards), log file.
start_testpmd() {
    local where="$1" vdevs="$2" name="$3" mode="$4" main="$5" log="$6"
    local run=() args=()
    [ "$where" = ns ] && run=(ip netns exec "$ns")
    IFS=';' read -ra devs <<<"$vdevs"
    for d in "${devs[@]}"; do args+=("--vdev=$d"); done
    "${run[@]}" timeout $((secs + 20)) dpdk-testpmd -l 0-1 --main-lcore "$main" --no-huge \
        -m 1024 --no-pci --file-prefix="$ns-$name" "${args[@]}" -- --total-num-mbufs=16384 \
        --txq="$queues" --rxq="$queues" \
        --forward-mode="$mode" --txpkts=64 --auto-start --stats-period 1 >"$log" 2>&1 </dev/null &
    # With --stats-period testpmd forwards until a signal, not until stdin ends. Its start-up
    # (1 GiB without huge pages, libraries not yet in the page cache) can take seconds.
    for _ in $(seq 300); do
        grep -q "packet forwarding - ports=" "$log" 2>/dev/null && return 0
        sleep 0.1
    done
    cat "$log" >&2
    echo "testpmd ($name) did not start" >&2
    exit 1
}

# Our backend on TRANSPORT (raw or xdp) behind testpmd's virtio_user: prints the rate.
ours_on() {
    local transport="$1" sock="$work/vu-$1.sock" q=",queues=$queues"
    # xdp serves one queue pair (receive queue 0 of the interface).
    [ "$transport" = xdp ] && q=""
    local qs="$queues$cq"
    [ "$queues" = 1 ] && qs=1
    ip netns exec "$ns" "$vmm" net-backend --socket "$sock" "vec0:transport=$transport,ifname=va$q" \
        >"$work/backend-$transport.log" 2>&1 &
    backend_pid=$!
    for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
    [ -S "$sock" ] || { cat "$work/backend-$transport.log" >&2; echo "the backend did not start" >&2; exit 1; }
    testpmd_rate host "net_virtio_user0,path=$sock,queues=$qs,queue_size=256" "ours-$transport"
    kill "$backend_pid"
    wait "$backend_pid" 2>/dev/null || true
    backend_pid=""
}

ours=$(ours_on raw)
# DPDK's vhost backend: testpmd in the namespace, vhost PMD to AF_PACKET PMD, forwarding on
# core 0; the frontend testpmd forwards on core 1.
start_testpmd ns "net_vhost0,iface=$work/dv.sock,queues=$queues;net_af_packet0,iface=va,qpairs=$queues" vhost io 1 \
    "$work/testpmd-vhost.log"
vhost_pmd=$!
for _ in $(seq 50); do [ -S "$work/dv.sock" ] && break; sleep 0.1; done
dpdk_vhost=$(testpmd_rate host "net_virtio_user0,path=$work/dv.sock,queues=$queues$cq,queue_size=256" dv)
kill -INT "$vhost_pmd" 2>/dev/null || true
wait "$vhost_pmd" 2>/dev/null || true
bare=$(testpmd_rate ns "net_af_packet0,iface=va,qpairs=$queues" bare)
# The same three on AF_XDP (one queue pair: our xdp serves receive queue 0): our xdp transport,
# DPDK's vhost PMD forwarding to its AF_XDP PMD, and that PMD alone.
pairs="$queues"
queues=1
ours_xdp=$(ours_on xdp)
start_testpmd ns "net_vhost0,iface=$work/dx.sock,queues=1;net_af_xdp0,iface=va" vhost-xdp io 1 \
    "$work/testpmd-vhost-xdp.log"
vhost_pmd=$!
for _ in $(seq 50); do [ -S "$work/dx.sock" ] && break; sleep 0.1; done
dpdk_vhost_xdp=$(testpmd_rate host "net_virtio_user0,path=$work/dx.sock,queues=1,queue_size=256" dx)
kill -INT "$vhost_pmd" 2>/dev/null || true
wait "$vhost_pmd" 2>/dev/null || true
bare_xdp=$(testpmd_rate ns "net_af_xdp0,iface=va" bare-xdp)

queues="$pairs"

mpps() { echo "$1 / 1000000" | bc -l; }
ratio() { if [ "$2" -gt 0 ]; then echo "$1 / $2" | bc -l; else echo 0; fi; }
row() { printf '%-48s %8.3f %10.2f %10.2f\n' "$1" "$(mpps "$2")" "$(ratio "$ours" "$2")" "$(ratio "$ours_xdp" "$2")"; }
echo "64-byte frames guest->host, testpmd txonly, ${secs}s each, $queues queue pair(s) (xdp rows: 1), $(nproc) cores shared"
printf '%-48s %8s %10s %10s\n' "" "Mpps" "raw/this" "xdp/this"
row "testpmd virtio_user -> vmm net-backend (raw)" "$ours"
row "testpmd virtio_user -> vmm net-backend (xdp)" "$ours_xdp"
row "testpmd virtio_user -> DPDK vhost PMD -> af_packet" "$dpdk_vhost"
row "testpmd virtio_user -> DPDK vhost PMD -> af_xdp" "$dpdk_vhost_xdp"
row "testpmd net_af_packet alone" "$bare"
row "testpmd net_af_xdp alone" "$bare_xdp"
