//! A virtio-net device driven from Rust the way a guest driver drives it: the virtio-pci
//! transport over a real vhost-user connection to a backend (in a thread, or a `vmm
//! net-backend` process), with the backend's `fd` transport on a seqpacket socketpair whose
//! other end the test holds. Frames cross both ways and are checked byte-exact.

use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_devices::pci::PciDevice;
use vmm_devices::vhost_user::net::VhostUserNetDevice;
use vmm_devices::virtio_pci::{status, MsiMessage, MsiRouter, VirtioPciDevice, MSIX_TABLE_OFFSET};
use vmm_devices::BusDevice;
use vmm_sys_util::eventfd::EventFd;
use vmm_vmm::GuestRam;

use crate::peer::test_frame;

pub use status::DEVICE_NEEDS_RESET;

pub const HDR: usize = 12;
pub const QSIZE: u64 = 16;
pub const RINGS: u64 = 0x10_0000;
pub const TX_BUF: u64 = 0x20_0000;
pub const RX_BUF: u64 = 0x30_0000;
const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x21];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x22];

/// Interrupts are not under test here (the VMM tests check MSI-X delivery end to end).
struct NoInterrupts;

impl MsiRouter for NoInterrupts {
    fn unmask(&self, _: u32, _: MsiMessage, _: &EventFd) -> std::io::Result<()> {
        Ok(())
    }
    fn mask(&self, _: u32, _: &EventFd) -> std::io::Result<()> {
        Ok(())
    }
}

/// A virtio-net device in 16 MiB of guest RAM, its vhost-user frontend connected over
/// `stream`, at BAR 0xc000_0000 with three MSI-X vectors that go nowhere.
pub fn net_device(stream: UnixStream) -> (VirtioPciDevice, GuestRam) {
    let ram = GuestRam::new(16).expect("guest memory");
    let net = VhostUserNetDevice::from_stream(stream, ram.memory().clone())
        .expect("vhost-user handshake");
    let dev = VirtioPciDevice::new(
        Box::new(net),
        0xc000_0000,
        &[24, 25, 26],
        Arc::new(NoInterrupts),
    )
    .expect("virtio-pci device");
    (dev, ram)
}

/// The device, its guest memory, and the transport's other end.
pub struct Rig {
    pub dev: VirtioPciDevice,
    pub ram: GuestRam,
    pub peer: UnixDatagram,
}

/// A seqpacket socketpair: the end for the backend's `fd` transport, and the test's end.
pub fn transport_pair() -> (OwnedFd, UnixDatagram) {
    let (theirs, ours) = vmm_net::transport::seqpacket_pair().expect("socketpair");
    let peer = UnixDatagram::from(ours);
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    (theirs, peer)
}

impl Rig {
    /// A device on a vhost-user connection (`stream`) to a backend whose transport's other
    /// end is `peer`; MSI-X on with every vector masked, as a driver leaves it before it
    /// requests interrupts.
    pub fn connect(stream: UnixStream, peer: UnixDatagram) -> Rig {
        let (dev, ram) = net_device(stream);
        let mut r = Rig { dev, ram, peer };
        r.dev.write_config(1, 0, &[0x06, 0]);
        r.dev.write_config(0x21, 2, &[0, 0x80]);
        r.w(MSIX_TABLE_OFFSET + 12, 4, 1);
        r
    }

    /// Brings the device up and moves frames both ways, byte-exact: two out, one in.
    pub fn frames_flow(&mut self) {
        self.zero_rings();
        let s = self.bring_up(RINGS);
        assert_eq!(s, 0xf, "device status {s:#x}");
        self.transmit(0, 1);
        self.receive(0, 2);
        self.transmit(1, 3);
    }

    pub fn w(&mut self, off: u64, len: usize, v: u64) {
        self.dev.write(off, &v.to_le_bytes()[..len]);
    }

    pub fn r(&mut self, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.dev.read(off, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    /// Reset, VERSION_1 only, both queues at `rings` (+0x3000 for the second), DRIVER_OK.
    /// Returns the device status.
    pub fn bring_up(&mut self, rings: u64) -> u8 {
        self.bring_up_with(rings, 0)
    }

    /// [`Rig::bring_up`], the driver also acking `features` (bits below 32).
    pub fn bring_up_with(&mut self, rings: u64, features: u32) -> u8 {
        self.w(0x14, 1, 0);
        self.w(0x14, 1, 3);
        self.w(0x08, 4, 0);
        self.w(0x0c, 4, u64::from(features));
        self.w(0x08, 4, 1);
        self.w(0x0c, 4, 1);
        self.w(0x14, 1, 0xb);
        for q in 0..2u64 {
            let base = rings + q * 0x3000;
            self.w(0x16, 2, q);
            self.w(0x18, 2, QSIZE);
            self.w(0x20, 8, base);
            self.w(0x28, 8, base + 0x1000);
            self.w(0x30, 8, base + 0x2000);
            self.w(0x1c, 2, 1);
        }
        self.w(0x14, 1, 0xf);
        self.r(0x14, 1) as u8
    }

    pub fn zero_rings(&self) {
        self.ram
            .memory()
            .write_slice(&[0u8; 0x6000], GuestAddress(RINGS))
            .unwrap();
    }

    pub fn put<T: vm_memory::ByteValued>(&self, addr: u64, v: T) {
        self.ram.memory().write_obj(v, GuestAddress(addr)).unwrap();
    }

    pub fn get_u16(&self, addr: u64) -> u16 {
        self.ram.memory().read_obj(GuestAddress(addr)).unwrap()
    }

    pub fn get_u32(&self, addr: u64) -> u32 {
        self.ram.memory().read_obj(GuestAddress(addr)).unwrap()
    }

    /// `len` bytes of guest memory at `addr`.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.ram
            .memory()
            .read_slice(&mut b, GuestAddress(addr))
            .unwrap();
        b
    }

    /// Makes descriptor 0 of queue `q` (`buf`, `len`, `flags`) available as entry `idx`, and
    /// kicks the device.
    pub fn offer(&mut self, q: u64, idx: u16, buf: u64, len: u32, flags: u16) {
        self.publish(q, idx, buf, len, flags);
        self.kick(q);
    }

    /// [`Rig::offer`] without the kick: the chain is in the ring, and the device is not told.
    pub fn publish(&mut self, q: u64, idx: u16, buf: u64, len: u32, flags: u16) {
        let base = RINGS + q * 0x3000;
        self.put(base, buf);
        self.put(base + 8, len);
        self.put(base + 12, flags);
        self.put(base + 14, 0u16);
        self.put(base + 0x1000 + 4 + 2 * (u64::from(idx) % QSIZE), 0u16);
        self.put(base + 0x1000 + 2, idx.wrapping_add(1));
    }

    /// Tells the device that queue `q` has new chains.
    pub fn kick(&mut self, q: u64) {
        let (_, kick) = self.dev.notifiers().nth(q as usize).unwrap();
        kick.write(1).unwrap();
    }

    /// Queue `q`'s used index.
    pub fn used_idx(&self, q: u64) -> u16 {
        self.get_u16(RINGS + q * 0x3000 + 0x2000 + 2)
    }

    /// Waits until queue `q`'s used index reaches `want`.
    pub fn wait_used(&self, q: u64, want: u16) {
        let at = RINGS + q * 0x3000 + 0x2000 + 2;
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.get_u16(at) != want {
            assert!(Instant::now() < deadline, "queue {q}: used index stuck");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A frame through the transmit queue, out of the transport.
    pub fn transmit(&mut self, idx: u16, seed: u8) {
        let frame = guest_sends(self, idx, seed, GUEST_MAC, HOST_MAC);
        let mut out = vec![0u8; 2048];
        let n = self.peer.recv(&mut out).expect("frame from the transport");
        assert_eq!(&out[..n], &frame[..], "transmitted frame");
    }

    /// A frame from the transport into a receive buffer.
    pub fn receive(&mut self, idx: u16, seed: u8) {
        let frame = test_frame(1514, HOST_MAC, GUEST_MAC, seed);
        self.offer(0, idx, RX_BUF, 2048, 2);
        self.peer.send(&frame).unwrap();
        self.wait_used(0, idx + 1);
        let entry = RINGS + 0x2000 + 4 + 8 * (u64::from(idx) % QSIZE);
        let len: u32 = self.ram.memory().read_obj(GuestAddress(entry + 4)).unwrap();
        assert_eq!(len as usize, HDR + frame.len());
        let mut got = vec![0u8; frame.len()];
        self.ram
            .memory()
            .read_slice(&mut got, GuestAddress(RX_BUF + HDR as u64))
            .unwrap();
        assert_eq!(got, frame, "received frame");
    }
}

/// A vhost-user frontend (this rig) connected to a backend listening on `sock`, the device up.
/// The rig's own transport end is not used: frames go through the backend's real transport.
pub fn frontend(sock: &std::path::Path) -> Rig {
    let stream = UnixStream::connect(sock).expect("connect to the backend");
    let (_unused, peer) = transport_pair();
    let mut rig = Rig::connect(stream, peer);
    rig.zero_rings();
    assert_eq!(rig.bring_up(RINGS), 0xf, "device status");
    rig
}

/// The guest sends a test frame (`seed` picks its length and bytes) from `src` to `dst` as
/// transmit entry `idx`; returns the frame.
pub fn guest_sends(rig: &mut Rig, idx: u16, seed: u8, src: [u8; 6], dst: [u8; 6]) -> Vec<u8> {
    let frame = test_frame(60 + usize::from(seed) * 10, src, dst, seed);
    guest_sends_frame(rig, idx, &frame);
    frame
}

/// The guest sends `frame` (behind a zero virtio-net header) as transmit entry `idx`; returns
/// once the device used the chain.
pub fn guest_sends_frame(rig: &mut Rig, idx: u16, frame: &[u8]) {
    guest_sends_with_header(rig, idx, [0; HDR], frame);
}

/// [`guest_sends_frame`] behind the virtio-net header `hdr` (offloads: a partial checksum,
/// GSO).
pub fn guest_sends_with_header(rig: &mut Rig, idx: u16, hdr: [u8; HDR], frame: &[u8]) {
    let mut buf = hdr.to_vec();
    buf.extend_from_slice(frame);
    rig.ram
        .memory()
        .write_slice(&buf, GuestAddress(TX_BUF))
        .unwrap();
    rig.offer(1, idx, TX_BUF, buf.len() as u32, 0);
    rig.wait_used(1, idx + 1);
}

/// The frame in receive entry `idx`, which the device has used (its virtio-net header off).
pub fn used_frame(rig: &Rig, idx: u16) -> Vec<u8> {
    let entry = RINGS + 0x2000 + 4 + 8 * (u64::from(idx) % QSIZE);
    let len: u32 = rig.ram.memory().read_obj(GuestAddress(entry + 4)).unwrap();
    let mut got = vec![0u8; (len as usize).saturating_sub(HDR)];
    rig.ram
        .memory()
        .read_slice(&mut got, GuestAddress(RX_BUF + HDR as u64))
        .unwrap();
    got
}

/// The guest receives `frame` byte-exact, skipping what else the host sent (an IPv6 router
/// solicitation...); `idx` is the next receive entry.
pub fn guest_receives(rig: &mut Rig, idx: &mut u16, frame: &[u8]) {
    guest_receives_matching(rig, idx, |got| got == frame);
}

/// The guest receives a frame `want` accepts, skipping others (16 at most); returns it.
pub fn guest_receives_matching(
    rig: &mut Rig,
    idx: &mut u16,
    want: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    for _ in 0..16 {
        rig.offer(0, *idx, RX_BUF, 2048, 2);
        rig.wait_used(0, *idx + 1);
        let got = used_frame(rig, *idx);
        *idx += 1;
        if want(&got) {
            return got;
        }
    }
    panic!("the frame never reached the guest");
}
