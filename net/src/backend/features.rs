//! The virtio-net features, vhost-user protocol features and configuration space the backend
//! offers. The interop relay refuses a frontend that acks a protocol feature not offered here.

use std::mem::{offset_of, size_of};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use crate::config::MacAddr;
use crate::transport::{vnet, Offloads};

/// `VHOST_USER_F_PROTOCOL_FEATURES`: a vhost-user bit in the virtio feature word.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// Bytes of `struct virtio_net_hdr_v1` (= `virtio_net_hdr_mrg_rxbuf`): the header before
/// every frame in the virtqueues with VERSION_1 or MRG_RXBUF.
pub const GUEST_HDR_LEN: usize = size_of::<virtio_net_hdr_v1>();
/// Where `num_buffers` lies in that header.
pub const NUM_BUFFERS_OFFSET: usize = offset_of!(virtio_net_hdr_v1, num_buffers);

/// vhost-user protocol features offered: MQ, CONFIG, REPLY_ACK and BACKEND_REQ
/// (`VhostUserProtocolFeatures` bits 0x1, 0x200, 0x8, 0x20).
///
/// MQ lets the frontend ask how many queues there are (`GET_QUEUE_NUM`): QEMU and DPDK's
/// virtio_user refuse `queues=N` above 1 without it. It is offered whatever `queues` says;
/// the answer is then 2.
///
/// BACKEND_REQ is offered for interop, not used: UML 6.1's virtio_uml allocates its interrupt
/// only while setting up the backend-request channel, and without it requests IRQ 0 (the
/// timer's) for the virtqueues, so its virtio-net probe fails with -EBUSY. CONFIGURE_MEM_SLOTS
/// is not offered, so `ADD_MEM_REG`, `REM_MEM_REG` and `GET_MAX_MEM_SLOTS` are never valid: the
/// memory table comes whole in `SET_MEM_TABLE`.
pub const PROTOCOL_FEATURES: u64 = VhostUserProtocolFeatures::MQ.bits()
    | VhostUserProtocolFeatures::CONFIG.bits()
    | VhostUserProtocolFeatures::REPLY_ACK.bits()
    | VhostUserProtocolFeatures::BACKEND_REQ.bits();

const fn bit(b: u32) -> u64 {
    1 << b
}

/// Features offered whatever the transport.
const BASE: u64 = bit(VIRTIO_F_VERSION_1)
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_MTU)
    | bit(VIRTIO_NET_F_STATUS)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_RING_F_EVENT_IDX)
    | bit(VIRTIO_RING_F_INDIRECT_DESC)
    | VHOST_USER_F_PROTOCOL_FEATURES;

/// Checksum offloads both ways and TSO from the guest, offered on every transport whatever
/// `gro` says.
///
/// On a transport that carries a `virtio_net_hdr` this is what UML's own raw, tap and hybrid
/// do: they turn on `NETIF_F_TSO`, `HW_CSUM` and `RXCSUM` whenever the host takes the header
/// (`build_*_transport_data` in `arch/um/drivers/vector_transports.c`), and UML's `gro` only
/// sizes the receive buffers for 64 KiB frames. The host takes partial and GSO frames through
/// the header; only what the guest receives stays MTU-sized without `gro=1` (a tap is told
/// not to hand over GSO frames, `TUNSETOFFLOAD`).
///
/// On a transport without one (the tunnels, fd, the switches, user networking, pcap) the
/// datapath completes the guest's partial checksums and segments its TSO frames itself
/// (`backend::segment`), so the guest hands over up to 64 KiB per vhost-user hop instead of
/// 1500 bytes; UML's own tunnels offer nothing there. `gro` again decides only what the guest
/// receives: merged GSO frames ([`SOFTWARE_OFFLOADS`]) or MTU-sized ones.
const SEND_OFFLOADS: u64 = bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_HOST_ECN);

/// Checksum and segmentation offloads both ways, offered with `gro=1` on a transport that
/// carries a `virtio_net_hdr` (the host side can then take and give partial and GSO frames):
/// [`SEND_OFFLOADS`] and GSO frames into the guest.
const OFFLOADS: u64 = bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_GUEST_ECN)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_HOST_ECN);

/// What the backend does itself, offered with `gro=1` on a transport without a
/// `virtio_net_hdr` (tunnels, fd, the switches, user networking): [`SEND_OFFLOADS`], and
/// received TCP segments merged into GSO frames for the guest (`backend::coalesce`), with
/// their checksums verified and left partial. No GUEST_ECN: a segment with CWR or ECE is
/// never merged, so no merged frame needs it.
const SOFTWARE_OFFLOADS: u64 = bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_HOST_ECN);

/// The virtio features to offer: offloads by the transport's header and `gro`, and MQ with
/// more than one queue pair. MQ needs CTRL_VQ, which is not offered: a vhost-user frontend
/// keeps the control queue itself (QEMU and DPDK do; they tell the backend which pairs the
/// guest uses with `SET_VRING_ENABLE`).
pub fn offered(gro: bool, transport_hdr_len: usize, pairs: u16) -> u64 {
    let offloads = match (gro, transport_hdr_len > 0) {
        (false, _) => SEND_OFFLOADS,
        (true, true) => OFFLOADS,
        (true, false) => SOFTWARE_OFFLOADS,
    };
    let mq = if pairs > 1 { bit(VIRTIO_NET_F_MQ) } else { 0 };
    BASE | offloads | mq
}

/// The names of the offload bits in `bits` (for messages).
pub fn names(bits: u64) -> Vec<&'static str> {
    [
        (VIRTIO_NET_F_CSUM, "CSUM"),
        (VIRTIO_NET_F_GUEST_CSUM, "GUEST_CSUM"),
        (VIRTIO_NET_F_GUEST_TSO4, "GUEST_TSO4"),
        (VIRTIO_NET_F_GUEST_TSO6, "GUEST_TSO6"),
        (VIRTIO_NET_F_GUEST_ECN, "GUEST_ECN"),
        (VIRTIO_NET_F_HOST_TSO4, "HOST_TSO4"),
        (VIRTIO_NET_F_HOST_TSO6, "HOST_TSO6"),
        (VIRTIO_NET_F_HOST_ECN, "HOST_ECN"),
    ]
    .into_iter()
    .filter(|&(b, _)| bits & bit(b) != 0)
    .map(|(_, name)| name)
    .collect()
}

/// What the driver agreed to, in the terms the datapath needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// Bytes of `virtio_net_hdr` before every frame in the virtqueues: [`GUEST_HDR_LEN`] (12)
    /// with VERSION_1 or MRG_RXBUF (`num_buffers` present), else [`vnet::HDR_LEN`] (10).
    pub hdr_len: usize,
    /// Receive buffers may be merged (`num_buffers` > 1).
    pub mrg_rxbuf: bool,
    /// What the guest accepts on receive.
    pub rx: Offloads,
    /// GSO frames the guest may send: HOST_TSO4, HOST_TSO6, HOST_ECN.
    pub tx_tso4: bool,
    pub tx_tso6: bool,
    pub tx_ecn: bool,
    /// The guest acknowledged VIRTIO_NET_F_MTU, so the config space's MTU binds what it sends.
    pub mtu: bool,
}

impl Negotiated {
    pub fn from_features(acked: u64) -> Negotiated {
        let has = |b: u32| acked & bit(b) != 0;
        let mrg_rxbuf = has(VIRTIO_NET_F_MRG_RXBUF);
        Negotiated {
            hdr_len: if has(VIRTIO_F_VERSION_1) || mrg_rxbuf {
                GUEST_HDR_LEN
            } else {
                vnet::HDR_LEN
            },
            mrg_rxbuf,
            rx: Offloads {
                csum: has(VIRTIO_NET_F_GUEST_CSUM),
                tso4: has(VIRTIO_NET_F_GUEST_TSO4),
                tso6: has(VIRTIO_NET_F_GUEST_TSO6),
                ecn: has(VIRTIO_NET_F_GUEST_ECN),
            },
            tx_tso4: has(VIRTIO_NET_F_HOST_TSO4),
            tx_tso6: has(VIRTIO_NET_F_HOST_TSO6),
            tx_ecn: has(VIRTIO_NET_F_HOST_ECN),
            mtu: has(VIRTIO_NET_F_MTU),
        }
    }
}

/// Bytes of `struct virtio_net_config` we offer: mac, status, max_virtqueue_pairs, mtu.
pub const CONFIG_LEN: usize = offset_of!(virtio_net_config, mtu) + size_of::<u16>();

/// `struct virtio_net_config` as far as we offer it ([`CONFIG_LEN`]), with `pairs` queue
/// pairs.
pub fn config_space(mac: MacAddr, mtu: u16, pairs: u16) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |offset: usize, bytes: &[u8]| {
        c[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(offset_of!(virtio_net_config, mac), &mac.0);
    let link_up = VIRTIO_NET_S_LINK_UP as u16;
    put(
        offset_of!(virtio_net_config, status),
        &link_up.to_le_bytes(),
    );
    put(
        offset_of!(virtio_net_config, max_virtqueue_pairs),
        &pairs.max(1).to_le_bytes(),
    );
    put(offset_of!(virtio_net_config, mtu), &mtu.to_le_bytes());
    c
}

/// The bytes of `config` at `offset..offset+size`; what lies outside reads as zero, so no
/// offset or size a frontend sends can fail or panic.
pub fn read_config(config: &[u8], offset: u32, size: u32) -> Vec<u8> {
    let size = size.min(256) as usize;
    (0..size)
        .map(|i| {
            (offset as usize)
                .checked_add(i)
                .and_then(|o| config.get(o).copied())
                .unwrap_or(0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offloads_follow_the_header_and_gro() {
        assert_eq!(offered(true, 10, 1) & OFFLOADS, OFFLOADS);
        assert_eq!(offered(true, 0, 1) & OFFLOADS, SOFTWARE_OFFLOADS);
        // Without a header the backend segments and completes what the guest sends, whatever
        // gro says.
        assert_eq!(offered(false, 0, 1) & OFFLOADS, SEND_OFFLOADS);
        assert_eq!(names(OFFLOADS).len(), 8);
        // Without gro, a header transport still takes what UML's own takes from its guest:
        // partial checksums and TSO frames; only GSO frames into the guest need gro=1.
        assert_eq!(
            names(offered(false, 10, 1) & OFFLOADS),
            ["CSUM", "GUEST_CSUM", "HOST_TSO4", "HOST_TSO6", "HOST_ECN"]
        );
        assert_eq!(
            names(offered(true, 10, 1) & !offered(false, 10, 1)),
            ["GUEST_TSO4", "GUEST_TSO6", "GUEST_ECN"]
        );
    }

    #[test]
    fn a_swap_keeps_send_offloads_on_any_transport_and_gso_into_the_guest_with_gro() {
        // `net swap` refuses a transport that does not offer all a NIC began with.
        let tap = offered(false, 10, 1);
        let tunnel = offered(false, 0, 1);
        assert_eq!(tap, tunnel, "tap and a tunnel, neither with gro, both ways");
        let tap_gro = offered(true, 10, 1);
        assert_eq!(
            names(tap_gro & !tunnel),
            ["GUEST_TSO4", "GUEST_TSO6", "GUEST_ECN"]
        );
        assert_eq!(names(tap_gro & !offered(true, 0, 1)), ["GUEST_ECN"]);
    }

    #[test]
    fn header_and_config_sizes_are_the_specs() {
        assert_eq!(
            (GUEST_HDR_LEN, NUM_BUFFERS_OFFSET, vnet::HDR_LEN),
            (12, 10, 10)
        );
        assert_eq!(CONFIG_LEN, 12);
        assert_eq!(VHOST_USER_F_PROTOCOL_FEATURES, 1 << 30);
        assert_eq!(PROTOCOL_FEATURES, 0x1 | 0x200 | 0x8 | 0x20);
        let c = config_space(MacAddr([2, 0, 0, 0, 0, 7]), 9000, 1);
        assert_eq!(c, [2, 0, 0, 0, 0, 7, 1, 0, 1, 0, 0x28, 0x23]);
        let c = config_space(MacAddr([2, 0, 0, 0, 0, 7]), 1500, 4);
        assert_eq!(c[8..10], [4, 0]);
    }

    #[test]
    fn mq_is_offered_with_more_than_one_pair() {
        let mq = bit(VIRTIO_NET_F_MQ);
        assert_eq!(offered(false, 10, 1) & mq, 0);
        assert_eq!(offered(false, 10, 2) & mq, mq);
        assert_eq!(offered(true, 0, 16) & mq, mq);
        assert_eq!(offered(true, 10, 4) & bit(VIRTIO_NET_F_CTRL_VQ), 0);
    }

    #[test]
    fn config_reads_are_bounded() {
        let c = config_space(MacAddr([2, 0, 0, 0, 0, 7]), 1500, 1);
        assert_eq!(read_config(&c, 0, 6), vec![2, 0, 0, 0, 0, 7]);
        assert_eq!(read_config(&c, 10, 2), 1500u16.to_le_bytes().to_vec());
        assert_eq!(read_config(&c, 11, 4), vec![(1500u16 >> 8) as u8, 0, 0, 0]);
        assert_eq!(read_config(&c, u32::MAX, 4), vec![0; 4]);
        assert_eq!(read_config(&c, 0, u32::MAX).len(), 256);
    }
}
