//! A real Linux guest (UML's `virtio_uml`, a vhost-user frontend) on our backend: ping both
//! ways and iperf3 TCP both ways, over `raw` (veth into a namespace), `tap` and `hybrid`
//! (the last with `busy_poll=50`: the worker looks on after each event, holding the guest's
//! transmit kicks off meanwhile; the tap's worker pinned with `affinity=`).

use std::time::Duration;
use vmm_net::backend::affinity;
use vmm_tests::guest::{Guest, GuestConfig, GuestNet};
use vmm_tests::netns::NetNs;
use vmm_tests::process::{net_backend, Daemon, TapBackend};
use vmm_tests::{assert_workers_on, unique_subnet, TempDir};

/// How the backend reaches the peer namespace.
enum Host {
    Raw,
    Tap,
    Hybrid,
}

fn guest_pings_and_iperfs(host: Host) {
    if !vmm_tests::guest::uml_usable("UML guest on our backend") {
        return;
    }
    let own = affinity::allowed().expect("this process's CPUs");
    let pinned = (own.cpus().len() >= 2).then(|| *own.cpus().last().unwrap());
    let ns = NetNs::new();
    let (a, b) = unique_subnet();
    let peer = format!("10.{a}.{b}.1");
    let guest_ip = format!("10.{a}.{b}.2");
    let peer_cidr = format!("{peer}/24");
    let spec = match host {
        Host::Raw => {
            let (_peer_end, backend_end) = ns.veth_pair(Some(&peer_cidr));
            // Offloads on: the veth peer hands over TSO frames, which pass through whole.
            format!("vec0:transport=raw,ifname={backend_end},gro=1")
        }
        // No offloads: the host segments and checksums before the tap. The worker pinned to
        // the last CPU (where there are two or more), checked below while the guest waits.
        Host::Tap => format!(
            "vec0:transport=tap,ifname={}{}",
            ns.tap(Some(&peer_cidr)),
            pinned.map_or(String::new(), |cpu| format!(",affinity={cpu}"))
        ),
        Host::Hybrid => format!(
            "vec0:transport=hybrid,ifname={},gro=1,busy_poll=50",
            ns.tap(Some(&peer_cidr))
        ),
    };
    let dir = TempDir::new("ug");
    let sock = dir.path().join("net.sock");
    let mut backend = net_backend(
        Some(ns.name()),
        &sock,
        &spec,
        dir.path().join("backend.log"),
    );
    let _iperf = Daemon::spawn(
        {
            let mut c = ns.command("iperf3");
            c.args(["-s", "-B", &peer]);
            c
        },
        dir.path().join("iperf3.log"),
    );
    let script = dir.path().join("run.sh");
    std::fs::write(
        &script,
        format!(
            "set -e\n\
             ping -c 3 -W 3 {peer}\n\
             iperf3 -c {peer} -t 2\n\
             iperf3 -c {peer} -t 2 -R\n\
             echo READY-FOR-HOST-PING\n\
             i=0; while [ ! -e /host/done ] && [ $i -lt 150 ]; do sleep 0.2; i=$((i+1)); done\n\
             [ -e /host/done ]\n"
        ),
    )
    .expect("write guest script");
    let mut guest = Guest::uml(&GuestConfig {
        net: GuestNet::VhostUser(&sock),
        ip: Some(&format!("{guest_ip}/24")),
        script: &script,
        netns: None,
        mem: "256M",
    });
    guest.expect("READY-FOR-HOST-PING", Duration::from_secs(90));
    if let (Host::Tap, Some(cpu)) = (&host, pinned) {
        // The worker moved the guest's frames both ways, pinned; the rest stay unpinned.
        assert_workers_on(backend.pid(), &cpu.to_string(), &own.to_string(), &|| {
            backend.log()
        });
    }
    let (ok, out) = ns.run("ping", &["-c", "3", "-W", "3", &guest_ip]);
    std::fs::write(dir.path().join("done"), b"").expect("write done");
    let status = guest.wait_exit(Duration::from_secs(30));
    assert!(
        ok,
        "host -> guest ping failed:\n{out}\nbackend log:\n{}",
        backend.log()
    );
    assert_eq!(
        status,
        0,
        "guest script failed; console:\n{}\nbackend log:\n{}",
        guest.console(),
        backend.log()
    );
    let console = guest.console();
    assert!(console.contains("3 packets received"), "{console}");
    assert!(
        console.matches("receiver").count() >= 2,
        "two iperf3 runs expected:\n{console}"
    );
    assert!(backend.running(), "backend died:\n{}", backend.log());
}

#[test]
fn uml_guest_over_raw() {
    guest_pings_and_iperfs(Host::Raw);
}

#[test]
fn uml_guest_over_tap() {
    guest_pings_and_iperfs(Host::Tap);
}

#[test]
fn uml_guest_over_hybrid() {
    guest_pings_and_iperfs(Host::Hybrid);
}

/// QEMU 7.2 (the second real vhost-user frontend) booting Debian's cloud kernel under TCG,
/// with shared memfd memory and `-netdev vhost-user,queues=2` on two vCPUs: the guest pings
/// the host through our backend on a multi-queue tap, and runs both queue pairs (QEMU keeps
/// the control queue and enables the second pair's rings, which the backend then serves).
#[test]
fn qemu_guest_pings_over_tap_with_two_queue_pairs() {
    // Everything it holds lives to the end of the test: the namespace, the tap, the backend.
    let mut t = TapBackend::with_queues("qg", 2);
    let backend = &mut t.backend;
    let mut guest = Guest::qemu_with_queues(
        &t.sock,
        &t.guest_cidr,
        &["ping", "-c", "3", "-W", "3", &t.peer_ip],
        2,
    );
    let status = guest.wait_exit(Duration::from_secs(120));
    assert_eq!(
        status,
        0,
        "guest ping failed; console:\n{}\nbackend log:\n{}",
        guest.console(),
        backend.log()
    );
    assert!(guest.console().contains("3 packets received"));
    assert!(backend.running(), "backend died:\n{}", backend.log());
    assert!(
        backend.log().contains("tap: queue pair 1 served"),
        "the second pair never ran:\n{}",
        backend.log()
    );
}
