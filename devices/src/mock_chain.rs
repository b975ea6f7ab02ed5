//! For unit tests of devices that serve a queue in the VMM: one descriptor chain on a mock
//! split queue, the way a driver would lay it out.

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

/// `VRING_DESC_F_NEXT`.
const F_NEXT: u16 = 1;

/// A queue of 16 in `mem` holding `chain` at descriptor 0 and on, each descriptor but the
/// last linked to the next slot, made available; and the device's view of that queue.
pub fn queue_with_chain<'a>(
    mem: &'a GuestMemoryMmap,
    chain: &[RawDescriptor],
) -> (MockSplitQueue<'a, GuestMemoryMmap>, Queue) {
    let vq = MockSplitQueue::new(mem, 16);
    let q: Queue = vq.create_queue().unwrap();
    let mut descs = chain.to_vec();
    for (i, d) in descs.iter_mut().enumerate() {
        let mut s = SplitDescriptor::from(*d);
        if i + 1 < chain.len() {
            s.set_flags(s.flags() | F_NEXT);
            s.set_next(i as u16 + 1);
        }
        *d = RawDescriptor::from(s);
    }
    vq.add_desc_chains(&descs, 0).unwrap();
    (vq, q)
}
