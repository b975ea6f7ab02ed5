//! L2TPv3 Ethernet pseudowire data packets, as UML's `transport=l2tpv3` (RFC 3931 framing,
//! with UML's own counter instead of RFC 4719's sublayer).
//!
//! UML's `counter` is a plain 32-bit big-endian number (1 for the first packet, or always 0
//! with `pin_counter`) in the position of the L2-specific sublayer. It is *not* RFC 4719's
//! default L2-specific sublayer that Linux's own l2tp driver uses (S bit 0x40000000 plus a
//! 24-bit sequence number): a Linux kernel peer with sequencing on would misread it. A counter
//! of up to 2^24 - 1 happens to look like a sublayer with the S bit clear.

use super::reader::Reader;
use super::{encode_in_headroom, ipv4, WireError, IPPROTO_L2TP};
use crate::config::L2tpv3Config;

/// The L2TPv3-over-UDP header word of a data message: T bit 0 (data), version 3, reserved 0.
pub const L2TPV3_UDP_DATA: u32 = 0x0003_0000;

/// Cookie field size, from the `rx_cookie`/`tx_cookie` and `cookie64` options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieLen {
    None,
    Bits32,
    Bits64,
}

impl CookieLen {
    /// Bytes on the wire.
    pub fn bytes(self) -> usize {
        match self {
            CookieLen::None => 0,
            CookieLen::Bits32 => 4,
            CookieLen::Bits64 => 8,
        }
    }
}

/// Encoder and checker of one tunnel's L2TPv3 data headers.
#[derive(Clone, Debug)]
pub struct L2tpv3Codec {
    udp: bool,
    v6: bool,
    rx_session: u32,
    tx_session: u32,
    cookie: CookieLen,
    rx_cookie: u64,
    tx_cookie: u64,
    counter: bool,
    pin_counter: bool,
    /// The last counter sent; the next packet carries this plus one (wrapping).
    last_counter: u32,
}

impl L2tpv3Codec {
    /// A codec for the tunnel `config` describes. Without `cookie64` a cookie is 32 bits: the
    /// parser rejects larger values, and only the low 32 bits are used here.
    pub fn new(config: &L2tpv3Config) -> Self {
        let (cookie, rx_cookie, tx_cookie) = match config.cookies {
            None => (CookieLen::None, 0, 0),
            Some(c) if config.cookie64 => (CookieLen::Bits64, c.rx, c.tx),
            Some(c) => (
                CookieLen::Bits32,
                u64::from(c.rx as u32),
                u64::from(c.tx as u32),
            ),
        };
        L2tpv3Codec {
            udp: config.udp,
            v6: config.v6,
            rx_session: config.rx_session,
            tx_session: config.tx_session,
            cookie,
            rx_cookie,
            tx_cookie,
            counter: config.counter,
            pin_counter: config.pin_counter,
            last_counter: 0,
        }
    }

    /// The cookie size this tunnel uses.
    pub fn cookie_len(&self) -> CookieLen {
        self.cookie
    }

    /// Bytes of L2TPv3 header in front of every frame sent (and expected on receive after any
    /// IP header): 4 for UDP's header word, 4 session, 0/4/8 cookie, 0/4 counter.
    pub fn header_len(&self) -> usize {
        4 * usize::from(self.udp) + 4 + self.cookie.bytes() + 4 * usize::from(self.counter)
    }

    /// Whether received datagrams start with an IPv4 header: only on IPv4 raw sockets
    /// (`udp=0`, `v6=0`); UDP sockets strip IP and UDP headers, IPv6 raw sockets the IP header.
    pub fn rx_ipv4_header(&self) -> bool {
        !self.udp && !self.v6
    }

    /// Writes the header of the next packet into the start of `out` and returns its length,
    /// [`L2tpv3Codec::header_len`]. The counter is 1 for the first packet and advances by one
    /// per call, wrapping after `u32::MAX` to 0; with `pin_counter` it is always 0.
    ///
    /// If `out` is shorter than the header nothing is written, the counter does not advance,
    /// and 0 is returned.
    #[must_use]
    pub fn encode_header(&mut self, out: &mut [u8]) -> usize {
        let len = self.header_len();
        let Some(out) = out.get_mut(..len) else {
            return 0;
        };
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            out[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        if self.udp {
            put(&L2TPV3_UDP_DATA.to_be_bytes());
        }
        put(&self.tx_session.to_be_bytes());
        match self.cookie {
            CookieLen::None => {}
            CookieLen::Bits32 => put(&(self.tx_cookie as u32).to_be_bytes()),
            CookieLen::Bits64 => put(&self.tx_cookie.to_be_bytes()),
        }
        if self.counter {
            let counter = if self.pin_counter {
                0
            } else {
                self.last_counter = self.last_counter.wrapping_add(1);
                self.last_counter
            };
            put(&counter.to_be_bytes());
        }
        len
    }

    /// Writes the next header directly in front of the frame that starts at `frame_start` in
    /// `buf` (the transport's reserved headroom) and returns where the packet starts, or `None`
    /// if fewer than [`L2tpv3Codec::header_len`] bytes precede the frame.
    pub fn encode_before(&mut self, buf: &mut [u8], frame_start: usize) -> Option<usize> {
        let len = self.header_len();
        encode_in_headroom(buf, frame_start, len, |room| self.encode_header(room))
    }

    /// Checks a received datagram and returns the Ethernet frame inside it.
    ///
    /// On IPv4 raw sockets ([`L2tpv3Codec::rx_ipv4_header`]) the IPv4 header is validated
    /// (protocol 115) and skipped. Over UDP the header word must be a version 3 data message:
    /// the T bit clear and version 3; the reserved bits are ignored, as RFC 3931 asks (UML does
    /// not check this word at all; its peers always send `00 03 00 00`). Then, in UML's order,
    /// the cookie must be `rx_cookie` and the session `rx_session`. The counter is skipped
    /// unchecked: UML does not check it either, and `pin_counter` peers send 0 throughout.
    pub fn decode<'a>(&self, packet: &'a [u8]) -> Result<&'a [u8], WireError> {
        let l2tp = if self.rx_ipv4_header() {
            ipv4::strip(packet, IPPROTO_L2TP)?
        } else {
            packet
        };
        let mut r = Reader::new(l2tp);
        if self.udp {
            let word = r.u32("L2TP header word")?;
            // T bit (data/control) and the 4-bit version; the other bits are reserved.
            if word & 0x800f_0000 != L2TPV3_UDP_DATA {
                return Err(WireError::NotL2tpv3Data { got: word });
            }
        }
        let session = r.u32("L2TPv3 session id")?;
        let cookie = match self.cookie {
            CookieLen::None => None,
            CookieLen::Bits32 => Some(u64::from(r.u32("L2TPv3 cookie")?)),
            CookieLen::Bits64 => Some(r.u64("L2TPv3 cookie")?),
        };
        if let Some(got) = cookie {
            if got != self.rx_cookie {
                return Err(WireError::WrongCookie {
                    got,
                    expected: self.rx_cookie,
                });
            }
        }
        if session != self.rx_session {
            return Err(WireError::WrongSession {
                got: session,
                expected: self.rx_session,
            });
        }
        if self.counter {
            r.u32("L2TPv3 counter")?;
        }
        r.frame()
    }
}

#[cfg(test)]
mod tests;
