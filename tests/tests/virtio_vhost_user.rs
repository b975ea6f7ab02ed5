//! The virtio-pci transport driven from Rust, the way a guest driver drives it, over a real
//! vhost-user connection to our backend in a thread: the very pairing `vmm --net` makes, minus
//! KVM (the kicks are signalled by hand instead of by an ioeventfd).
//!
//! - ring addresses outside guest memory: the backend is not started, the device reports
//!   DEVICE_NEEDS_RESET, and a reset recovers it;
//! - a frame the "guest" puts in the transmit ring leaves the transport (`fd`, a socketpair)
//!   byte-exact, and a frame arriving there lands in a receive buffer byte-exact;
//! - after a reset (GET_VRING_BASE stops the rings in the backend) a second activation moves
//!   frames again, as after a guest driver reload.

use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;

use vmm_net::backend::NetBackend;
use vmm_net::config::parse_spec;
use vmm_tests::rig::{transport_pair, Rig, DEVICE_NEEDS_RESET, RINGS};

fn rig() -> Rig {
    let (theirs, peer) = transport_pair();
    let spec = parse_spec(&format!("vec0:transport=fd,fd={}", theirs.into_raw_fd())).expect("spec");
    let backend = NetBackend::open(&spec).expect("backend");
    let (ours, theirs) = UnixStream::pair().unwrap();
    std::thread::spawn(move || backend.serve_connection(theirs, None));
    Rig::connect(ours, peer)
}

#[test]
fn hostile_rings_are_refused_then_frames_flow_and_survive_a_reset() {
    let mut rig = rig();
    // Rings past the end of guest memory: not started, NEEDS_RESET.
    let s = rig.bring_up(0x7fff_0000_0000);
    assert_ne!(s & DEVICE_NEEDS_RESET, 0, "status {s:#x}");
    rig.zero_rings();
    assert_eq!(rig.bring_up(RINGS), 0xf);
    rig.transmit(0, 1);
    rig.receive(0, 2);
    rig.transmit(1, 3);
    // A driver reload: reset, fresh rings, and the datapath runs again.
    rig.w(0x14, 1, 0);
    assert_eq!(rig.r(0x14, 1), 0);
    rig.zero_rings();
    assert_eq!(rig.bring_up(RINGS), 0xf);
    rig.transmit(0, 4);
    rig.receive(0, 5);
}
