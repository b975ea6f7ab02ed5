//! The command line as a user meets it: every malformed device specification exits 2 with one
//! line naming the option; `--help` documents every transport.

mod common;

use common::vmm;

#[test]
fn malformed_specs_exit_2_with_one_line_naming_the_option() {
    let cases: &[(&str, &str)] = &[
        ("vec0:transport=raw,ifnmae=eth0", "ifnmae=eth0"),
        ("vec0:transport=foo", "foo"),
        ("vec0:transport=raw,ifname=a,depth=0", "depth=0"),
        ("vec0:transport=raw,ifname=a,mtu=99999", "mtu=99999"),
        ("vec0:transport=raw,ifname=a,ifname=b", "ifname"),
        (
            "vec0:transport=raw,ifname=a,mac=01:02:03:04:05:06",
            "mac=01:02:03:04:05:06",
        ),
        (
            "vec0:transport=gre,src=1.2.3.4,dst=5.6.7.8,rx_key=1",
            "tx_key",
        ),
        (
            "vec0:transport=l2tpv3,src=1.2.3.4,dst=5.6.7.8",
            "rx_session",
        ),
        ("vec0:transport=tap,src=1.2.3.4", "src=1.2.3.4"),
        ("eth0=mcast,,1.2.3.4", "1.2.3.4"),
        ("nonsense", "vecN"),
    ];
    for (spec, needle) in cases {
        let (code, _, err) = vmm(&["net-backend", "--socket", "/tmp/never.sock", spec]);
        assert_eq!(code, 2, "{spec}: exit {code}, stderr {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{spec}: not one line: {err}"
        );
        assert!(
            err.contains(needle),
            "{spec}: `{err}` does not name `{needle}`"
        );
    }
}

#[test]
fn a_socket_in_a_missing_directory_exits_2() {
    let (code, _, err) = vmm(&[
        "net-backend",
        "--socket",
        "/nonexistent-dir/x.sock",
        "vec0:transport=tap",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent-dir"), "{err}");
}

#[test]
fn a_missing_interface_is_a_runtime_error_naming_it() {
    let (code, _, err) = vmm(&[
        "net-backend",
        "--socket",
        "/tmp/vmm-cli-test.sock",
        "vec0:transport=raw,ifname=nosuchif0",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nosuchif0"), "{err}");
}

#[test]
fn help_documents_every_transport_and_option() {
    let (code, out, _) = vmm(&["net-backend", "--help"]);
    assert_eq!(code, 0);
    for word in [
        "tap",
        "hybrid",
        "raw",
        "gre",
        "l2tpv3",
        "bess",
        "fd",
        "tuntap",
        "mcast",
        "ucast",
        "pcap",
        "daemon",
        "vde",
        "depth",
        "mtu",
        "headroom",
        "gro",
        "vec=",
        "mac",
        "bpffile",
        "ifname",
        "rx_key",
        "sequence",
        "pin_sequence",
        "rx_session",
        "cookie64",
        "counter",
        "pin_counter",
        "srcport",
        "v6",
    ] {
        assert!(out.contains(word), "--help does not mention {word}");
    }
}
