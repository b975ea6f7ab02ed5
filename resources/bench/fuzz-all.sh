#!/usr/bin/env bash
# Runs every cargo-fuzz target of the project (net/fuzz, devices/fuzz, vmm/fuzz) for SECONDS
# each, one after the other, and prints a table: target, runs, corpus size, crashes.
#   resources/bench/fuzz-all.sh [SECONDS]        (default 600; not part of CI)
# Env: TARGETS="kernel_load parse_spec ..." runs only those; FUZZ_ARGS adds libFuzzer options.
# Needs the nightly toolchain (`cargo +nightly`); installs cargo-fuzz from crates.io if missing.
# Targets are built with debug assertions (`-a`), so an arithmetic overflow is a crash too.
# Corpora grow in <crate>/fuzz/corpus/<target> across runs; crash inputs land in
# <crate>/fuzz/artifacts/<target>/ (reproduce: cargo +nightly fuzz run -a TARGET FILE, from
# <crate>/). libFuzzer stops a target at its first crash, so "crashes" is 0 or 1 per run.
# Logs: resources/out/fuzz/<target>.log. Exit status 1 if any target crashed.
set -euo pipefail
secs="${1:-600}"
case "$secs" in '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac
root="$(cd "$(dirname "$0")/../.." && pwd)"
logs="$root/resources/out/fuzz"
mkdir -p "$logs"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "the nightly toolchain is needed: rustup toolchain install nightly" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz (cargo install cargo-fuzz)"
    cargo install cargo-fuzz
fi

# Seeds for kernel_load: an input "\x02" / "\x03" is the test guest's ELF / bzImage unchanged
# (see vmm/fuzz/fuzz_targets/kernel_load.rs), so the fuzzer starts from images that load.
seed_kernel_load() {
    local dir="$root/vmm/fuzz/corpus/kernel_load"
    mkdir -p "$dir"
    [ -e "$dir/seed-elf" ] || printf '\002' >"$dir/seed-elf"
    [ -e "$dir/seed-bzimage" ] || printf '\003' >"$dir/seed-bzimage"
}

# A seed for tso_segment: TCPv4 GSO, MSS 1448, a frame whose headers parse (3000 bytes of
# payload), so the fuzzer starts from frames that segment.
seed_tso_segment() {
    local dir="$root/net/fuzz/corpus/tso_segment"
    mkdir -p "$dir"
    [ -e "$dir/seed-v4" ] || {
        printf '\000\250\005'
        printf '\002\000\000\000\000\001\002\000\000\000\000\002\010\000'
        printf '\105\000\013\340\022\064\100\000\100\006\000\000\012\000\000\001\012\000\000\002'
        printf '\060\071\000\120\000\000\000\001\000\000\000\001\120\030\377\377\000\000\000\000'
        head -c 3000 /dev/zero
    } >"$dir/seed-v4"
}

# A seed for gro_coalesce: a train of three TCP/IPv4 segments of 1000 bytes with valid
# checksums, each behind its u16 length, so the fuzzer starts from frames that merge.
seed_gro_coalesce() {
    local dir="$root/net/fuzz/corpus/gro_coalesce"
    mkdir -p "$dir"
    [ -e "$dir/seed-train" ] || python3 - "$dir/seed-train" <<'PY'
import struct, sys
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s > 0xffff: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
out = b""
for i in range(3):
    data = bytes((i * 1000 + k) % 251 for k in range(1000))
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(data), 1 + i, 0x4000, 64, 6, 0,
                               bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])))
    struct.pack_into("!H", ip, 10, csum(bytes(ip)))
    tcp = bytearray(struct.pack("!HHIIBBHHH", 12345, 80, 1000 + 1000 * i, 1, 0x50, 0x10, 65535, 0, 0))
    pseudo = bytes(ip[12:20]) + struct.pack("!BBH", 0, 6, 20 + len(data))
    struct.pack_into("!H", tcp, 16, csum(pseudo + bytes(tcp) + data))
    frame = bytes([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 8, 0]) + bytes(ip) + bytes(tcp) + data
    out += struct.pack("<H", len(frame)) + frame
open(sys.argv[1], "wb").write(out)
PY
}

rows=()
crashed=0
for crate in net devices vmm; do
    dir="$root/$crate"
    [ -f "$dir/fuzz/Cargo.toml" ] || continue
    # The crate's targets that TARGETS selects (all without it); a crate with none is not built.
    selected=()
    for target in $(cd "$dir" && cargo +nightly fuzz list); do
        if [ -z "${TARGETS:-}" ] || [[ " $TARGETS " == *" $target "* ]]; then
            selected+=("$target")
        fi
    done
    [ ${#selected[@]} -gt 0 ] || continue
    echo "== building $crate/fuzz"
    (cd "$dir" && cargo +nightly fuzz build -a)
    for target in "${selected[@]}"; do
        [ "$target" = kernel_load ] && seed_kernel_load
        [ "$target" = tso_segment ] && seed_tso_segment
        [ "$target" = gro_coalesce ] && seed_gro_coalesce
        corpus="$dir/fuzz/corpus/$target"
        artifacts="$dir/fuzz/artifacts/$target"
        mkdir -p "$corpus" "$artifacts"
        log="$logs/$target.log"
        stamp="$(mktemp)"
        echo "== $crate/$target for ${secs} s (log: $log)"
        # shellcheck disable=SC2086 # FUZZ_ARGS is a list of options
        (cd "$dir" && timeout $((secs + 300)) cargo +nightly fuzz run -a "$target" -- \
            -max_total_time="$secs" -print_final_stats=1 ${FUZZ_ARGS:-}) >"$log" 2>&1 || true
        # Runs: libFuzzer's final statistics, or after a crash its last status line.
        runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
        [ -n "$runs" ] || runs="$(sed -n 's/^#\([0-9][0-9]*\).*/\1/p' "$log" | tail -1)"
        files="$(find "$corpus" -type f | wc -l)"
        kib="$(find "$corpus" -type f -printf '%s\n' | awk '{ s += $1 } END { printf "%d", s / 1024 }')"
        crashes="$(find "$artifacts" -type f -newer "$stamp" | wc -l)"
        rm -f "$stamp"
        [ "$crashes" = 0 ] || crashed=1
        rows+=("$(printf '%-22s %12s %9s %9s %8s' "$crate/$target" "${runs:-?}" "$files" "$kib" "$crashes")")
    done
done

echo
printf '%-22s %12s %9s %9s %8s\n' target runs corpus corpus_KiB crashes
printf '%s\n' "${rows[@]}"
if [ "$crashed" = 1 ]; then
    echo
    echo "crash inputs: */fuzz/artifacts/<target>/ (newest files); logs in $logs"
fi
exit "$crashed"
