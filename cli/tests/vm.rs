//! `vmm --kernel ...` as a CI user meets it: the test guest boots from both image forms, its
//! serial output reaches stdout, and the VMM's exit status is the guest's; bad input is one line
//! and status 2.

mod common;

use common::vmm;

#[test]
fn the_test_guest_boots_from_both_forms_and_its_status_is_ours() {
    for image in [vmm_test_guest::ELF_PATH, vmm_test_guest::BZIMAGE_PATH] {
        let (code, out, err) = vmm(&["--kernel", image, "--mem", "64", "--cpus", "2"]);
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
    for (args, needle) in cases {
        let (code, _, err) = vmm(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.to_lowercase().contains(needle),
            "{args:?}: `{err}` lacks {needle}"
        );
    }
    let (code, _, err) = vmm(&[]);
    assert_eq!(code, 2, "no --kernel: {err}");
    let _ = std::fs::remove_dir_all(dir);
}
