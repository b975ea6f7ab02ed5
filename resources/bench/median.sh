# Sourced by the benchmark scripts (not run on its own).
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
