//! `vmm --kernel ...` as a CI user meets it: the test guest boots from both image forms, its
//! serial output reaches stdout, and the VMM's exit status is the guest's; bad input is one line
//! and status 2.

mod common;

use common::vmm;

/// Each case exits 2 with one line that contains its needle (lowercase).
fn assert_usage_errors(cases: &[(Vec<&str>, &str)]) {
    for (args, needle) in cases {
        let (code, _, err) = vmm(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.to_lowercase().contains(needle),
            "{args:?}: `{err}` lacks {needle}"
        );
    }
}

#[test]
fn the_test_guest_boots_from_both_forms_and_its_status_is_ours() {
    for image in [vmm_test_guest::ELF_PATH, vmm_test_guest::BZIMAGE_PATH] {
        let (code, out, err) = vmm(&["--kernel", image, "--mem", "64M", "--cpus", "2"]);
        assert_eq!(
            code,
            i32::from(vmm_test_guest::EXIT_SUCCESS),
            "{image}: {out}\n{err}"
        );
        assert!(
            out.contains(vmm_test_guest::BANNER),
            "{image}: no banner in {out}"
        );
        assert!(
            out.contains("pci 00:00.0"),
            "{image}: no host bridge in {out}"
        );
    }
}

#[test]
fn bad_kernels_and_options_exit_2_with_one_line() {
    let dir = std::env::temp_dir().join(format!("vmm-cli-vm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk");
    std::fs::write(&junk, b"this is not a kernel").unwrap();
    let truncated = dir.join("truncated");
    let elf = std::fs::read(vmm_test_guest::ELF_PATH).unwrap();
    std::fs::write(&truncated, &elf[..elf.len() / 3]).unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--kernel", "/nonexistent/kernel"],
            "/nonexistent/kernel",
        ),
        (vec!["--kernel", junk.to_str().unwrap()], "junk"),
        (vec!["--kernel", truncated.to_str().unwrap()], "truncated"),
        (
            vec!["--kernel", vmm_test_guest::ELF_PATH, "--mem", "1"],
            "mem",
        ),
        (
            vec!["--kernel", vmm_test_guest::ELF_PATH, "--mem", "12X"],
            "--mem 12x: unknown unit",
        ),
        (
            vec![
                "run",
                "--kernel",
                vmm_test_guest::ELF_PATH,
                "--mem",
                "1.1M",
                "--",
                "true",
            ],
            "--mem 1.1m: not a whole number of mib",
        ),
        (
            vec![
                "--kernel",
                vmm_test_guest::ELF_PATH,
                "--net",
                "vec0:transport=bogus",
            ],
            "bogus",
        ),
        (
            vec![
                "--kernel",
                vmm_test_guest::ELF_PATH,
                "--net",
                "vec0:transport=raw,ifname=nonexistent0",
            ],
            "nonexistent0",
        ),
        (
            vec![
                "--kernel",
                vmm_test_guest::ELF_PATH,
                "--net",
                "vhost-user,socket=/nonexistent/vhost.sock",
            ],
            "/nonexistent/vhost.sock",
        ),
        (
            vec!["--kernel", vmm_test_guest::ELF_PATH, "--timeout", "0"],
            "--timeout 0",
        ),
        (
            vec!["--kernel", vmm_test_guest::ELF_PATH, "--timeout", "abc"],
            "--timeout abc",
        ),
        (
            vec!["--kernel", vmm_test_guest::ELF_PATH, "--timeout", "-5"],
            "--timeout -5",
        ),
        (
            vec![
                "--kernel",
                vmm_test_guest::ELF_PATH,
                "--fail-on",
                "oops,bogus",
            ],
            "bogus",
        ),
        (
            vec![
                "--kernel",
                vmm_test_guest::ELF_PATH,
                "--console-log",
                "/nonexistent/dir/console.log",
            ],
            "/nonexistent/dir/console.log",
        ),
    ];
    assert_usage_errors(&cases);
    let (code, _, err) = vmm(&[]);
    assert_eq!(code, 2, "no --kernel: {err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_fs_and_share_input_exits_2_with_one_line() {
    let dir = std::env::temp_dir().join(format!("vmm-cli-fs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let d = dir.to_str().unwrap();
    let f = file.to_str().unwrap();
    let elf = vmm_test_guest::ELF_PATH;
    let long_tag = format!("{d},tag={}", "t".repeat(37));
    let cases: Vec<(Vec<&str>, &str)> =
        vec![
        (
            vec!["--kernel", elf, "--share", "/nonexistent/dir"],
            "--share /nonexistent/dir: /nonexistent/dir: no such file",
        ),
        (
            vec!["--kernel", elf, "--share", f],
            "is not a directory",
        ),
        (
            vec!["--kernel", elf, "--share", &long_tag],
            "at most 36",
        ),
        (
            vec!["--kernel", elf, "--share", d, "--virtiofsd", "/nonexistent/virtiofsd"],
            "--virtiofsd /nonexistent/virtiofsd: not an executable file",
        ),
        (
            vec!["--kernel", elf, "--fs", "socket=/tmp/x.sock"],
            "--fs socket=/tmp/x.sock: needs tag=tag",
        ),
        (
            vec!["--kernel", elf, "--fs", "tag=host"],
            "--fs tag=host: needs socket=path",
        ),
        (
            vec!["--kernel", elf, "--fs", "tag=host,socket=/nonexistent/v.sock"],
            "--fs tag=host,socket=/nonexistent/v.sock: vhost-user backend at /nonexistent/v.sock",
        ),
        (
            vec![
                "--kernel",
                elf,
                "--fs",
                "tag=same,socket=/nonexistent/a.sock",
                "--fs",
                "tag=same,socket=/nonexistent/b.sock",
            ],
            "tag 'same' is given twice",
        ),
        (
            vec!["run", "--kernel", elf, "--share", "/nonexistent/dir", "--", "true"],
            "--share /nonexistent/dir",
        ),
    ];
    assert_usage_errors(&cases);
    // No virtiofsd on PATH nor in ~/.cargo/bin.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(["--kernel", elf, "--share", d])
        .env("PATH", "/nonexistent")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("--share {d}: virtiofsd not found")),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `--disk` input that cannot work is refused before the guest runs: status 2, one line
/// naming the option and value (and, for a broken image, the file).
#[test]
fn bad_disk_input_exits_2_with_one_line() {
    let dir = std::env::temp_dir().join(format!("vmm-cli-disk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let raw = dir.join("raw.img");
    std::fs::write(&raw, vec![0u8; 4096]).unwrap();
    // The qcow2 magic, then garbage: version 0xffffffff and nonsense sizes.
    let mut broken = b"QFI\xfb".to_vec();
    broken.extend_from_slice(&[0xff; 1020]);
    let qcow2 = dir.join("broken.qcow2");
    std::fs::write(&qcow2, &broken).unwrap();
    let (r, q, d) = (
        raw.to_str().unwrap(),
        qcow2.to_str().unwrap(),
        dir.to_str().unwrap(),
    );
    let elf = vmm_test_guest::ELF_PATH;
    let missing = "path=/nonexistent/disk.img".to_string();
    let bad_format = format!("path={r},format=vmdk");
    let dup = format!("path={r},readonly=on,readonly=off");
    let unknown = format!("path={r},cache=none");
    let directory = format!("path={d}");
    let broken_q = format!("path={q},format=qcow2");
    let probed = format!("path={q}");
    let twice = format!("path={r}");
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["--kernel", elf, "--disk", &missing],
            format!("--disk {missing}: /nonexistent/disk.img: no such file"),
        ),
        (
            vec!["--kernel", elf, "--disk", &bad_format],
            format!("--disk {bad_format}: format=vmdk: say raw or qcow2"),
        ),
        (
            vec!["--kernel", elf, "--disk", &dup],
            "readonly given twice".into(),
        ),
        (
            vec!["--kernel", elf, "--disk", &unknown],
            "unknown key 'cache'".into(),
        ),
        (
            vec!["--kernel", elf, "--disk", &directory],
            "not a regular file or block device".into(),
        ),
        (
            vec!["--kernel", elf, "--disk", &broken_q],
            format!("--disk {broken_q}: {q}: not a usable qcow2 image"),
        ),
        (
            vec!["--kernel", elf, "--disk", &probed],
            "has a qcow2 header; add format=qcow2".into(),
        ),
        (
            // One image, two writers: the second is refused.
            vec!["--kernel", elf, "--disk", &twice, "--disk", &twice],
            format!("--disk {twice}: {r}: in use by another process"),
        ),
    ];
    // assert_usage_errors compares lowercased.
    let cases: Vec<(Vec<&str>, String)> = cases
        .into_iter()
        .map(|(a, n)| (a, n.to_lowercase()))
        .collect();
    let cases: Vec<(Vec<&str>, &str)> =
        cases.iter().map(|(a, n)| (a.clone(), n.as_str())).collect();
    assert_usage_errors(&cases);
    let _ = std::fs::remove_dir_all(dir);
}

/// `vmm run` loads from the kernel's module tree what a distribution's kernel (its
/// configuration beside it: `/boot/config-VERSION`) has as modules, and refuses, at once and in
/// one line, a kernel that lacks them or whose tree lacks them.
#[test]
fn run_refuses_a_kernel_without_virtio_fs_or_its_modules() {
    let dir = std::env::temp_dir().join(format!("vmm-cli-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = dir.join("vmlinuz-9.9.9-test");
    std::fs::copy(vmm_test_guest::BZIMAGE_PATH, &kernel).unwrap();
    let config = dir.join("config-9.9.9-test");
    std::fs::write(
        &config,
        "CONFIG_VIRTIO_PCI=y\nCONFIG_FUSE_FS=m\nCONFIG_VIRTIO_FS=m\n",
    )
    .unwrap();
    let tree = dir.join("modules");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("modules.dep"), "kernel/fs/fuse/fuse.ko:\n").unwrap();
    let k = kernel.to_str().unwrap();
    let t = tree.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["run", "--kernel", k, "--", "true"],
            "--modules: /lib/modules/9.9.9-test: cannot read modules.dep",
        ),
        (
            vec!["run", "--kernel", k, "--modules", t, "--", "true"],
            "no module 'virtiofs'",
        ),
        (
            vec![
                "run",
                "--kernel",
                k,
                "--modules",
                "/nonexistent",
                "--",
                "true",
            ],
            "--modules: /nonexistent: cannot read modules.dep",
        ),
    ];
    assert_usage_errors(&cases);
    std::fs::write(
        &config,
        "CONFIG_VIRTIO_PCI=y\n# CONFIG_FUSE_FS is not set\n",
    )
    .unwrap();
    assert_usage_errors(&[(
        vec!["run", "--kernel", k, "--", "true"],
        "config_virtio_fs is not set",
    )]);
    std::fs::write(
        &config,
        "CONFIG_VIRTIO_PCI=y\nCONFIG_FUSE_FS=y\nCONFIG_VIRTIO_FS=y\n",
    )
    .unwrap();
    assert_usage_errors(&[(
        vec![
            "run",
            "--kernel",
            k,
            "--modules",
            t,
            "--module",
            "veth",
            "--",
            "true",
        ],
        "no module 'veth'",
    )]);
    let _ = std::fs::remove_dir_all(dir);
}
