# Sourced by the benchmark scripts that measure in rounds (not run on its own): the arithmetic
# of `ROUNDS=N`, shared so that every table reads its cells the same way.

# median: the median of the numbers on standard input, one a line; lines that are "-" (a round
# without a result) are skipped, and nothing is printed when none is left. Three decimals from
# 1 up, three significant digits below (a stalled side's 0.0003 Gbit/s must not read 0.000).
median() {
    { grep -v '^-$' || true; } | sort -g | awk '{ a[NR] = $1 } END {
        if (NR == 0) exit
        m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
        printf (m >= 1 ? "%.3f\n" : "%.3g\n"), m
    }'
}

# ratio BASE OTHER [INVERT]: OTHER/BASE with two decimals (BASE/OTHER when INVERT is 1, for
# round trips, where less is better); "n/a" unless both are above zero.
ratio() {
    awk -v b="${1:-0}" -v o="${2:-0}" -v inv="${3:-0}" 'BEGIN {
        if (b > 0 && o > 0) printf "%.2f", inv ? b/o : o/b; else print "n/a" }'
}

# ratio_range [INVERT]: from pairs "BASE OTHER" on standard input, one round a line ("-" for a
# side without a result), the lowest and highest ratio of one round and of how many rounds:
# "LO-HI (N)", or "n/a" when no round measured both sides.
ratio_range() {
    awk -v inv="${1:-0}" '$1 != "-" && $2 != "-" {
            r = inv ? $1/$2 : $2/$1
            if (n++ == 0 || r < lo) lo = r
            if (r > hi) hi = r
        }
        END { if (n) printf "%.2f-%.2f (%d)", lo, hi, n; else print "n/a" }'
}
