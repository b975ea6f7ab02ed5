//! The IPv4 header an IPv4 raw socket delivers in front of every datagram.

use super::WireError;

/// Returns what follows the IPv4 header at the start of `packet`, after checking that it is
/// IPv4 with a sane IHL that fits in the packet and carries `protocol`.
///
/// The header's real length (IHL × 4) is skipped, options included: UML skips a fixed 20 bytes
/// and so misreads packets with IP options. The total-length field is not checked: a raw socket
/// delivers exactly one reassembled datagram, and the tunnel header checks that follow reject
/// anything malformed behind the header.
pub(super) fn strip(packet: &[u8], protocol: u8) -> Result<&[u8], WireError> {
    let Some(&first) = packet.first() else {
        return Err(WireError::Truncated {
            field: "IPv4 header",
            need: 20,
            got: 0,
        });
    };
    let (version, ihl) = (first >> 4, first & 0x0f);
    if version != 4 || ihl < 5 {
        return Err(WireError::BadIpHeader { version, ihl });
    }
    let len = usize::from(ihl) * 4;
    let (header, rest) = packet.split_at_checked(len).ok_or(WireError::Truncated {
        field: "IPv4 header",
        need: len,
        got: packet.len(),
    })?;
    let got = header[9];
    if got != protocol {
        return Err(WireError::WrongIpProtocol {
            got,
            expected: protocol,
        });
    }
    Ok(rest)
}
