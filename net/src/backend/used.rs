//! Handing chains back to the guest: used-ring entries, published all at once, and whether
//! the guest asked to be told.
//!
//! virtio-queue's `add_used` stores the used index after every entry. A frame received over
//! several chains (MRG_RXBUF) would then be visible to the guest one chain at a time, and a
//! guest polling its ring on another CPU (a NAPI poll in a real guest, UML's `virtio_uml`)
//! reads the first chain, whose header says `num_buffers = n`, while fewer than `n` are
//! there: Linux's `receive_mergeable` drops the frame ("buffers missing", `rx_length_errors`)
//! and takes the rest of its chains for frames of their own, with payload for headers. A UML
//! guest behind `tap,gro=1` showed it as 139 dropped frames and thousands of TCP
//! retransmissions in one 10 s iperf3 run. The virtio spec (1.2, 2.7.8.2) asks the device to
//! update the used index once the entries are written; Linux's vhost (`vhost_add_used_n`) and
//! DPDK's vhost publish a frame's chains with one index store, and so does [`UsedRing`].
//!
//! Beyond a frame, entries can be staged ([`UsedRing::stage`]) and published later with one
//! store ([`UsedRing::flush`]): the datapath publishes a receive batch's frames, and a
//! transmit round's chains, that way (as Linux's vhost-net batches its used entries), so a
//! guest polling the index on another CPU takes the cache line once a batch, not once a frame.
//!
//! Owning the publication means owning the notification test too: virtio-queue's
//! `needs_notification` counts entries its own `add_used` added, so every entry of a queue
//! goes through here, and [`UsedRing::needs_notification`] counts them.

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

/// Bytes before the used ring's entries: `flags` and `idx`.
const USED_RING_HEADER: u64 = 4;
/// Bytes of one used entry: `id` and `len`, both le32.
const USED_ELEM: u64 = 8;
/// Bytes before the avail ring's entries (its `flags` and `idx`); `used_event` follows the
/// entries.
const AVAIL_RING_HEADER: u64 = 4;
/// Most used entries [`UsedRing::stage`] writes with one call (a transmit round is at most
/// this deep by default).
const STAGE_RUN: usize = 64;
/// The avail ring's flag by which a driver without EVENT_IDX asks for no notifications.
const NO_INTERRUPT: u16 = VRING_AVAIL_F_NO_INTERRUPT as u16;

/// Why used entries could not be written. Neither happens with a ring that passed
/// virtio-queue's checks and a head it popped; the caller drops the error as it dropped
/// `add_used`'s.
#[derive(Debug, thiserror::Error)]
pub enum UsedError {
    #[error("head {head} is outside the descriptor table of {size} entries")]
    BadHead { head: u16, size: u16 },
    #[error("the used ring is outside guest memory")]
    BadRing,
}

/// One queue's used ring, as this backend fills it.
#[derive(Debug, Default)]
pub struct UsedRing {
    /// Entries published since the last [`UsedRing::needs_notification`]: the guest's
    /// `used_event` is checked against them.
    unchecked: Wrapping<u16>,
    /// Entries written behind the used index but not yet published ([`UsedRing::stage`]).
    staged: Wrapping<u16>,
}

impl UsedRing {
    /// Forgets what was published or staged: a new frontend, a new ring.
    pub fn reset(&mut self) {
        self.unchecked = Wrapping(0);
        self.staged = Wrapping(0);
    }

    /// Writes `chains` (head, bytes written) into the used ring and then stores the used
    /// index once (release, after the entries), so the guest sees all of them, and any
    /// staged before them, or none.
    pub fn publish(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        chains: &[(u16, u32)],
    ) -> Result<(), UsedError> {
        self.stage(queue, mem, chains)?;
        self.flush(queue, mem)
    }

    /// Writes `chains` into the used ring after those already staged, without publishing
    /// them: the guest reads no entry beyond the used index. A head outside the table stages
    /// nothing of `chains`.
    pub fn stage(
        &mut self,
        queue: &Queue,
        mem: &GuestMemoryMmap,
        chains: &[(u16, u32)],
    ) -> Result<(), UsedError> {
        let size = queue.size();
        if let Some(&(head, _)) = chains.iter().find(|&&(head, _)| head >= size) {
            return Err(UsedError::BadHead { head, size });
        }
        let ring = GuestAddress(queue.used_ring());
        let mut at = Wrapping(queue.next_used()) + self.staged;
        // One write per run of slots up to the ring's end (a round's entries are contiguous),
        // not one per entry: each write translates the guest address again.
        let mut buf = [0u8; STAGE_RUN * USED_ELEM as usize];
        let mut rest = chains;
        while !rest.is_empty() {
            let slot = at.0 % size;
            let run = rest.len().min(usize::from(size - slot)).min(STAGE_RUN);
            for (elem, &(head, len)) in buf.chunks_exact_mut(USED_ELEM as usize).zip(&rest[..run]) {
                elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
                elem[4..].copy_from_slice(&len.to_le_bytes());
            }
            let addr = ring
                .checked_add(USED_RING_HEADER + u64::from(slot) * USED_ELEM)
                .ok_or(UsedError::BadRing)?;
            mem.write_slice(&buf[..run * USED_ELEM as usize], addr)
                .map_err(|_| UsedError::BadRing)?;
            at += Wrapping(run as u16);
            rest = &rest[run..];
        }
        self.staged += Wrapping(chains.len() as u16);
        Ok(())
    }

    /// Publishes what was staged: one store of the used index (release, after the entries).
    /// If the index cannot be stored, what was staged is forgotten: it never can be.
    pub fn flush(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<(), UsedError> {
        let staged = std::mem::take(&mut self.staged);
        if staged.0 == 0 {
            return Ok(());
        }
        let at = Wrapping(queue.next_used()) + staged;
        let idx = GuestAddress(queue.used_ring())
            .checked_add(2)
            .ok_or(UsedError::BadRing)?;
        mem.store(at.0.to_le(), idx, Ordering::Release)
            .map_err(|_| UsedError::BadRing)?;
        queue.set_next_used(at.0);
        self.unchecked += staged;
        Ok(())
    }

    /// Whether the guest wants to be told of what was published since the last call. With
    /// EVENT_IDX: its `used_event` lies among those entries (virtio 1.2, 2.7.10, the test
    /// Linux calls `vring_need_event`). Without: unless the avail ring's flags say
    /// VRING_AVAIL_F_NO_INTERRUPT (2.7.7.2: the device SHOULD NOT notify then), as Linux's
    /// vhost honours it; virtio-queue does not, and a polling driver (DPDK's virtio PMD sets
    /// it on every queue) would take an eventfd write per round that nobody reads.
    pub fn needs_notification(&mut self, queue: &Queue, mem: &GuestMemoryMmap) -> bool {
        debug_assert_eq!(self.staged.0, 0, "staged entries not flushed");
        let added = std::mem::take(&mut self.unchecked);
        if added.0 == 0 {
            return false;
        }
        // The index stores before the read of used_event (or the flags): the guest writes
        // used_event (clears the flag) and then reads the index, so one of us sees the
        // other's write.
        fence(Ordering::SeqCst);
        if !queue.event_idx_enabled() {
            let flags = mem.load::<u16>(GuestAddress(queue.avail_ring()), Ordering::Acquire);
            // Unreadable: a spurious interrupt is better than a lost one.
            return flags.map_or(true, |f| u16::from_le(f) & NO_INTERRUPT == 0);
        }
        let new = Wrapping(queue.next_used());
        let event = GuestAddress(queue.avail_ring())
            .checked_add(AVAIL_RING_HEADER + 2 * u64::from(queue.size()));
        let Some(Ok(event)) = event.map(|a| mem.load::<u16>(a, Ordering::Acquire)) else {
            // Unreadable: a spurious interrupt is better than a lost one.
            return true;
        };
        let event = Wrapping(u16::from_le(event));
        new - event - Wrapping(1) < added
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    /// A ready queue of `size` with its parts apart (virtio-queue's mock lays the used ring
    /// over the avail ring's end, where `used_event` lives).
    fn queue(m: &GuestMemoryMmap, size: u16) -> Queue {
        let mut q = Queue::new(size).unwrap();
        q.set_size(size);
        q.set_desc_table_address(Some(0x1000), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        assert!(q.is_valid(m));
        q
    }

    fn used_idx(q: &Queue, mem: &GuestMemoryMmap) -> u16 {
        q.used_idx(mem, Ordering::Acquire).unwrap().0
    }

    fn elem(q: &Queue, mem: &GuestMemoryMmap, slot: u64) -> (u32, u32) {
        let a = GuestAddress(q.used_ring() + USED_RING_HEADER + slot * USED_ELEM);
        let id: u32 = mem.read_obj(a).unwrap();
        let len: u32 = mem.read_obj(a.unchecked_add(4)).unwrap();
        (id, len)
    }

    #[test]
    fn a_frame_of_three_chains_is_published_with_one_index() {
        let m = mem();
        let mut q = queue(&m, 16);
        let mut ring = UsedRing::default();
        ring.publish(&mut q, &m, &[(3, 100), (7, 4096), (1, 12)])
            .unwrap();
        assert_eq!(used_idx(&q, &m), 3);
        assert_eq!(q.next_used(), 3);
        assert_eq!(elem(&q, &m, 0), (3, 100));
        assert_eq!(elem(&q, &m, 1), (7, 4096));
        assert_eq!(elem(&q, &m, 2), (1, 12));
        ring.publish(&mut q, &m, &[]).unwrap();
        assert_eq!(used_idx(&q, &m), 3);
    }

    /// Staged entries are written but not the guest's until a flush, or a publication, which
    /// takes them along in order; a bad head stages nothing.
    #[test]
    fn staged_entries_wait_for_the_flush() {
        let m = mem();
        let mut q = queue(&m, 16);
        let mut ring = UsedRing::default();
        ring.stage(&q, &m, &[(3, 60), (4, 60)]).unwrap();
        assert!(ring.stage(&q, &m, &[(5, 60), (16, 60)]).is_err());
        ring.stage(&q, &m, &[(6, 70)]).unwrap();
        assert_eq!(used_idx(&q, &m), 0, "staged, not published");
        assert_eq!(q.next_used(), 0);
        ring.flush(&mut q, &m).unwrap();
        assert_eq!(used_idx(&q, &m), 3);
        assert_eq!(elem(&q, &m, 2), (6, 70));
        ring.stage(&q, &m, &[(7, 1)]).unwrap();
        ring.publish(&mut q, &m, &[(8, 2)]).unwrap();
        assert_eq!(used_idx(&q, &m), 5);
        assert_eq!((elem(&q, &m, 3), elem(&q, &m, 4)), ((7, 1), (8, 2)));
        assert!(ring.needs_notification(&q, &m));
        ring.flush(&mut q, &m).unwrap();
        assert_eq!(used_idx(&q, &m), 5, "nothing staged: nothing stored");
    }

    #[test]
    fn entries_wrap_around_the_ring() {
        let m = mem();
        let mut q = queue(&m, 4);
        q.set_next_used(u16::MAX - 1);
        let mut ring = UsedRing::default();
        ring.publish(&mut q, &m, &[(0, 1), (1, 2), (2, 3)]).unwrap();
        assert_eq!(used_idx(&q, &m), 1);
        // u16::MAX - 1 is slot 2 of 4; then slots 3 and 0.
        assert_eq!(elem(&q, &m, 2), (0, 1));
        assert_eq!(elem(&q, &m, 3), (1, 2));
        assert_eq!(elem(&q, &m, 0), (2, 3));
    }

    /// More entries than one write takes, across the ring's end: each lands in its slot.
    #[test]
    fn a_long_batch_is_written_in_runs() {
        let m = mem();
        let mut q = queue(&m, 256);
        q.set_next_used(200);
        let chains: Vec<(u16, u32)> = (0..150u16).map(|i| (i, 1000 + u32::from(i))).collect();
        let mut ring = UsedRing::default();
        ring.publish(&mut q, &m, &chains).unwrap();
        assert_eq!(used_idx(&q, &m), 350);
        for (i, &(head, len)) in chains.iter().enumerate() {
            assert_eq!(elem(&q, &m, (200 + i as u64) % 256), (u32::from(head), len));
        }
    }

    #[test]
    fn a_head_outside_the_table_publishes_nothing() {
        let m = mem();
        let mut q = queue(&m, 4);
        let mut ring = UsedRing::default();
        let e = ring.publish(&mut q, &m, &[(0, 1), (4, 2)]).unwrap_err();
        assert!(matches!(e, UsedError::BadHead { head: 4, size: 4 }));
        assert_eq!(used_idx(&q, &m), 0);
        assert_eq!(q.next_used(), 0);
    }

    /// used_event as the guest sets it, then three entries published: the guest is told
    /// exactly when its event lies among them, whether they came one by one or at once.
    #[test]
    fn the_guest_is_told_when_its_used_event_is_passed() {
        let m = mem();
        let event_at = GuestAddress(AVAIL + AVAIL_RING_HEADER + 2 * 16);
        for event in 0u16..6 {
            for one_by_one in [false, true] {
                let mut q = queue(&m, 16);
                q.set_event_idx(true);
                q.set_next_used(0);
                m.write_obj(event.to_le(), event_at).unwrap();
                let mut ring = UsedRing::default();
                let chains = [(0, 1), (1, 1), (2, 1)];
                if one_by_one {
                    for c in chains {
                        ring.publish(&mut q, &m, &[c]).unwrap();
                    }
                } else {
                    ring.publish(&mut q, &m, &chains).unwrap();
                }
                assert_eq!(
                    ring.needs_notification(&q, &m),
                    event < 3,
                    "used_event {event}, one by one {one_by_one}"
                );
                // Nothing published since: nothing to tell.
                assert!(!ring.needs_notification(&q, &m), "used_event {event}");
            }
        }
    }

    /// Without EVENT_IDX the guest is told of every publication, unless its avail ring's
    /// flags ask for none; and never of nothing.
    #[test]
    fn without_event_idx_the_guest_is_told_unless_it_asked_not_to_be() {
        let m = mem();
        let mut q = queue(&m, 16);
        let mut ring = UsedRing::default();
        assert!(!ring.needs_notification(&q, &m), "nothing published");
        ring.publish(&mut q, &m, &[(0, 1)]).unwrap();
        assert!(ring.needs_notification(&q, &m));
        assert!(!ring.needs_notification(&q, &m), "nothing published since");
        m.write_obj(NO_INTERRUPT.to_le(), GuestAddress(AVAIL))
            .unwrap();
        ring.publish(&mut q, &m, &[(1, 1)]).unwrap();
        assert!(!ring.needs_notification(&q, &m), "NO_INTERRUPT set");
        m.write_obj(0u16, GuestAddress(AVAIL)).unwrap();
        ring.publish(&mut q, &m, &[(2, 1)]).unwrap();
        assert!(ring.needs_notification(&q, &m), "NO_INTERRUPT cleared");
    }
}
