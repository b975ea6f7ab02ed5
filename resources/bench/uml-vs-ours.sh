#!/usr/bin/env bash
# Throughput and round trips of the same UML guest kernel over (a) UML's own vec0:transport=X
# and (b) virtio_uml + our vhost-user backend with transport X, for raw, tap and hybrid, in one
# run.
#   resources/bench/uml-vs-ours.sh [SECONDS]      (default 10; needs root and resources/setup.sh)
# Env: TRANSPORTS="raw tap hybrid", OPTS=",gro=1" (appended to both specs), OURS_OPTS (appended
# to ours only, after OPTS: options UML's own lacks, ",affinity=1", ",busy_poll=50"), VMM=path/to/vmm,
# SIDES="uml ours" (SIDES=ours skips UML's own runs, for comparing two builds of ours),
# IPERF="-l 1M" (more iperf3 client options in the guest: with -l 1M the guest reads 1 MiB per
# recv instead of 128 KiB, and host->guest is no longer bound by the UML guest's system calls,
# each a round of ptrace stops in UML 6.1).
# With gro=0 the peer interface's TSO/GSO are turned off: UML's rule is that gro must match the
# host side, and without it both UML's transports and ours see 64 KiB GSO frames they must drop,
# and host->guest TCP stalls for both.
# UML_CPUS=LIST (taskset's list, e.g. 0): both sides' UML guests run on those CPUs only, as a
# VMM pins its vCPUs; with OURS_OPTS=,affinity=1 ours then has a core the guest does not use.
# PINGS=N (default 200; 0 skips): the guest then pings the host N times, 10 ms apart, with
# nothing else running, and a third row gives the average round trip in ms.
# ROUNDS=N (default 1): each transport is measured N times, UML's own and ours alternating
# (UML, ours, UML, ours, ...) so that whatever drifts on the machine meets both sides alike;
# each cell is then the median of the rounds, the ratio is of the medians, and a last column
# gives the lowest and highest ratio of a round (ours of round i against UML's of round i).
# On this project's 2-core VM two runs of the same code differ by up to 30 %: one round says
# little, the median of three or five says more.
# Prints one row per transport and direction: Gbit/s for UML, for ours, and ours/UML; and the
# round trip, ms, with UML/ours (so that above 1 is ours faster there too).
set -euo pipefail
secs="${1:-10}"
case "$secs" in '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac
pings="${PINGS:-200}"
case "$pings" in '' | *[!0-9]*) echo "PINGS must be a number (0 skips the round trips)" >&2; exit 2 ;; esac
rounds="${ROUNDS:-1}"
case "$rounds" in
    '' | 0 | *[!0-9]*) echo "ROUNDS must be a number from 1 (rounds per transport)" >&2; exit 2 ;;
esac
root="$(cd "$(dirname "$0")/../.." && pwd)"
# The UML guest, on UML_CPUS if given.
uml=()
if [ -n "${UML_CPUS:-}" ]; then
    taskset -c "$UML_CPUS" true 2>/dev/null ||
        { echo "UML_CPUS=$UML_CPUS: not CPUs this shell may run on (taskset -c LIST)" >&2; exit 2; }
    uml=(taskset -c "$UML_CPUS")
fi
vmm="${VMM:-$root/target/release/vmm}"
transports="${TRANSPORTS:-raw tap hybrid}"
opts="${OPTS:-,gro=1}"
run="$root/resources/uml/run.sh"
[ -x "$vmm" ] || { echo "build first: cargo build --release ($vmm missing)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run as root (namespaces, taps)" >&2; exit 2; }

# shellcheck source=resources/bench/scratch.sh
. "$root/resources/bench/scratch.sh"
scratch_ns vbench
peer=10.77.0.1
guest=10.77.0.2

# The guest runs iperf3 both ways and prints the receiver's rate in Mbit/s.
cat > "$work/guest.sh" <<SCRIPT
for dir in tx rx; do
    flag=""; [ \$dir = rx ] && flag="-R"
    rate=\$(iperf3 -c $peer -t $secs -f m \$flag ${IPERF:-} | sed -n 's/.* \([0-9.]*\) Mbits\/sec.*receiver.*/\1/p')
    echo "BENCH \$dir \${rate:-0}"
done
if [ $pings -gt 0 ]; then
    # busybox: "round-trip min/avg/max = A/B/C ms"; the average.
    rtt=\$(ping -q -c $pings -i 0.01 $peer | sed -n 's|.* = [0-9.]*/\([0-9.]*\)/.*|\1|p')
    echo "BENCH rtt \${rtt:-0}"
fi
SCRIPT

# no_gso IFNAME: with gro=0, the host must not hand the transport GSO frames.
no_gso() {
    case "$opts" in
        *gro=0*) ip netns exec "$ns" ethtool -K "$1" tso off gso off >/dev/null 2>&1 || true ;;
    esac
}

# setup_host TRANSPORT: makes the peer interface (with the iperf3 server) and prints the
# interface the transport attaches to.
setup_host() {
    ip -n "$ns" link del bpeer 2>/dev/null || true
    ip -n "$ns" link del btap 2>/dev/null || true
    case "$1" in
        raw)
            ip -n "$ns" link add bpeer type veth peer name bdp
            ip -n "$ns" addr add $peer/24 dev bpeer
            ip -n "$ns" link set bpeer up; ip -n "$ns" link set bdp up
            no_gso bpeer
            echo bdp ;;
        tap|hybrid)
            ip -n "$ns" tuntap add name btap mode tap
            ip -n "$ns" addr add $peer/24 dev btap
            ip -n "$ns" link set btap up
            no_gso btap
            echo btap ;;
    esac
}

rates() { [ -e "$1" ] || return 0; sed -n 's/^BENCH \(tx\|rx\|rtt\) \([0-9.]*\).*/\1 \2/p' "$1"; }

# values SIDE T KEY SCALE: the positive values of KEY (tx, rx, rtt) in each round's file of SIDE
# (uml, ours) for transport T, divided by SCALE, one a line in round order ("-" for a round
# without one, so that rounds stay paired).
values() {
    local r v
    for r in $(seq "$rounds"); do
        v="$(rates "$work/$1.$2.$r" | awk -v k="$3" -v s="$4" '$1==k && $2 > 0 {print $2/s}')"
        echo "${v:--}"
    done
}
# shellcheck source=resources/bench/rounds.sh
. "$root/resources/bench/rounds.sh"
# row T LABEL KEY SCALE INVERT: one row of the table: UML's median, ours, the ratio of the
# medians (UML/ours when INVERT is 1, for round trips), and with several rounds the range of the
# rounds' own ratios.
row() {
    local u o ratio range
    u="$(values uml "$1" "$3" "$4" | median)"
    o="$(values ours "$1" "$3" "$4" | median)"
    ratio="$(ratio "$u" "$o" "$5")"
    if [ "$rounds" -gt 1 ]; then
        range="$(paste <(values uml "$1" "$3" "$4") <(values ours "$1" "$3" "$4") |
            ratio_range "$5")"
    fi
    printf '%-8s %-12s %10s %10s %8s%s\n' "$1" "$2" "${u:-fail}" "${o:-fail}" "$ratio" \
        "${range:+ $range}"
}

header="$(printf '%-8s %-12s %10s %10s %8s' transport direction "UML Gb/s" "ours Gb/s" ratio)"
if [ "$rounds" -gt 1 ]; then
    echo "each cell the median of $rounds rounds, UML's own and ours alternating; last column: the"
    echo "lowest and highest ratio of one round's pair (and how many rounds measured both sides)"
    header="$header  rounds"
fi
echo "$header"
for t in $transports; do
    ifname="$(setup_host "$t")"
    spec="vec0:transport=$t,ifname=$ifname$opts"
    # The server binds the peer address, which exists only once the interface does.
    ip netns exec "$ns" iperf3 -s -B $peer >/dev/null 2>&1 &
    iperf_pid=$!
    sleep 0.3
    for r in $(seq "$rounds"); do
        # (a) UML's own transport: UML runs in the namespace.
        if [[ " ${SIDES:-uml ours} " == *" uml "* ]]; then
            ip netns exec "$ns" "${uml[@]}" "$run" --uml-net "$spec" --ip $guest/24 --run "$work/guest.sh" \
                > "$work/uml.$t.$r" 2>&1 || true
        fi
        # (b) our backend in the namespace, UML's virtio_uml as its frontend.
        sock="$work/$t.sock"
        rm -f "$sock"
        ip netns exec "$ns" "$vmm" net-backend --socket "$sock" "$spec${OURS_OPTS:-}" \
            2> "$work/backend.$t" &
        backend_pid=$!
        for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
        "${uml[@]}" "$run" --vhost-user "$sock" --ip $guest/24 --run "$work/guest.sh" \
            > "$work/ours.$t.$r" 2>&1 || true
        kill "$backend_pid" 2>/dev/null; wait "$backend_pid" 2>/dev/null || true
        backend_pid=""
    done
    kill "$iperf_pid" 2>/dev/null; wait "$iperf_pid" 2>/dev/null || true
    row "$t" guest-host tx 1000 0
    row "$t" host-guest rx 1000 0
    if [ "$pings" -gt 0 ]; then
        row "$t" rtt-ms rtt 1 1
    fi
done
