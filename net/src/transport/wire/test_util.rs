//! Packet builders shared by the codecs' unit tests.

/// An Ethernet frame with recognisable addresses and a payload of `payload` bytes.
pub(super) fn frame(payload: usize) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0xbb, 0x02, 0, 0, 0, 0, 0xaa, 0x08, 0x00];
    f.extend((0..payload).map(|i| i as u8));
    f
}

/// An IPv4 header with `option_words` 32-bit words of options (IHL 5 + that) carrying
/// `protocol`, followed by `payload`: what an IPv4 raw socket delivers.
pub(super) fn ipv4(protocol: u8, option_words: u8, payload: &[u8]) -> Vec<u8> {
    let ihl = 5 + option_words;
    let len = usize::from(ihl) * 4 + payload.len();
    let mut p = vec![0x40 | ihl, 0];
    p.extend((len as u16).to_be_bytes());
    p.extend([
        0, 0, 0x40, 0, 64, protocol, 0, 0, 127, 0, 0, 2, 127, 0, 0, 1,
    ]);
    // Option words: NOP padding.
    p.extend(std::iter::repeat_n(1u8, usize::from(option_words) * 4));
    p.extend_from_slice(payload);
    p
}

/// How a received datagram is wrapped: no IP header (IPv6 raw, UDP), or IPv4 with IHL 5 or 6.
#[derive(Clone, Copy, Debug)]
pub(super) enum Outer {
    None,
    Ipv4,
    Ipv4Options,
}

impl Outer {
    pub(super) fn wrap(self, protocol: u8, tunnel: &[u8]) -> Vec<u8> {
        match self {
            Outer::None => tunnel.to_vec(),
            Outer::Ipv4 => ipv4(protocol, 0, tunnel),
            Outer::Ipv4Options => ipv4(protocol, 1, tunnel),
        }
    }

    pub(super) fn ip_len(self) -> usize {
        match self {
            Outer::None => 0,
            Outer::Ipv4 => 20,
            Outer::Ipv4Options => 24,
        }
    }
}
