#!/usr/bin/env python3
"""Start-up time and memory: `vmm` against QEMU (-M microvm -accel kvm) on the same guest.

The guest is the project's test guest as a PVH ELF (built by `cargo build --release`): it prints
to the serial port and ends through the debug-exit port, so both VMMs run the same instructions.
For each VMM, RUNS runs (default 20): time from process start to the first serial byte, to the
process's exit, and its peak RSS. The guest touches a few pages of its 64 MiB, so peak RSS is
the VMM's own memory. Prints medians and the ratio ours/QEMU.

Peak RSS comes from `peak-rss.c` (built here with cc), which forks and execs the VMM and reports
ru_maxrss from wait4. Not from Python's own wait4: Linux folds the RSS high-water mark of the
forked child's pre-exec memory (a copy of this ~10 MiB Python) into the exec'd program's
ru_maxrss, which would hide any VMM smaller than Python. The shim's own RSS is ~1 MiB.

    python3 resources/bench/vmm-vs-qemu.py [RUNS]     (needs /dev/kvm; run after a release build)
"""
import glob
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
vmm = os.path.join(root, "target/release/vmm")
elfs = sorted(glob.glob(os.path.join(root, "target/release/build/vmm-test-guest-*/out/test-guest.elf")),
              key=os.path.getmtime)
if not os.path.exists(vmm) or not elfs:
    sys.exit("build first: cargo build --release --workspace (vmm and the test guest)")
elf = elfs[-1]
shim = os.path.join(tempfile.mkdtemp(prefix="peak-rss-"), "peak-rss")
subprocess.run(["cc", "-O2", "-o", shim, os.path.join(root, "resources/bench/peak-rss.c")], check=True)

commands = {
    "vmm": [vmm, "--kernel", elf, "--mem", "64"],
    # microvm without legacy devices it does not need; the test guest ends at port 0xf4.
    "qemu": ["qemu-system-x86_64", "-M", "microvm,pic=off,pit=off,rtc=off", "-accel", "kvm",
             "-m", "64", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
             "-device", "isa-debug-exit,iobase=0xf4,iosize=1", "-kernel", elf],
}


def once(cmd):
    start = time.monotonic()
    p = subprocess.Popen([shim] + cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL)
    first = None
    out = b""
    while True:
        r, _, _ = select.select([p.stdout], [], [], 10)
        if not r:
            p.kill()
            raise RuntimeError(f"{cmd[0]}: no output for 10 s")
        chunk = os.read(p.stdout.fileno(), 4096)
        if chunk and first is None:
            first = time.monotonic() - start
        if not chunk:
            break
        out += chunk
    err = p.stderr.read().decode(errors="replace")
    p.wait()
    end = time.monotonic() - start
    if b"vmm-test-guest: done" not in out:
        raise RuntimeError(f"{cmd[0]}: the guest did not finish: {out[-200:]!r}")
    rss = [line.split()[1] for line in err.splitlines() if line.startswith("peak-rss-kib ")]
    if not rss:
        raise RuntimeError(f"{cmd[0]}: no peak RSS reported: {err[-200:]}")
    return first, end, int(rss[-1]) / 1024.0


results = {}
for name, cmd in commands.items():
    samples = [once(cmd) for _ in range(runs)]
    results[name] = [statistics.median(s[i] for s in samples) for i in range(3)]

print(f"test guest (PVH ELF, 64 MiB), median of {runs} runs")
print(f"{'':28} {'vmm':>10} {'qemu':>10} {'vmm/qemu':>9}")
for i, label in enumerate(["first serial byte (ms)", "guest done, VMM exited (ms)", "peak RSS (MiB)"]):
    ours, qemu = results["vmm"][i], results["qemu"][i]
    scale = 1000.0 if i < 2 else 1.0
    print(f"{label:28} {ours * scale:10.1f} {qemu * scale:10.1f} {ours / qemu:9.2f}")
