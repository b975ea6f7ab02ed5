//! Why a received tunnel packet is dropped.

/// Why `decode` refused a datagram. Each variant is one drop reason the transport can count
/// ([`WireError::reason`] gives a short stable label for that).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The datagram ends inside a header field. `need` and `got` count from the start of the
    /// header being read: the IPv4 header, else the tunnel header (after any IPv4 header).
    #[error("truncated: {field} needs {need} bytes, the packet has {got}")]
    Truncated {
        field: &'static str,
        need: usize,
        got: usize,
    },
    /// The IPv4 header a raw socket delivered is not IPv4 or has an IHL below 5.
    #[error("bad IPv4 header: version {version}, IHL {ihl}")]
    BadIpHeader { version: u8, ihl: u8 },
    /// The IPv4 header names another protocol than the tunnel's.
    #[error("IP protocol {got}, expected {expected}")]
    WrongIpProtocol { got: u8, expected: u8 },
    /// GRE flags and version differ from what this tunnel's options produce (checksum,
    /// routing, a key or sequence number we do not expect or miss, another version).
    #[error("GRE flags {got:#06x}, expected {expected:#06x}")]
    WrongFlags { got: u16, expected: u16 },
    /// The GRE protocol type is not 0x6558 (Transparent Ethernet Bridging).
    #[error("GRE protocol type {got:#06x}, expected 0x6558 (Ethernet)")]
    WrongProtocol { got: u16 },
    /// The GRE key is not this tunnel's `rx_key`.
    #[error("GRE key {got:#x}, expected {expected:#x}")]
    WrongKey { got: u32, expected: u32 },
    /// The L2TPv3-over-UDP header word is not a version 3 data message (a control message,
    /// or L2TPv2).
    #[error("L2TP header {got:#010x} is not an L2TPv3 data message")]
    NotL2tpv3Data { got: u32 },
    /// The L2TPv3 cookie is not this tunnel's `rx_cookie`.
    #[error("L2TPv3 cookie {got:#x}, expected {expected:#x}")]
    WrongCookie { got: u64, expected: u64 },
    /// The L2TPv3 session id is not this tunnel's `rx_session`.
    #[error("L2TPv3 session {got:#x}, expected {expected:#x}")]
    WrongSession { got: u32, expected: u32 },
    /// What follows the tunnel header is shorter than an Ethernet header.
    #[error("inner frame of {got} bytes is shorter than an Ethernet header")]
    TooShort { got: usize },
}

impl WireError {
    /// A short, stable label per variant, for drop counters and rate-limited logs.
    pub fn reason(&self) -> &'static str {
        match self {
            WireError::Truncated { .. } => "truncated",
            WireError::BadIpHeader { .. } => "bad_ip_header",
            WireError::WrongIpProtocol { .. } => "wrong_ip_protocol",
            WireError::WrongFlags { .. } => "wrong_flags",
            WireError::WrongProtocol { .. } => "wrong_protocol",
            WireError::WrongKey { .. } => "wrong_key",
            WireError::NotL2tpv3Data { .. } => "not_l2tpv3_data",
            WireError::WrongCookie { .. } => "wrong_cookie",
            WireError::WrongSession { .. } => "wrong_session",
            WireError::TooShort { .. } => "too_short",
        }
    }
}
