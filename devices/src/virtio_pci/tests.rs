//! The transport driven the way Linux's `virtio_pci_modern` drives it, against a recording
//! device, plus hostile input.

use std::sync::{Arc, Mutex};

use super::msix::tests::RecordingRouter;
use super::*;

const BAR: u64 = 0xc000_0000;
const GSIS: [u32; 3] = [24, 25, 26];
const FEATURES: u64 = VIRTIO_F_VERSION_1 | (1 << 5) | (1 << 15);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Activation {
    acked: u64,
    /// (size, desc, avail, used, kick is ours, call eventfd's identity)
    queues: Vec<(u16, u64, u64, u64)>,
    kicks: Vec<i32>,
    calls: Vec<i32>,
}

#[derive(Default)]
struct Log {
    activations: Vec<Activation>,
    resets: usize,
    fail_activation: bool,
}

struct Mock(Arc<Mutex<Log>>);

impl VirtioDevice for Mock {
    fn device_type(&self) -> u16 {
        1
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[256, 256]
    }
    fn features(&self) -> u64 {
        FEATURES
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = (offset as u8).wrapping_add(i as u8) ^ 0x50;
        }
    }
    fn activate(&mut self, acked: u64, queues: &[QueueSetup]) -> Result<(), ActivateError> {
        use std::os::fd::AsRawFd;
        let mut log = self.0.lock().unwrap();
        if log.fail_activation {
            return Err(ActivateError::External(
                std::io::Error::other("backend refused").into(),
            ));
        }
        log.activations.push(Activation {
            acked,
            queues: queues
                .iter()
                .map(|q| (q.size, q.desc_table.0, q.avail_ring.0, q.used_ring.0))
                .collect(),
            kicks: queues.iter().map(|q| q.kick.as_raw_fd()).collect(),
            calls: queues.iter().map(|q| q.call.as_raw_fd()).collect(),
        });
        Ok(())
    }
    fn reset(&mut self) {
        self.0.lock().unwrap().resets += 1;
    }
}

fn device() -> (VirtioPciDevice, Arc<Mutex<Log>>, Arc<RecordingRouter>) {
    let log = Arc::new(Mutex::new(Log::default()));
    let router = Arc::new(RecordingRouter::default());
    let dev = VirtioPciDevice::new(Box::new(Mock(log.clone())), BAR, &GSIS, router.clone())
        .expect("device");
    (dev, log, router)
}

fn cfg_read8(d: &mut VirtioPciDevice, off: usize) -> u8 {
    (d.read_config(off / 4) >> ((off % 4) * 8)) as u8
}

fn cfg_read32(d: &mut VirtioPciDevice, off: usize) -> u32 {
    d.read_config(off / 4)
}

fn w(d: &mut VirtioPciDevice, off: u64, len: usize, v: u64) {
    d.write(off, &v.to_le_bytes()[..len]);
}

fn r(d: &mut VirtioPciDevice, off: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    d.read(off, &mut b[..len]);
    u64::from_le_bytes(b)
}

/// (cfg_type, bar, offset, length, notify multiplier) of one virtio capability.
type VirtioCap = (u8, u8, u32, u32, u32);

/// The capability walk a driver does: the virtio caps, and where the MSI-X one is.
fn virtio_caps(d: &mut VirtioPciDevice) -> (Vec<VirtioCap>, Option<usize>) {
    let mut caps = vec![];
    let mut msix = None;
    let mut ptr = cfg_read8(d, 0x34) as usize;
    for _ in 0..48 {
        if ptr == 0 {
            break;
        }
        match cfg_read8(d, ptr) {
            0x09 => caps.push((
                cfg_read8(d, ptr + 3),
                cfg_read8(d, ptr + 4),
                cfg_read32(d, ptr + 8),
                cfg_read32(d, ptr + 12),
                if cfg_read8(d, ptr + 2) >= 20 {
                    cfg_read32(d, ptr + 16)
                } else {
                    0
                },
            )),
            0x11 => msix = Some(ptr),
            other => panic!("unexpected capability {other:#x}"),
        }
        ptr = cfg_read8(d, ptr + 1) as usize;
    }
    (caps, msix)
}

#[test]
fn configuration_space_describes_a_modern_net_device() {
    let (mut d, _, _) = device();
    assert_eq!(cfg_read32(&mut d, 0), 0x1041_1af4);
    assert_eq!(cfg_read32(&mut d, 8), 0x0200_0001, "class net, revision 1");
    assert_ne!(cfg_read32(&mut d, 4) & STATUS_CAP_LIST, 0);
    let (caps, msix) = virtio_caps(&mut d);
    assert_eq!(
        caps,
        vec![
            (1, 0, 0, COMMON_LEN, 0),
            (2, 0, 0x3000, 8, NOTIFY_MULTIPLIER),
            (3, 0, 0x1000, 1, 0),
            (4, 0, 0x2000, 0x1000, 0),
        ]
    );
    let msix = msix.expect("MSI-X capability");
    assert_eq!(cfg_read32(&mut d, msix) >> 16, 2, "3 vectors");
    assert_eq!(cfg_read32(&mut d, msix + 4), 0x4000);
    assert_eq!(cfg_read32(&mut d, msix + 8), 0x5000);

    // BAR sizing: write all ones, read the size mask, restore.
    assert_eq!(cfg_read32(&mut d, 0x10), 0xc000_0004, "64-bit memory BAR");
    d.write_config(4, 0, &[0xff; 4]);
    d.write_config(5, 0, &[0xff; 4]);
    assert_eq!(cfg_read32(&mut d, 0x10), !(BAR_SIZE as u32 - 1) | 0x4);
    assert_eq!(cfg_read32(&mut d, 0x14), 0xffff_ffff);
    d.write_config(4, 0, &0xc000_0000u32.to_le_bytes());
    d.write_config(5, 0, &[0; 4]);
    assert_eq!(cfg_read32(&mut d, 0x10), 0xc000_0004);
}

#[test]
fn bar_is_dead_until_memory_decoding_is_enabled() {
    let (mut d, _, _) = device();
    assert_eq!(r(&mut d, 0x12, 2), 0xffff);
    d.write_config(1, 0, &[0x06, 0]);
    assert_eq!(r(&mut d, 0x12, 2), 2, "num_queues");
}

/// Feature negotiation, queue setup and DRIVER_OK, as Linux does them.
fn bring_up(d: &mut VirtioPciDevice) {
    d.write_config(1, 0, &[0x06, 0]);
    w(d, 0x14, 1, 0);
    w(d, 0x14, 1, 1);
    w(d, 0x14, 1, 3);
    w(d, 0x00, 4, 0);
    assert_eq!(r(d, 0x04, 4), FEATURES & 0xffff_ffff);
    w(d, 0x00, 4, 1);
    assert_eq!(r(d, 0x04, 4), FEATURES >> 32);
    w(d, 0x08, 4, 0);
    w(d, 0x0c, 4, 0xffff_ffff); // asks for everything: only offered bits stick
    w(d, 0x08, 4, 1);
    w(d, 0x0c, 4, 1);
    w(d, 0x14, 1, 0xb);
    assert_eq!(r(d, 0x14, 1), 0xb, "FEATURES_OK accepted");
    // MSI-X on, vectors 0 (config), 1 and 2 (queues), all unmasked.
    for v in 0..3u64 {
        w(d, MSIX_TABLE_OFFSET + v * 16, 4, 0xfee0_0000);
        w(d, MSIX_TABLE_OFFSET + v * 16 + 8, 4, 0x30 + v);
        w(d, MSIX_TABLE_OFFSET + v * 16 + 12, 4, 0);
    }
    let ctl = cfg_read32(d, 0x84) | (u32::from(msix::CTRL_ENABLE) << 16);
    d.write_config(0x21, 0, &ctl.to_le_bytes());
    w(d, 0x10, 2, 0);
    for q in 0..2u64 {
        w(d, 0x16, 2, q);
        assert_eq!(r(d, 0x18, 2), 256);
        w(d, 0x18, 2, 128);
        w(d, 0x1a, 2, q + 1);
        assert_eq!(r(d, 0x1a, 2), q + 1);
        assert_eq!(r(d, 0x1e, 2), q, "notify offset");
        let base = 0x10_0000 * (q + 1);
        w(d, 0x20, 4, base);
        w(d, 0x24, 4, 0);
        w(d, 0x28, 8, base + 0x1000);
        w(d, 0x30, 4, base + 0x2000);
        w(d, 0x34, 4, 1);
        w(d, 0x1c, 2, 1);
    }
    w(d, 0x14, 1, 0xf);
}

#[test]
fn driver_ok_activates_the_device_with_what_the_guest_programmed() {
    use std::os::fd::AsRawFd;
    let (mut d, log, router) = device();
    bring_up(&mut d);
    assert_eq!(r(&mut d, 0x14, 1), 0xf);
    let log = log.lock().unwrap();
    assert_eq!(log.activations.len(), 1);
    let a = &log.activations[0];
    assert_eq!(a.acked, FEATURES);
    assert_eq!(
        a.queues,
        vec![
            (128, 0x10_0000, 0x10_1000, 0x1_0010_2000),
            (128, 0x20_0000, 0x20_1000, 0x1_0020_2000),
        ]
    );
    let kicks: Vec<i32> = d.notifiers().map(|(_, e)| e.as_raw_fd()).collect();
    assert_eq!(a.kicks, kicks);
    assert_eq!(
        d.notifiers().map(|(o, _)| o).collect::<Vec<_>>(),
        vec![0x3000, 0x3004]
    );
    let calls: Vec<i32> = (1..3)
        .map(|v| d.msix.irqfd(v).unwrap().as_raw_fd())
        .collect();
    assert_eq!(a.calls, calls, "each queue's call fd is its vector's irqfd");
    let routed: Vec<u32> = router
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|(g, m)| {
            assert!(m.is_some());
            *g
        })
        .collect();
    assert_eq!(routed, vec![24, 25, 26]);
}

#[test]
fn queue_registers_freeze_at_driver_ok_and_reset_restarts() {
    let (mut d, log, _) = device();
    bring_up(&mut d);
    w(&mut d, 0x16, 2, 0);
    w(&mut d, 0x18, 2, 4);
    w(&mut d, 0x20, 8, 0xdead_0000);
    assert_eq!(r(&mut d, 0x18, 2), 128);
    assert_eq!(r(&mut d, 0x20, 8), 0x10_0000);
    // A notify write that reached the VMM (no ioeventfd) still kicks the queue.
    w(&mut d, NOTIFY_OFFSET + 4, 2, 1);
    assert_eq!(d.kicks[1].read().unwrap(), 1);
    w(&mut d, 0x14, 1, 0);
    assert_eq!(r(&mut d, 0x14, 1), 0);
    assert_eq!(log.lock().unwrap().resets, 1);
    assert_eq!(r(&mut d, 0x18, 2), 256, "sizes back to the maximum");
    assert_eq!(r(&mut d, 0x1c, 2), 0);
    bring_up(&mut d);
    assert_eq!(log.lock().unwrap().activations.len(), 2);
}

#[test]
fn bad_negotiations_and_queues_are_refused_not_started() {
    // No VERSION_1: FEATURES_OK stays clear, DRIVER_OK is refused.
    let (mut d, log, _) = device();
    d.write_config(1, 0, &[0x06, 0]);
    w(&mut d, 0x14, 1, 3);
    w(&mut d, 0x08, 4, 0);
    w(&mut d, 0x0c, 4, 1 << 5);
    w(&mut d, 0x14, 1, 0xb);
    assert_eq!(r(&mut d, 0x14, 1), 3);
    w(&mut d, 0x14, 1, 0xf);
    assert_eq!(r(&mut d, 0x14, 1) as u8 & status::DEVICE_NEEDS_RESET, 0x40);
    assert!(log.lock().unwrap().activations.is_empty());

    // A queue size that is not a power of two: NEEDS_RESET, device not started.
    let (mut d, log, _) = device();
    bring_up(&mut d);
    w(&mut d, 0x14, 1, 0);
    d.write_config(1, 0, &[0x06, 0]);
    w(&mut d, 0x14, 1, 3);
    w(&mut d, 0x08, 4, 1);
    w(&mut d, 0x0c, 4, 1);
    w(&mut d, 0x14, 1, 0xb);
    for q in 0..2 {
        w(&mut d, 0x16, 2, q);
        w(&mut d, 0x18, 2, 100);
        w(&mut d, 0x1c, 2, 1);
    }
    w(&mut d, 0x14, 1, 0xf);
    assert_eq!(r(&mut d, 0x14, 1), 0x4f);
    assert_eq!(log.lock().unwrap().activations.len(), 1, "only the first");

    // The backend refuses: NEEDS_RESET.
    let (mut d, log, _) = device();
    log.lock().unwrap().fail_activation = true;
    bring_up(&mut d);
    assert_eq!(r(&mut d, 0x14, 1), 0x4f);
    // A vector past the table reads back as NO_VECTOR.
    w(&mut d, 0x14, 1, 0);
    w(&mut d, 0x16, 2, 0);
    w(&mut d, 0x1a, 2, 3);
    assert_eq!(r(&mut d, 0x1a, 2), u64::from(NO_VECTOR));
    w(&mut d, 0x16, 2, 7);
    assert_eq!(r(&mut d, 0x18, 2), 0, "no queue 7");
}

#[test]
fn device_config_is_passed_through() {
    let (mut d, _, _) = device();
    d.write_config(1, 0, &[0x06, 0]);
    assert_eq!(r(&mut d, DEVICE_CFG_OFFSET + 2, 2), 0x5352);
}

#[test]
fn construction_errors_name_the_problem() {
    let log = Arc::new(Mutex::new(Log::default()));
    let router: Arc<dyn MsiRouter> = Arc::new(RecordingRouter::default());
    let e = VirtioPciDevice::new(Box::new(Mock(log.clone())), BAR, &[1, 2], router.clone())
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "2 queues need 3 MSI-X vectors, 2 GSIs were given"
    );
    let e = VirtioPciDevice::new(Box::new(Mock(log)), BAR + 0x1000, &GSIS, router)
        .err()
        .unwrap();
    assert!(e.to_string().contains("not aligned"), "{e}");
}

/// Random configuration-space and BAR traffic: no panic, and the identity survives.
#[test]
fn garbage_from_the_guest_never_panics() {
    let (mut d, _, _) = device();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..200_000u32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = [0usize, 1, 2, 3, 4, 8, 9][(x % 7) as usize];
        let data: Vec<u8> = x.to_be_bytes().iter().cycle().take(len).copied().collect();
        match (x >> 8) % 4 {
            0 => {
                let reg = ((x >> 16) % 80) as usize;
                d.write_config(reg, ((x >> 24) % 6) as usize, &data);
                d.read_config(reg);
            }
            1 => {
                let off = (x >> 16) % (BAR_SIZE + 0x100);
                d.write(off, &data);
            }
            2 => {
                let off = (x >> 16) % 0x40;
                d.write(off, &data);
            }
            _ => {
                let off = if i % 2 == 0 {
                    (x >> 16) % (BAR_SIZE + 0x100)
                } else {
                    x
                };
                let mut buf = vec![0u8; len];
                d.read(off, &mut buf);
            }
        }
    }
    assert_eq!(cfg_read32(&mut d, 0), 0x1041_1af4);
}

/// A device whose configuration changed on its own (a vhost-user NIC's link): a new
/// config_generation always, and an interrupt on the configuration vector once the driver
/// runs (vector 0 in `bring_up`), none before.
#[test]
fn a_configuration_change_interrupts_a_running_driver() {
    let (mut d, _, _) = device();
    d.write_config(1, 0, &[0x06, 0]);
    let before = r(&mut d, 0x15, 1);
    d.config_changed();
    assert_eq!(
        r(&mut d, 0x15, 1),
        (before + 1) & 0xff,
        "config_generation moves"
    );
    assert!(
        d.msix.irqfd(0).unwrap().read().is_err(),
        "no interrupt before DRIVER_OK"
    );
    bring_up(&mut d);
    d.config_changed();
    assert_eq!(d.msix.irqfd(0).unwrap().read().unwrap(), 1, "config vector");
    assert!(
        d.msix.irqfd(1).unwrap().read().is_err(),
        "queue vectors untouched"
    );
}
