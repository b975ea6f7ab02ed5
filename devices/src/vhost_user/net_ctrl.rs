//! virtio-net's control queue, served by the VMM for a vhost-user net device with several queue
//! pairs (`VIRTIO_NET_F_MQ` needs `VIRTIO_NET_F_CTRL_VQ`).
//!
//! A vhost-user backend never sees the control queue: the frontend keeps it (QEMU and DPDK do
//! the same) and turns the guest's `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET` into `SET_VRING_ENABLE`
//! for the backend's rings. It is the only command served: the device offers no other control
//! feature (receive modes, MAC and VLAN filters, announcements), so anything else is answered
//! `VIRTIO_NET_ERR`. The guest's descriptors are hostile input: a chain that is malformed (no
//! writable byte for the ack, a command longer than any valid one, addresses outside memory)
//! is returned used with nothing written where nothing can be, and counted in the log.

use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::frontend::{FrontendError, RingSwitch};
use crate::virtio_pci::{ready_queue, wait_kick, QueueSetup};

/// `VIRTIO_NET_CTRL_MQ` and its `VQ_PAIRS_SET` command.
const CTRL_MQ: u8 = 4;
const MQ_VQ_PAIRS_SET: u8 = 0;
/// The control queue's size (Linux asks for no more).
pub(crate) const QUEUE_MAX: u16 = 64;
/// The ack byte.
const OK: u8 = 0;
const ERR: u8 = 1;
/// The longest command read: class, command and a 16-bit argument, with room to spare. A
/// longer one is no command this device knows.
const MAX_COMMAND: usize = 64;

/// What one chain asked, once its readable bytes are read.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    /// `VQ_PAIRS_SET` with this many pairs.
    Pairs(u16),
    /// Anything else: class and command, for the log.
    Other(u8, u8),
    /// Fewer than two bytes, or more than [`MAX_COMMAND`].
    Malformed,
}

fn parse(bytes: &[u8]) -> Command {
    match bytes {
        [CTRL_MQ, MQ_VQ_PAIRS_SET, lo, hi, ..] => Command::Pairs(u16::from_le_bytes([*lo, *hi])),
        [class, cmd, ..] if bytes.len() <= MAX_COMMAND => Command::Other(*class, *cmd),
        _ => Command::Malformed,
    }
}

/// Commands answered `VIRTIO_NET_ERR` or returned without an ack, counted: a guest can send
/// them as fast as it likes, so only the first is logged (a warning), and the count when the
/// queue stops.
#[derive(Debug, Default)]
pub(crate) struct Refused {
    pub count: u64,
}

impl Refused {
    fn note(&mut self, what: std::fmt::Arguments) {
        self.count += 1;
        if self.count == 1 {
            log::warn!("virtio-net control queue: {what} (further refusals are only counted)");
        }
    }
}

/// Serves every chain available on the control queue; `set_pairs` switches the backend's
/// rings to the first `n` pairs and says whether that worked. Returns whether a chain was
/// used (the guest is to be interrupted).
pub(crate) fn process(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    max_pairs: u16,
    set_pairs: &mut dyn FnMut(u16) -> bool,
    refused: &mut Refused,
) -> bool {
    let mut used = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let mut command = Vec::new();
        // Unreadable, or longer than any command.
        let mut malformed = false;
        let mut ack = None;
        for d in chain {
            if d.is_write_only() {
                if d.len() > 0 {
                    ack = Some(d.addr());
                }
                continue;
            }
            // Once malformed, the rest is only walked for the ack byte.
            if malformed {
                continue;
            }
            let take = (d.len() as usize).min(MAX_COMMAND + 1 - command.len());
            let mut buf = vec![0u8; take];
            if mem.read_slice(&mut buf, d.addr()).is_err() {
                malformed = true;
                continue;
            }
            command.extend_from_slice(&buf);
            malformed = command.len() > MAX_COMMAND;
        }
        let command = if malformed {
            Command::Malformed
        } else {
            parse(&command)
        };
        let status = match command {
            Command::Pairs(n) if (1..=max_pairs).contains(&n) => {
                if set_pairs(n) {
                    OK
                } else {
                    ERR
                }
            }
            Command::Pairs(n) => {
                refused.note(format_args!("{n} queue pairs asked, 1..={max_pairs} exist"));
                ERR
            }
            Command::Other(class, cmd) => {
                refused.note(format_args!("class {class} command {cmd} is not offered"));
                ERR
            }
            Command::Malformed => {
                refused.note(format_args!("a malformed command chain (head {head})"));
                ERR
            }
        };
        let written = match ack {
            Some(at) if mem.write_obj(status, at).is_ok() => 1,
            _ => {
                refused.note(format_args!("no writable ack byte (head {head})"));
                0
            }
        };
        if queue.add_used(mem, head, written).is_err() {
            refused.note(format_args!("chain {head} cannot be returned"));
        }
        used = true;
    }
    used
}

/// Serves, on this thread, every chain a control queue of `size` at these guest addresses
/// offers, as the queue's thread does after a kick, for a device of `max_pairs` pairs; returns
/// the pair counts the backend would have been asked to run. For fuzz targets, whose input is
/// the guest's memory: a queue the transport would refuse is an error, as at activation.
#[doc(hidden)]
pub fn serve_once(
    mem: &GuestMemoryMmap,
    size: u16,
    rings: [vm_memory::GuestAddress; 3],
    max_pairs: u16,
) -> Result<Vec<u16>, String> {
    let mut queue = ready_queue(mem, QUEUE_MAX, size, rings).map_err(|e| e.to_string())?;
    let mut asked = Vec::new();
    let mut refused = Refused::default();
    process(
        &mut queue,
        mem,
        max_pairs,
        &mut |n| {
            asked.push(n);
            true
        },
        &mut refused,
    );
    Ok(asked)
}

/// The control queue's thread: serves the queue on each kick until stopped.
pub(crate) struct CtrlQueue {
    thread: Option<JoinHandle<()>>,
    stop: EventFd,
}

impl CtrlQueue {
    /// Starts serving `setup` (the device's last queue), `max_pairs` pairs through `rings`.
    pub fn start(
        setup: &QueueSetup,
        index: usize,
        mem: &GuestMemoryMmap,
        max_pairs: u16,
        rings: RingSwitch,
    ) -> Result<CtrlQueue, FrontendError> {
        let bad = |reason: String| FrontendError::OwnQueue { index, reason };
        let mut queue = ready_queue(mem, QUEUE_MAX, setup.size, setup.rings())
            .map_err(|e| bad(e.to_string()))?;
        let kick = setup.kick.try_clone().map_err(FrontendError::EventFd)?;
        let call = setup.call.try_clone().map_err(FrontendError::EventFd)?;
        let stop = EventFd::new(EFD_NONBLOCK).map_err(FrontendError::EventFd)?;
        let stopped = stop.try_clone().map_err(FrontendError::EventFd)?;
        let mem = mem.clone();
        let thread = std::thread::Builder::new()
            .name("virtio-net ctrl".into())
            .spawn(move || {
                let mut set_pairs = |n: u16| match rings.enable_first(usize::from(n) * 2) {
                    Ok(()) => {
                        log::info!("virtio-net: the guest runs {n} queue pairs");
                        true
                    }
                    Err(e) => {
                        log::warn!("virtio-net: switching to {n} queue pairs: {e}");
                        false
                    }
                };
                let mut refused = Refused::default();
                loop {
                    match wait_kick(&kick, &stopped) {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(e) => {
                            log::error!("virtio-net control queue: poll failed, stopping: {e}");
                            break;
                        }
                    }
                    if process(&mut queue, &mem, max_pairs, &mut set_pairs, &mut refused) {
                        if let Err(e) = call.write(1) {
                            log::warn!("virtio-net control queue: cannot interrupt: {e}");
                        }
                    }
                }
                if refused.count > 0 {
                    log::info!(
                        "virtio-net control queue: {} command(s) refused",
                        refused.count
                    );
                }
            })
            .map_err(|e| bad(format!("starting its thread: {e}")))?;
        Ok(CtrlQueue {
            thread: Some(thread),
            stop,
        })
    }
}

impl Drop for CtrlQueue {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use vm_memory::GuestAddress;

    const F_WRITE: u16 = 2;
    const CMD: u64 = 0x10_000;
    const ACK: u64 = 0x11_000;

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    /// Runs one chain (linked here) with `command` at CMD; returns the ack byte, the used
    /// length, the pairs asked of the backend, and the refusals counted.
    fn run(command: &[u8], chain: &[RawDescriptor]) -> (u8, u32, Vec<u16>, u64) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_000)]).unwrap();
        mem.write_slice(command, GuestAddress(CMD)).unwrap();
        mem.write_obj(0xaau8, GuestAddress(ACK)).unwrap();
        let (vq, mut q) = crate::mock_chain::queue_with_chain(&mem, chain);
        let mut asked = Vec::new();
        let mut refused = Refused::default();
        assert!(process(
            &mut q,
            &mem,
            4,
            &mut |n| {
                asked.push(n);
                true
            },
            &mut refused
        ));
        let used = vq.used().ring().ref_at(0).unwrap().load();
        let ack: u8 = mem.read_obj(GuestAddress(ACK)).unwrap();
        (ack, used.len(), asked, refused.count)
    }

    #[test]
    fn pairs_set_switches_the_rings_and_acks_ok() {
        let chain = [desc(CMD, 4, 0), desc(ACK, 1, F_WRITE)];
        assert_eq!(run(&[4, 0, 2, 0], &chain), (OK, 1, vec![2], 0));
        // Header and argument in two descriptors, as Linux sends them.
        let chain = [desc(CMD, 2, 0), desc(CMD + 2, 2, 0), desc(ACK, 1, F_WRITE)];
        assert_eq!(run(&[4, 0, 4, 0], &chain), (OK, 1, vec![4], 0));
    }

    #[test]
    fn out_of_range_unknown_and_malformed_commands_are_refused() {
        let chain = [desc(CMD, 4, 0), desc(ACK, 1, F_WRITE)];
        assert_eq!(run(&[4, 0, 0, 0], &chain), (ERR, 1, vec![], 1));
        assert_eq!(run(&[4, 0, 5, 0], &chain), (ERR, 1, vec![], 1));
        assert_eq!(run(&[0, 0, 1, 0], &chain), (ERR, 1, vec![], 1), "rx mode");
        let short = [desc(CMD, 1, 0), desc(ACK, 1, F_WRITE)];
        assert_eq!(run(&[4], &short), (ERR, 1, vec![], 1));
        let long = [desc(CMD, 4096, 0), desc(ACK, 1, F_WRITE)];
        assert_eq!(run(&[4, 0, 2, 0], &long), (ERR, 1, vec![], 1));
        let outside = [desc(0x1_0000_0000, 4, 0), desc(ACK, 1, F_WRITE)];
        assert_eq!(run(&[], &outside), (ERR, 1, vec![], 1));
    }

    #[test]
    fn a_chain_without_an_ack_byte_is_returned_unwritten() {
        let chain = [desc(CMD, 4, 0)];
        assert_eq!(run(&[4, 0, 2, 0], &chain), (0xaa, 0, vec![2], 1));
        let ack_outside = [desc(CMD, 4, 0), desc(0x1_0000_0000, 1, F_WRITE)];
        assert_eq!(run(&[4, 0, 2, 0], &ack_outside), (0xaa, 0, vec![2], 1));
    }
}
