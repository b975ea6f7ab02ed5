#!/usr/bin/env bash
# What busy polling costs and what it buys: our backend's own CPU time (the whole process, all
# its threads, from /proc/PID/stat once the guest is gone) through four loads of the same UML
# guest (virtio_uml, our backend over one transport), for each `busy_poll` setting:
#   idle    the guest boots, sleeps IDLE seconds and powers off: no traffic but the boot's
#   ping    the guest pings the host PINGS times, 10 ms apart: sparse request and reply
#   trickle iperf3 guest->host for SECONDS at TRICKLE (default 20M, iperf3's -b): a steady
#           stream of frames too far apart for looking to catch the next
#   stream  iperf3 guest->host for SECONDS, then host->guest for SECONDS
#   resources/bench/busy-poll-cost.sh [SECONDS]   (default 10; needs root and resources/setup.sh)
# Env: SETTINGS="0 auto 50" (busy_poll values, each a column), TRANSPORT=tap (raw, tap or
# hybrid), OPTS=",gro=1" (appended to the spec), IDLE=10, PINGS=200, TRICKLE=20M, ROUNDS=N
# (default 1: the settings alternate within a round, and each cell is the median of the
# rounds), VMM.
# Prints, per load and setting: the backend's CPU time in ms (the kernel counts it in clock
# ticks, 10 ms on Debian); the ms its workers spent in spells of looking, by the clock
# (busy_poll_us, from the line the backend logs as the guest goes; a look that finds nothing
# yields the core, so their CPU time is less); and what the load measured (the round trip in
# ms; the trickle's Mbit/s; the stream's Gbit/s each way).
set -euo pipefail
secs="${1:-10}"
case "$secs" in '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac
num() {
    case "$2" in '' | *[!0-9]*) echo "$1 must be a number" >&2; exit 2 ;; esac
}
idle="${IDLE:-10}"; num IDLE "$idle"
pings="${PINGS:-200}"; num PINGS "$pings"
rounds="${ROUNDS:-1}"; num ROUNDS "$rounds"
[ "$rounds" -ge 1 ] || { echo "ROUNDS must be 1 or more" >&2; exit 2; }
settings="${SETTINGS:-0 auto 50}"
transport="${TRANSPORT:-tap}"
case "$transport" in raw | tap | hybrid) ;; *)
    echo "TRANSPORT=$transport: raw, tap or hybrid" >&2; exit 2 ;;
esac
root="$(cd "$(dirname "$0")/../.." && pwd)"
vmm="${VMM:-$root/target/release/vmm}"
opts="${OPTS:-,gro=1}"
run="$root/resources/uml/run.sh"
[ -x "$vmm" ] || { echo "build first: cargo build --release ($vmm missing)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run as root (namespaces, taps)" >&2; exit 2; }
for s in $settings; do
    case "$s" in auto | [0-9]*) ;; *) echo "SETTINGS: $s is not a busy_poll value" >&2; exit 2 ;; esac
done
hz="$(getconf CLK_TCK)"

# shellcheck source=resources/bench/scratch.sh
. "$root/resources/bench/scratch.sh"
scratch_ns vcost
peer=10.78.0.1
guest=10.78.0.2
case "$transport" in
    raw)
        ip -n "$ns" link add cpeer type veth peer name cdp
        ip -n "$ns" addr add $peer/24 dev cpeer
        ip -n "$ns" link set cpeer up; ip -n "$ns" link set cdp up
        ifname=cdp ;;
    *)
        ip -n "$ns" tuntap add name ctap mode tap
        ip -n "$ns" addr add $peer/24 dev ctap
        ip -n "$ns" link set ctap up
        ifname=ctap ;;
esac
ip netns exec "$ns" iperf3 -s -B $peer >/dev/null 2>&1 &
sleep 0.3

# The guest's four loads, each printing "BENCH KEY VALUE".
echo "sleep $idle" > "$work/idle.sh"
cat > "$work/ping.sh" <<SCRIPT
rtt=\$(ping -q -c $pings -i 0.01 $peer | sed -n 's|.* = [0-9.]*/\([0-9.]*\)/.*|\1|p')
echo "BENCH rtt \${rtt:-0}"
SCRIPT
trickle="${TRICKLE:-20M}"
case "$trickle" in '' | *[!0-9KMG]*) echo "TRICKLE=$trickle: a rate as iperf3 -b takes it (20M)" >&2; exit 2 ;; esac
cat > "$work/trickle.sh" <<SCRIPT
rate=\$(iperf3 -c $peer -t $secs -f m -u -l 1400 -b $trickle | sed -n 's/.* \([0-9.]*\) Mbits\/sec.* ([0-9.]*%).*receiver.*/\1/p')
echo "BENCH tx \${rate:-0}"
SCRIPT
cat > "$work/stream.sh" <<SCRIPT
for dir in tx rx; do
    flag=""; [ \$dir = rx ] && flag="-R"
    rate=\$(iperf3 -c $peer -t $secs -f m \$flag | sed -n 's/.* \([0-9.]*\) Mbits\/sec.*receiver.*/\1/p')
    echo "BENCH \$dir \${rate:-0}"
done
SCRIPT

loads="idle ping trickle stream"
for r in $(seq "$rounds"); do
    for load in $loads; do
        for s in $settings; do
            out="$work/$load.$s.$r"
            sock="$work/sock"
            rm -f "$sock"
            # RUST_LOG=info: the line it logs as the guest goes carries the busy-poll counters.
            ip netns exec "$ns" env RUST_LOG=info "$vmm" net-backend --socket "$sock" \
                "vec0:transport=$transport,ifname=$ifname$opts,busy_poll=$s" 2> "$out.backend" &
            backend_pid=$!
            for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
            "$run" --vhost-user "$sock" --ip $guest/24 --run "$work/$load.sh" > "$out" 2>&1 || true
            # utime + stime (fields 14 and 15), dead threads' included, in ms.
            awk -v hz="$hz" '{ print "BENCH cpu " ($14 + $15) * 1000 / hz }' \
                "/proc/$backend_pid/stat" >> "$out" 2>/dev/null || true
            kill "$backend_pid" 2>/dev/null; wait "$backend_pid" 2>/dev/null || true
            backend_pid=""
            # busy_poll_us, in ms, summed over the queue pairs' lines as the guest went (the
            # line logged as the backend stops repeats them).
            sed -n -e '/ stopped; /q' -e 's/.* busy polling [0-9]* spells \([0-9]*\) us .*/\1/p' \
                "$out.backend" | awk '{ us += $1 } END { if (NR) print "BENCH looked " us / 1000 }' >> "$out"
        done
    done
done

# shellcheck source=resources/bench/rounds.sh
. "$root/resources/bench/rounds.sh"
# cell LOAD SETTING KEY SCALE: the median over the rounds of KEY/SCALE ("-" without one).
cell() {
    local r v
    v="$(for r in $(seq "$rounds"); do
        sed -n "s/^BENCH $3 \([0-9.]*\).*/\1/p" "$work/$1.$2.$r" | awk -v s="$4" '{print $1/s}'
    done | median)"
    echo "${v:--}"
}
echo "transport=$transport$opts, $rounds round(s); backend CPU in ms (whole process)"
printf '%-8s %-14s' load measure
for s in $settings; do printf ' %12s' "busy_poll=$s"; done
echo
for load in $loads; do
    printf '%-8s %-14s' "$load" "backend CPU ms"
    for s in $settings; do printf ' %12s' "$(cell "$load" "$s" cpu 1)"; done
    echo
    printf '%-8s %-14s' "" "spells, ms"
    for s in $settings; do printf ' %12s' "$(cell "$load" "$s" looked 1)"; done
    echo
    case "$load" in
        ping) keys="rtt:1:rtt-ms" ;;
        trickle) keys="tx:1:guest-host-Mb/s" ;;
        stream) keys="tx:1000:guest-host-Gb/s rx:1000:host-guest-Gb/s" ;;
        *) keys="" ;;
    esac
    for k in $keys; do
        IFS=: read -r key scale label <<< "$k"
        printf '%-8s %-14s' "" "$label"
        for s in $settings; do printf ' %12s' "$(cell "$load" "$s" "$key" "$scale")"; done
        echo
    done
done
