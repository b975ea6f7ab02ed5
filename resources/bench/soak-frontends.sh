#!/usr/bin/env bash
# A longer soak of `vmm net-backend` than CI's 2,000: CYCLES vhost-user frontends connect, ask
# for the features and go, under RLIMIT_NOFILE 1024; the backend's descriptor count is checked
# every 500 connections and must not move, and a well-behaved frontend still moves frames both
# ways byte-exact at the end (tests/tests/backend_hostile.rs, run with VMM_SOAK_CYCLES).
#   resources/bench/soak-frontends.sh [CYCLES]      default 100000; as root
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cycles="${1:-100000}"
start=$SECONDS
out="$(VMM_SOAK_CYCLES="$cycles" cargo test --release --manifest-path "$root/Cargo.toml" \
    -p vmm-tests --test backend_hostile \
    two_thousand_frontends_under_rlimit_nofile_1024_leak_nothing -- --exact 2>&1)" || {
    echo "$out" >&2
    echo "soak: FAILED" >&2
    exit 1
}
grep -q '1 passed' <<< "$out" || { echo "$out" >&2; echo "soak: the test did not run" >&2; exit 1; }
echo "soak: $cycles frontends in $((SECONDS - start)) s, constant descriptor count"
