# shellcheck shell=bash
# Sourced by the scripts that run guests and peers in a network namespace of their own (the
# benchmarks here and resources/demo.sh; not run on its own): the namespace, a work directory,
# and their removal on exit, failure included, shared so that none of them can leave either
# behind.

# scratch_ns PREFIX: makes a fresh namespace "PREFIX<pid>" with its loopback up ($ns) and a
# fresh directory ($work), and removes both on exit (scratch_cleanup).
scratch_ns() {
    ns="$1$$"
    work="$(mktemp -d)"
    trap scratch_cleanup EXIT
    ip netns add "$ns"
    ip -n "$ns" link set lo up
}

# scratch_cleanup: stops the script's backend ($backend_pid, if set) and waits for it, so
# that its log is whole; runs the script's own scratch_also, if it defines one; kills what
# else runs in the namespace, deletes the namespace, and removes the directory (kept, and
# named, when KEEP is set: the guests' logs are in it). Nothing here may stop it half-way.
scratch_cleanup() {
    if [ -n "${backend_pid:-}" ]; then
        { kill "$backend_pid" && wait "$backend_pid"; } 2>/dev/null || true
    fi
    if declare -F scratch_also >/dev/null; then scratch_also; fi
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
