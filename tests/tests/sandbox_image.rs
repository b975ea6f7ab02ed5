//! The desktop sandbox's root file system (resources/images/sandbox.sh): a Debian 12 ext4
//! image with Debian's cloud kernel and initrd beside it.
//!
//! - On `vmm`, the PVM test kernel (virtio-blk and ext4 built in) mounts the image read-only
//!   as its root and runs Debian's own userland from it: dash as init, then `mount` and
//!   `uname`, printing the build key the recipe wrote into the image. Booting systemd here
//!   would take far too long (the guest is emulated at ~1 MIPS).
//! - Under QEMU/TCG, the image's own kernel boots it to a login on ttyS0 (seconds to a minute
//!   here), root logs in without a password, networkd has leased 10.0.2.15 from QEMU's
//!   libslirp and resolved points at 10.0.2.3, and fstab has mounted the virtio-fs tag `src`
//!   at /mnt/src: the whole sandbox except our VMM, which boots a stock kernel only where KVM
//!   is hardware.
//! - The cache check: a cached build is used only when its files match its checksums.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vmm_tests::guest::{built, pvm_words, Guest};
use vmm_tests::process::{find_virtiofsd, vmm_bin, TestVirtiofsd};
use vmm_tests::{say, TempDir};

fn key() -> String {
    std::fs::read_to_string(built("sandbox/key"))
        .expect("read resources/out/sandbox/key")
        .trim()
        .to_string()
}

#[test]
fn the_pvm_kernel_runs_debians_userland_from_the_image() {
    if !vmm_tests::kvm_usable() {
        return;
    }
    let key = key();
    // Words after `--` are init's arguments. Builtins where they do: every exec costs seconds.
    let script = "read -r k </etc/vmm-sandbox; read -r d </etc/debian_version; \
                  echo SANDBOX-KEY=$k DEBIAN=$d; /bin/mount -t proc proc /proc; \
                  echo SANDBOX-UNAME=$(/bin/uname -sr); echo b >/proc/sysrq-trigger";
    let cmdline = format!(
        "console=ttyS0 reboot=k panic=1 {} root=/dev/vda ro rootfstype=ext4 init=/bin/sh -- \
         -c \"{script}\"",
        pvm_words()
    );
    let mut cmd = Command::new(vmm_bin());
    cmd.arg("--kernel")
        .arg(built("linux/vmlinux"))
        .args(["--mem", "256", "--timeout", "500", "--cmdline", &cmdline])
        .arg("--disk")
        .arg(format!(
            "path={},snapshot=on",
            built("sandbox/rootfs.img").display()
        ));
    let mut guest = Guest::command(cmd);
    let code = guest.wait_process(Duration::from_secs(540));
    // The kernel's own `Kernel command line:` echo has the words unexpanded.
    let key_line = format!("SANDBOX-KEY={key} DEBIAN=12.");
    say(&format!(
        "sandbox image on the PVM kernel: timeline (host wall clock from vmm's start)\n{}",
        guest.timeline(&[
            ("console up (kernel banner)", "Linux version"),
            ("root mounted", "VFS: Mounted root"),
            ("dash ran as init", &key_line),
            ("mount and uname ran", "SANDBOX-UNAME=Linux"),
        ])
    ));
    let console = guest.console();
    assert!(
        console.contains("VFS: Mounted root (ext4 filesystem) readonly"),
        "the image is not the root:\n{console}"
    );
    assert!(
        console.contains(&key_line),
        "Debian's dash did not read this build's key ({key}) from the image:\n{console}"
    );
    assert!(
        console.contains("SANDBOX-UNAME=Linux 6."),
        "Debian's mount and uname did not run:\n{console}"
    );
    assert_eq!(
        code,
        Some(0),
        "SysRq b with reboot=k ends the VM:\n{console}"
    );
}

#[test]
fn the_images_kernel_boots_it_to_a_root_login_with_dhcp_and_the_share_under_qemu() {
    let key = key();
    let dir = TempDir::new("sbx");
    let shared = dir.path().join("src");
    std::fs::create_dir_all(&shared).unwrap();
    let token = format!("shared-{}", std::process::id());
    std::fs::write(shared.join("hello.txt"), format!("{token}\n")).unwrap();
    let sock = dir.path().join("fs.sock");
    let daemon = find_virtiofsd().map(|bin| TestVirtiofsd::start(&bin, &shared, &sock, false));
    if daemon.is_none() {
        say("no virtiofsd (resources/setup.sh installs it): the share is not checked");
    }

    let out = built("sandbox");
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-M", "q35", "-accel", "tcg", "-m", "512", "-nographic"])
        .args(["-no-reboot"])
        .args(["-object", "memory-backend-memfd,id=mem,size=512M,share=on"])
        .args(["-numa", "node,memdev=mem"])
        .args([
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0",
        ])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,snapshot=on",
            out.join("rootfs.img").display()
        ))
        .arg("-kernel")
        .arg(out.join("vmlinuz"))
        .arg("-initrd")
        .arg(out.join("initrd.img"))
        .args(["-append", "console=ttyS0 root=/dev/vda rw"]);
    if daemon.is_some() {
        qemu.arg("-chardev")
            .arg(format!("socket,id=fs0,path={}", sock.display()))
            // No MSI-X: QEMU 7.2 under TCG crashes starting a vhost device with it (guest.rs).
            .args(["-device", "vhost-user-fs-pci,chardev=fs0,tag=src,vectors=0"]);
    }
    let start = Instant::now();
    let (mut guest, mut console) = Guest::interactive(qemu);
    guest.expect("Login Prompts", Duration::from_secs(300));
    // The prompt has no newline: type the name until its echo completes the prompt's line
    // (agetty drops what comes before it opens the line).
    let mut logged_in = false;
    for _ in 0..12 {
        console.write_all(b"root\n").unwrap();
        if guest
            .wait_for("login: root", Duration::from_secs(5))
            .is_some()
        {
            logged_in = true;
            break;
        }
    }
    assert!(
        logged_in,
        "no login prompt took `root`:\n{}",
        guest.console()
    );
    let login_at = start.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    // The echo of this line cannot match what is asserted: `$(...)` is expanded only in the
    // output.
    console
        .write_all(
            b"/lib/systemd/systemd-networkd-wait-online --any --timeout=60; \
              echo IP=$(ip -4 -o addr show scope global | awk '{print $4}'); \
              echo DNS=$(resolvectl dns | tr '\\n' ' '); echo KEY=$(cat /etc/vmm-sandbox); \
              echo SHARE=$(cat /mnt/src/hello.txt); echo WHO=$(id -un); echo SANDBOX-$((6*7))\n",
        )
        .unwrap();
    guest.expect("SANDBOX-42", Duration::from_secs(120));
    console.write_all(b"poweroff\n").unwrap();
    let code = guest.wait_process(Duration::from_secs(60));
    say(&format!(
        "sandbox image under QEMU/TCG: login prompt took `root` after {:.1} s, powered off \
         after {:.1} s",
        login_at.as_secs_f64(),
        start.elapsed().as_secs_f64()
    ));
    let text = guest.console();
    for want in [
        "IP=10.0.2.15/24".to_string(),
        format!("KEY={key}"),
        "WHO=root".to_string(),
    ] {
        assert!(text.contains(&want), "no `{want}` on the console:\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.contains("DNS=") && l.contains("10.0.2.3")),
        "resolved does not use libslirp's DNS 10.0.2.3:\n{text}"
    );
    if daemon.is_some() {
        assert!(
            text.contains(&format!("SHARE={token}")),
            "fstab did not mount the share `src` at /mnt/src:\n{text}"
        );
    }
    assert_eq!(code, Some(0), "poweroff ends QEMU:\n{text}");
}

/// `sandbox.sh --check` with the cache at `cache`: (exit code, output).
const RECIPE: &str = "resources/images/sandbox.sh";

fn check(cache: &Path) -> (i32, String) {
    vmm_tests::recipe_check(RECIPE, cache)
}

#[test]
fn a_corrupt_or_incomplete_cached_sandbox_is_not_used() {
    let key = key();
    let real = vmm_tests::valid_cached_build(RECIPE, "sandbox", &key);

    // A copy (the image hard-linked: it is only read).
    let tmp = TempDir::new("sbc");
    let copy = tmp.path().join("sandbox").join(&key);
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["vmlinuz", "initrd.img", "SHA256SUMS"] {
        std::fs::copy(real.join(f), copy.join(f)).unwrap();
    }
    std::fs::hard_link(real.join("rootfs.img"), copy.join("rootfs.img"))
        .or_else(|_| std::fs::copy(real.join("rootfs.img"), copy.join("rootfs.img")).map(|_| ()))
        .unwrap();
    vmm_tests::assert_cache_refuses_damage(&copy, "vmlinuz", "initrd.img", || check(tmp.path()));
}
