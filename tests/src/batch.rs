//! Driving a transport directly, as the backend's datapath does: frames in one batch out,
//! frames collected from its receive side.

use std::time::{Duration, Instant};

use vmm_net::transport::{PacketBatch, Transport};

use crate::peer::wait_readable;

/// A batch holding `frames`, in order, in buffers of `capacity` bytes.
pub fn batch_of(frames: &[Vec<u8>], capacity: usize) -> PacketBatch {
    let mut batch = PacketBatch::new(frames.len(), capacity);
    for f in frames {
        let b = batch.next_free().expect("room");
        b.space()[..f.len()].copy_from_slice(f);
        b.set_len(f.len());
        batch.commit();
    }
    batch
}

/// Sends `frames` in one batch and asserts the transport took all of them in one call.
pub fn send_at_once(t: &mut dyn Transport, frames: &[Vec<u8>], capacity: usize) {
    let sent = t.send(&batch_of(frames, capacity)).expect("send");
    assert_eq!(sent, frames.len(), "{} took only {sent} frames", t.name());
}

/// What the transport delivers within `timeout` that `keep` accepts; stops early once `count`
/// frames were kept.
pub fn recv_kept(
    t: &mut dyn Transport,
    count: usize,
    timeout: Duration,
    capacity: usize,
    keep: impl Fn(&[u8]) -> bool,
) -> Vec<Vec<u8>> {
    recv_kept_in(t, count, timeout, &mut PacketBatch::new(64, capacity), keep)
}

/// [`recv_kept`] through `batch`, of any depth. It waits for the descriptor only once the
/// transport holds nothing more ([`Transport::rx_pending`]), as the datapath does.
pub fn recv_kept_in(
    t: &mut dyn Transport,
    count: usize,
    timeout: Duration,
    batch: &mut PacketBatch,
    keep: impl Fn(&[u8]) -> bool,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while out.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        if !t.rx_pending() && !wait_readable(t.rx_fd(), left) {
            break;
        }
        t.recv(batch).expect("recv");
        out.extend(
            batch
                .packets()
                .iter()
                .filter(|p| keep(p.data()))
                .map(|p| p.data().to_vec()),
        );
    }
    out
}
