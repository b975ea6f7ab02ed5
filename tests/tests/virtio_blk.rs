//! virtio-blk on the real-Linux tier: Linux 6.1 built for PVM (resources/kernel) drives four
//! `--disk`s in one boot (a boot costs a minute or more of emulation here):
//!
//! - vda, raw, read-write: the guest reads the host's bytes exactly (md5 of the device) and its
//!   write, fsynced (a FLUSH), is in the file once the VMM has exited; a range it discards
//!   (DISCARD) reads as zeroes in the file (a punched hole);
//! - vdb, raw, `readonly=on`: the guest's kernel sees a read-only disk, its write fails, the
//!   file is unchanged;
//! - vdc, raw, `snapshot=on`: the guest reads its own write back (through the overlay), the
//!   file is unchanged;
//! - vdd, qcow2 made by `qemu-img convert`: read exactly, written, and afterwards `qemu-img`
//!   finds the guest's write in a consistent image.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vmm_tests::guest::{linux_steps_command, md5_hex, test_bytes, Guest};
use vmm_tests::TempDir;

/// Boot to the end of the test steps; PVM measured ~60-90 s to /init.
const BOOT_TIMEOUT: Duration = Duration::from_secs(400);
/// Bytes of each disk the guest checksums: small, as md5 runs emulated.
const CHECKED: usize = 64 * 1024;
/// Size of each disk (a few pages more than is checked).
const DISK_LEN: usize = 256 * 1024;

fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("run qemu-img");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "qemu-img {args:?}: {text}");
    text
}

/// Whether this machine can run the tier (KVM usable); fails where qemu-img is missing.
fn usable() -> bool {
    if let Err(e) = vmm_vmm::kvm::device_usable() {
        say(&format!("SKIPPED: /dev/kvm is not usable here ({e})"));
        return false;
    }
    // Not a skip: qemu-img is software that resources/setup.sh installs, and a test that
    // skips for want of it would pass in a CI whose setup lost it.
    assert!(
        Command::new("qemu-img").arg("--version").output().is_ok(),
        "qemu-img is not installed (resources/setup.sh installs it: Debian's qemu-utils)"
    );
    true
}

/// `text` and a newline over the start of `data`: what the guest's `blkwrite` leaves.
fn with_line(data: &[u8], text: &str) -> Vec<u8> {
    let mut d = data.to_vec();
    let line = format!("{text}\n");
    d[..line.len()].copy_from_slice(line.as_bytes());
    d
}

fn disk(dir: &Path, name: &str, seed: u64) -> (std::path::PathBuf, Vec<u8>) {
    let data = test_bytes(DISK_LEN, seed);
    let p = dir.join(name);
    std::fs::write(&p, &data).unwrap();
    (p, data)
}

#[test]
fn disks_read_write_refuse_and_snapshot() {
    if !usable() {
        return;
    }
    let dir = TempDir::new("blk");
    let (rw, rw_data) = disk(dir.path(), "rw.img", 0x1234_5678_9abc_def1);
    let (ro, ro_data) = disk(dir.path(), "ro.img", 0x0fed_cba9_8765_4321);
    let (snap, snap_data) = disk(dir.path(), "snap.img", 0x5555_aaaa_1234_4321);
    let (q_raw, q_data) = disk(dir.path(), "q-src.img", 0x7777_1111_2222_3333);
    let q = dir.path().join("q.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        q_raw.to_str().unwrap(),
        q.to_str().unwrap(),
    ]);
    let snap_before = std::fs::read(&snap).unwrap();

    let steps = "blkinfo:vda,blkinfo:vdb,blkinfo:vdc,blkinfo:vdd,\
                 blkmd5:vda:65536,blkwrite:vda:written-by-the-guest,blkdiscard:vda:65536:65536,\
                 blkmd5:vdb:65536,noblkwrite:vdb:must-not-land,\
                 blkwrite:vdc:into-the-overlay,blkmd5:vdc:65536,\
                 blkmd5:vdd:65536,blkwrite:vdd:written-into-qcow2";
    let mut cmd = linux_steps_command(steps);
    cmd.arg("--disk")
        .arg(format!("path={},serial=disk-rw", rw.display()))
        .arg("--disk")
        .arg(format!("path={},readonly=on,serial=disk-ro", ro.display()))
        .arg("--disk")
        .arg(format!(
            "path={},snapshot=on,serial=disk-snap",
            snap.display()
        ))
        .arg("--disk")
        .arg(format!(
            "path={},format=qcow2,serial=disk-qcow2",
            q.display()
        ))
        // The device logs its counters when the VM ends.
        .env("RUST_LOG", "warn,vmm_devices::virtio_blk=info");
    let mut guest = Guest::command(cmd);
    guest.expect("vmtest: /init started", BOOT_TIMEOUT);
    let code = guest.wait_process(Duration::from_secs(300));
    say(&format!(
        "--disk: timeline (host wall clock from vmm's start)\n{}",
        guest.timeline(&[
            ("kernel banner", "Linux version"),
            ("/init started", "vmtest: /init started"),
            ("steps done", "VMTEST-EXIT="),
        ])
    ));
    let console = guest.console();
    assert_eq!(code, Some(0), "exit status\n{console}");
    let sectors = DISK_LEN / 512;
    for (dev, ro, serial) in [
        ("vda", 0, "disk-rw"),
        ("vdb", 1, "disk-ro"),
        ("vdc", 0, "disk-snap"),
        ("vdd", 0, "disk-qcow2"),
    ] {
        let line = format!("vmtest: blkinfo {dev}: size={sectors} ro={ro} serial={serial}");
        assert!(console.contains(&line), "{line}\n{console}");
    }
    // Reads are byte-exact: the guest's md5 is the host's.
    for (dev, data) in [("vda", &rw_data), ("vdb", &ro_data), ("vdd", &q_data)] {
        let line = format!("vmtest: blkmd5 {dev} 65536: {}", md5_hex(&data[..CHECKED]));
        assert!(console.contains(&line), "{line}\n{console}");
    }
    // The snapshot disk reads back the guest's own write, over the image's bytes.
    let seen = with_line(&snap_data, "into-the-overlay");
    let line = format!("vmtest: blkmd5 vdc 65536: {}", md5_hex(&seen[..CHECKED]));
    assert!(console.contains(&line), "{line}\n{console}");
    assert!(
        console.contains("vmtest: noblkwrite: writing vdb failed, as it must"),
        "{console}"
    );

    // Nothing the guest sent was a bad request, and the fsync reached the written disks as
    // FLUSH requests.
    assert!(
        !console
            .lines()
            .any(|l| l.contains("WARN") && l.contains("virtio-blk")),
        "{console}"
    );
    for (path, flushed) in [(&rw, true), (&ro, false), (&snap, true), (&q, true)] {
        let tag = format!("virtio-blk {}: ", path.display());
        let counters = console
            .lines()
            .find_map(|l| l.split_once(&tag).map(|(_, c)| c))
            .unwrap_or_else(|| panic!("no counters for {tag}\n{console}"));
        let flushes: u64 = counters
            .split(", ")
            .find_map(|f| f.strip_suffix(" flushes"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no flush count in {counters}"));
        assert_eq!(flushes > 0, flushed, "{tag}{counters}");
    }

    // After the VMM is gone: the written disk holds the write and nothing else changed.
    let after = std::fs::read(&rw).unwrap();
    let mut expected = with_line(&rw_data, "written-by-the-guest");
    expected[65536..131072].fill(0);
    assert!(
        after == expected,
        "the raw disk is not the image plus the guest's line and discarded range"
    );
    assert!(
        std::fs::read(&ro).unwrap() == ro_data,
        "readonly=on disk changed"
    );
    assert!(
        std::fs::read(&snap).unwrap() == snap_before,
        "snapshot=on disk changed"
    );
    // The qcow2 image is consistent and holds the guest's write.
    qemu_img(&["check", q.to_str().unwrap()]);
    let back = dir.path().join("q-back.img");
    qemu_img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        q.to_str().unwrap(),
        back.to_str().unwrap(),
    ]);
    assert!(
        std::fs::read(&back).unwrap() == with_line(&q_data, "written-into-qcow2"),
        "the qcow2 image is not the source plus the guest's line"
    );
}
