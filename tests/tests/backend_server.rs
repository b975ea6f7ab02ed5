//! `vmm net-backend` as a frontend meets it: malformed vhost-user messages drop that
//! connection only, frontends come and go (reconnect), SIGTERM stops it cleanly.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vmm_tests::guest::{Guest, GuestConfig, GuestNet};
use vmm_tests::process::TapBackend;

/// Sends `bytes` as a frontend would and returns whether the backend hung up on us.
fn hung_up_after(sock: &std::path::Path, bytes: &[u8]) -> bool {
    let mut s = UnixStream::connect(sock).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(0))
}

fn header(request: u32, flags: u32, size: u32) -> Vec<u8> {
    [request, flags, size]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

#[test]
fn malformed_frontends_are_dropped_and_the_next_one_is_served() {
    // Bound by name, so the namespace and the directory live to the end of the test.
    let TapBackend {
        mut backend,
        sock,
        peer_ip: peer,
        guest_cidr,
        dir,
        ns: _ns,
    } = TapBackend::start("bs");
    // A payload size beyond the protocol's 4 KiB, an unknown request, a bad version, and a
    // connection that closes mid-header.
    assert!(
        hung_up_after(&sock, &header(1, 1, 100_000)),
        "oversized payload"
    );
    assert!(
        hung_up_after(&sock, &header(0xdead, 1, 0)),
        "unknown request"
    );
    assert!(hung_up_after(&sock, &header(1, 0x3, 0)), "bad version");
    drop(UnixStream::connect(&sock).map(|mut s| s.write_all(&[1, 0, 0])));
    assert!(backend.running(), "backend died:\n{}", backend.log());

    // Two real guests, one after the other, on the same backend and transport.
    let rounds = if vmm_tests::guest::uml_usable("the two UML guests after malformed frontends") {
        2
    } else {
        0
    };
    for round in 0..rounds {
        let script = dir.path().join(format!("run{round}.sh"));
        std::fs::write(&script, format!("ping -c 2 -W 3 {peer}\n")).unwrap();
        let mut guest = Guest::uml(&GuestConfig {
            net: GuestNet::VhostUser(&sock),
            ip: Some(&guest_cidr),
            script: &script,
            netns: None,
            mem: "256M",
        });
        let status = guest.wait_exit(Duration::from_secs(60));
        assert_eq!(
            status,
            0,
            "guest {round} failed:\n{}\nbackend:\n{}",
            guest.console(),
            backend.log()
        );
    }
    let log = backend.log();
    assert!(
        log.matches("frontend connected").count() >= 4 + rounds,
        "{log}"
    );

    // SIGTERM: exit 0 and the socket is gone.
    let status = backend
        .terminate(Duration::from_secs(5))
        .expect("did not stop");
    assert!(
        status.success(),
        "exit status {status:?}:\n{}",
        backend.log()
    );
    assert!(!sock.exists(), "socket left behind");
}
