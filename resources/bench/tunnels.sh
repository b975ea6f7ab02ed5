#!/usr/bin/env bash
# Guest-to-guest throughput over tunnels: UML <-> UML on UML's own transports, against
# UML <-> (UML guest on virtio_uml + our backend), same guest kernel, one run.
#   resources/bench/tunnels.sh [SECONDS]     (default 10; root; after resources/setup.sh)
# Endpoints 127.0.0.1 and 127.0.0.2 on the loopback of a fresh namespace.
set -euo pipefail
secs="${1:-10}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
vmm="${VMM:-$root/target/release/vmm}"
run="$root/resources/uml/run.sh"
[ -x "$vmm" ] || { echo "build first: cargo build --release ($vmm missing)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }
ns="vtun$$"
work="$(mktemp -d)"
cleanup() {
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    [ -n "${KEEP:-}" ] && echo "kept $work" || rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" addr add 127.0.0.2/8 dev lo 2>/dev/null || true

# Guest A (UML's own transport, 10.9.0.1) serves; guest B (10.9.0.2) measures both ways.
cat > "$work/server.sh" <<S
iperf3 -s -D
sleep $((2 * secs + 20))
S
cat > "$work/client.sh" <<S
# Guest A may boot after us: wait (bounded) until its iperf3 server answers.
for i in \$(seq 40); do iperf3 -c 10.9.0.1 -t 1 >/dev/null 2>&1 && break; sleep 1; done
for dir in tx rx; do
    flag=""; [ \$dir = rx ] && flag="-R"
    rate=\$(iperf3 -c 10.9.0.1 -t $secs -f m \$flag | sed -n 's/.* \([0-9.]*\) Mbits\/sec.*receiver.*/\1/p')
    echo "BENCH \$dir \${rate:-0}"
done
S

# one NAME SPEC_A SPEC_B: guest A on UML's SPEC_A; guest B on UML's SPEC_B (uml) or ours.
measure() {
    local a_spec="$1" b_spec="$2" mode="$3" out="$4"
    ip netns exec "$ns" "$run" --uml-net "$a_spec" --ip 10.9.0.1/24 --run "$work/server.sh" \
        > "$work/a.log" 2>&1 &
    local a=$!
    if [ "$mode" = uml ]; then
        ip netns exec "$ns" "$run" --uml-net "$b_spec" --ip 10.9.0.2/24 --run "$work/client.sh" \
            > "$out" 2>&1 || true
    else
        local sock="$work/b.sock"
        ip netns exec "$ns" "$vmm" net-backend --socket "$sock" "$b_spec" 2> "$work/backend.log" &
        local be=$!
        for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
        "$run" --vhost-user "$sock" --ip 10.9.0.2/24 --run "$work/client.sh" > "$out" 2>&1 || true
        kill "$be" 2>/dev/null; wait "$be" 2>/dev/null || true
    fi
    kill "$a" 2>/dev/null; wait "$a" 2>/dev/null || true
    ip netns pids "$ns" | xargs -r kill 2>/dev/null || true
    sleep 0.5
}

rate() { sed -n "s/^BENCH $2 \([0-9.]*\).*/\1/p" "$1" | awk '{print $1/1000}'; }

printf '%-14s %-10s %12s %12s %8s\n' tunnel direction "UML-UML Gb/s" "UML-ours Gb/s" ratio
declare -A a b
a[gre]="vec0:transport=gre,src=127.0.0.1,dst=127.0.0.2,rx_key=1,tx_key=2,sequence=1"
b[gre]="vec0:transport=gre,src=127.0.0.2,dst=127.0.0.1,rx_key=2,tx_key=1,sequence=1"
a[l2tpv3]="vec0:transport=l2tpv3,udp=1,src=127.0.0.1,srcport=1706,dst=127.0.0.2,dstport=1707,rx_session=1,tx_session=2,rx_cookie=3,tx_cookie=4,counter=1"
b[l2tpv3]="vec0:transport=l2tpv3,udp=1,src=127.0.0.2,srcport=1707,dst=127.0.0.1,dstport=1706,rx_session=2,tx_session=1,rx_cookie=4,tx_cookie=3,counter=1"
for t in gre l2tpv3; do
    measure "${a[$t]}" "${b[$t]}" uml "$work/uml.$t"
    measure "${a[$t]}" "${b[$t]}" ours "$work/ours.$t"
    for dir in tx rx; do
        u="$(rate "$work/uml.$t" $dir)"; o="$(rate "$work/ours.$t" $dir)"
        r="$(awk -v u="${u:-0}" -v o="${o:-0}" 'BEGIN { if (u > 0) printf "%.2f", o/u; else print "n/a" }')"
        label="B->A"; [ $dir = rx ] && label="A->B"
        printf '%-14s %-10s %12s %12s %8s\n' "$t" "$label" "${u:-fail}" "${o:-fail}" "$r"
    done
done
