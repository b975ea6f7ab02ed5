#!/usr/bin/env bash
# Guest-to-guest throughput over tunnels, same UML guest kernel everywhere, one run:
#   UML-UML    both guests on UML's own transports (the anchor);
#   UML-ours   guest B on virtio_uml + our backend, guest A still on UML's own transport;
#   ours-ours  both guests on virtio_uml + our backend (what a deployment of ours looks like).
#   resources/bench/tunnels.sh [SECONDS]     (default 10; root; after resources/setup.sh)
# Endpoints 127.0.0.1 and 127.0.0.2 on the loopback of a fresh namespace.
# Env: PAIRINGS="uml-uml uml-ours ours-ours" runs only the pairings named; TUNNELS="gre l2tpv3"
# only the tunnels named.
# OURS_OPTS="gro=0 gro=1": each word is appended to our backends' specs in turn, so one
# run measures ours with send offloads only (the sending guest hands over 64 KiB TSO frames
# that its backend segments; the receiving guest gets 1500-byte frames, each a vhost-user hop)
# and with both (the receiving backend also merges the segments back into GSO frames for its
# guest). Before 2026-12-03 gro=0 offered no offloads at all. UML's own tunnels have no
# offloads, so in UML-ours the UML guest's own receive path bounds B->A, and its own sending
# A->B, whatever our side does. After the table: the datagrams the kernel dropped at the
# tunnels' sockets in each measurement (a full receive buffer costs TCP a retransmission).
# ROUNDS=N (default 1): every measurement of a tunnel N times, the pairings in turn (UML-UML,
# UML-ours, ours-ours, UML-UML, ...) so that whatever drifts on the machine meets them alike;
# each cell is then the median of the rounds, the ratios are of the medians, and two more
# columns give the lowest and highest ratio of one round (ours of round i against UML-UML's).
# A_CPUS=LIST, B_CPUS=LIST (taskset's lists, e.g. A_CPUS=0 B_CPUS=1): each side on its own
# CPUs, in every pairing: the UML guest, and on our side its backend (every thread) too, so a
# side's wake-ups stay on its cores and the two sides do not take each other's.
set -euo pipefail
secs="${1:-10}"
case "$secs" in '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac
rounds="${ROUNDS:-1}"
case "$rounds" in
    '' | 0 | *[!0-9]*) echo "ROUNDS must be a number from 1 (rounds per tunnel)" >&2; exit 2 ;;
esac
declare -A pin
for side in A B; do
    var="${side}_CPUS"
    pin[$side]=""
    [ -n "${!var:-}" ] || continue
    taskset -c "${!var}" true 2>/dev/null ||
        { echo "$var=${!var}: not CPUs this shell may run on (taskset -c LIST)" >&2; exit 2; }
    pin[$side]="${!var}"
done
root="$(cd "$(dirname "$0")/../.." && pwd)"
vmm="${VMM:-$root/target/release/vmm}"
run="$root/resources/uml/run.sh"
[ -x "$vmm" ] || { echo "build first: cargo build --release ($vmm missing)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }
# shellcheck source=resources/bench/scratch.sh
. "$root/resources/bench/scratch.sh"
scratch_ns vtun
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

# guest NAME SPEC SIDE IP SCRIPT OUT: boots a guest on UML's SPEC (SIDE "uml") or on our backend
# serving SPEC (SIDE "ours"), in the background; its pid is $guest_pid.
guest() {
    local name="$1" spec="$2" side="$3" ip="$4" script="$5" out="$6"
    local on=()
    [ -n "${pin[${name^^}]}" ] && on=(taskset -c "${pin[${name^^}]}")
    if [ "$side" = uml ]; then
        ip netns exec "$ns" "${on[@]}" "$run" --uml-net "$spec" --ip "$ip" --run "$script" > "$out" 2>&1 &
    else
        local sock="$work/$name.sock"
        rm -f "$sock"
        ip netns exec "$ns" "${on[@]}" "$vmm" net-backend --socket "$sock" "$spec" \
            2> "$work/$name.backend" &
        for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
        "${on[@]}" "$run" --vhost-user "$sock" --ip "$ip" --run "$script" > "$out" 2>&1 &
    fi
    guest_pid=$!
}

# stop_guests: ends every UML guest of this run and waits until none is left. Killing run.sh is
# not enough: UML makes a process group of its own, and a guest outside the namespace (one on
# our backend) would run on for its script's 40 s, sharing the cores with the next measurement.
stop_guests() {
    pkill -f "vmtest.run=$work/" 2>/dev/null || true
    for _ in $(seq 50); do pgrep -f "vmtest.run=$work/" >/dev/null || return 0; sleep 0.1; done
    pkill -9 -f "vmtest.run=$work/" 2>/dev/null || true
    sleep 0.2
}

# measure SPEC_A SIDE_A SPEC_B SIDE_B OUT: guest A serves iperf3, guest B measures both ways
# into OUT.
measure() {
    guest a "$1" "$2" 10.9.0.1/24 "$work/server.sh" "$work/a.log"
    local a=$guest_pid
    guest b "$3" "$4" 10.9.0.2/24 "$work/client.sh" "$5"
    wait "$guest_pid" || true
    # What the kernel dropped at the tunnels' sockets (full receive buffers), while they are
    # still open: the `drops` column of the namespace's UDP and raw sockets.
    ip netns exec "$ns" awk 'FNR > 1 { s += $NF } END { print s + 0 }' \
        /proc/net/udp /proc/net/udp6 /proc/net/raw /proc/net/raw6 > "$5.drops"
    stop_guests
    kill "$a" 2>/dev/null || true; wait "$a" 2>/dev/null || true
    ip netns pids "$ns" | xargs -r kill 2>/dev/null || true
    pkill -f "net-backend --socket $work/" 2>/dev/null || true
    sleep 0.5
}

# rate FILE DIR: the Gbit/s guest B measured in DIR in the measurement FILE, one round
# ("-" when it has none: a pairing not run, or a round that failed).
rate() {
    local v=""
    [ -e "$1" ] &&
        v="$(sed -n "s/^BENCH $2 \([0-9.]*\).*/\1/p" "$1" | awk '$1 > 0 {print $1/1000}')"
    echo "${v:--}"
}
# rates FILE DIR: the rounds' rates of the measurement FILE (FILE.1, FILE.2, ...), in round order.
rates() { local r; for r in $(seq "$rounds"); do rate "$1.$r" "$2"; done; }
# shellcheck source=resources/bench/rounds.sh
. "$root/resources/bench/rounds.sh"
# range BASE OTHER DIR: the lowest and highest ratio OTHER/BASE of one round, and of how many.
range() { paste <(rates "$1" "$3") <(rates "$2" "$3") | ratio_range; }
wanted() { [[ " ${PAIRINGS:-uml-uml uml-ours ours-ours} " == *" $1 "* ]]; }

# cell PAIRING VALUE: the value, "fail" for a pairing run without one, "-" for one not run.
cell() { if [ -n "$2" ]; then echo "$2"; elif wanted "$1"; then echo fail; else echo -; fi; }

[ -n "${pin[A]}${pin[B]}" ] &&
    echo "guest A's side on CPUs ${pin[A]:-any}, guest B's on ${pin[B]:-any} (A_CPUS, B_CPUS)"
if [ "$rounds" -gt 1 ]; then
    echo "each cell the median of $rounds rounds, the pairings in turn; UO and OO rounds: the"
    echo "lowest and highest ratio of one round (and how many rounds measured both)"
    printf '%-14s %-6s %8s %9s %9s %9s %9s %15s %15s\n' tunnel dir UML-UML UML-ours ours-ours \
        "ratio UO" "ratio OO" "UO rounds" "OO rounds"
else
    printf '%-14s %-6s %8s %9s %9s %9s %9s\n' tunnel dir UML-UML UML-ours ours-ours "ratio UO" "ratio OO"
fi
declare -A a b
a[gre]="vec0:transport=gre,src=127.0.0.1,dst=127.0.0.2,rx_key=1,tx_key=2,sequence=1"
b[gre]="vec0:transport=gre,src=127.0.0.2,dst=127.0.0.1,rx_key=2,tx_key=1,sequence=1"
a[l2tpv3]="vec0:transport=l2tpv3,udp=1,src=127.0.0.1,srcport=1706,dst=127.0.0.2,dstport=1707,rx_session=1,tx_session=2,rx_cookie=3,tx_cookie=4,counter=1"
b[l2tpv3]="vec0:transport=l2tpv3,udp=1,src=127.0.0.2,srcport=1707,dst=127.0.0.1,dstport=1706,rx_session=2,tx_session=1,rx_cookie=4,tx_cookie=3,counter=1"
for t in ${TUNNELS:-gre l2tpv3}; do
    for r in $(seq "$rounds"); do
        wanted uml-uml && measure "${a[$t]}" uml "${b[$t]}" uml "$work/uml.$t.$r"
        for o in ${OURS_OPTS:-gro=0 gro=1}; do
            wanted uml-ours && measure "${a[$t]}" uml "${b[$t]},$o" ours "$work/uo.$t.$o.$r"
            wanted ours-ours && measure "${a[$t]},$o" ours "${b[$t]},$o" ours "$work/oo.$t.$o.$r"
        done
    done
    for o in ${OURS_OPTS:-gro=0 gro=1}; do
        for dir in tx rx; do
            u="$(rates "$work/uml.$t" $dir | median)"
            x="$(rates "$work/uo.$t.$o" $dir | median)"
            y="$(rates "$work/oo.$t.$o" $dir | median)"
            label="B->A"; [ $dir = rx ] && label="A->B"
            line="$(printf '%-14s %-6s %8s %9s %9s %9s %9s' "$t,$o" "$label" \
                "$(cell uml-uml "$u")" "$(cell uml-ours "$x")" "$(cell ours-ours "$y")" \
                "$(ratio "$u" "$x")" "$(ratio "$u" "$y")")"
            if [ "$rounds" -gt 1 ]; then
                line="$line $(printf '%15s %15s' "$(range "$work/uml.$t" "$work/uo.$t.$o" $dir)" \
                    "$(range "$work/uml.$t" "$work/oo.$t.$o" $dir)")"
            fi
            echo "$line"
        done
    done
done
echo
echo "datagrams the kernel dropped at the tunnels' sockets (receive buffer full), per measurement:"
for f in "$work"/*.drops; do
    [ -e "$f" ] || continue
    name="$(basename "$f" .drops)"
    printf '  %-22s %s\n' "${name/#oo./ours-ours }" "$(cat "$f")"
done | sed 's/^  uo\./  UML-ours /; s/^  uml\./  UML-UML /'
