//! Spreading received flows over the AF_PACKET sockets of a multi-queue `raw` device: one
//! socket per queue pair, joined in a fanout group (`PACKET_FANOUT`) whose classic BPF program
//! picks the socket (`PACKET_FANOUT_CBPF`).
//!
//! Why a program of our own rather than `PACKET_FANOUT_HASH`: the kernel's hash spreads over
//! every socket of the group, and a socket cannot leave a group short of being closed, so
//! frames would keep landing on the sockets of pairs the guest has not enabled (a guest with
//! one vCPU enables one pair of the four offered), where nobody reads them. The program hashes
//! the flow (IPv4 or IPv6 addresses, and TCP or UDP ports of unfragmented packets) modulo the
//! number of pairs the guest serves, and is replaced (`PACKET_FANOUT_DATA`, one call) when that
//! number changes. Everything else (ARP, other protocols) goes to pair 0, as does every frame
//! while only pair 0 is served; a fragment's tail spreads by its addresses alone. The kernel
//! runs the program on the received packet from its network header on (the Ethernet header is
//! already pulled), so the IP version comes from the packet's first nibble. The group's
//! sockets are indexed in the order they joined, which is pair order.
//!
//! The group ignores what the host transmits on the interface
//! (`PACKET_FANOUT_FLAG_IGNORE_OUTGOING`): a socket's own `PACKET_IGNORE_OUTGOING` does not
//! reach the group's hook, so without the flag every frame we send would come back to one of
//! our sockets, to be dropped there.

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;

use super::sys;

/// `PACKET_FANOUT_FLAG_IGNORE_OUTGOING` (Linux 4.20; not in the libc crate's Linux list).
const IGNORE_OUTGOING: u32 = 0x4000;
/// `PACKET_FANOUT_FLAG_UNIQUEID` (Linux 4.18).
const UNIQUEID: u32 = 0x2000;

/// `PACKET_FANOUT`'s value: the group id in the low 16 bits, type and flags above (the same
/// flags for every member, or the kernel refuses the join).
fn fanout_arg(id: u16, flags: u32) -> i32 {
    (u32::from(id) | ((libc::PACKET_FANOUT_CBPF | IGNORE_OUTGOING | flags) << 16)) as i32
}

/// Makes a new group with a kernel-chosen id (`PACKET_FANOUT_FLAG_UNIQUEID`) for the bound
/// socket `fd`; returns the id for the other pairs' sockets. The group hands everything to
/// its first socket until [`set_pairs`] says otherwise.
pub fn create(fd: RawFd) -> io::Result<u16> {
    sys::setsockopt_int(
        fd,
        libc::SOL_PACKET,
        libc::PACKET_FANOUT,
        fanout_arg(0, UNIQUEID),
    )?;
    let v = sys::getsockopt_int(fd, libc::SOL_PACKET, libc::PACKET_FANOUT)?;
    Ok((v as u32 & 0xffff) as u16)
}

/// Joins the bound socket `fd` to group `id` (made by [`create`] on the same interface).
pub fn join(fd: RawFd, id: u16) -> io::Result<()> {
    sys::setsockopt_int(fd, libc::SOL_PACKET, libc::PACKET_FANOUT, fanout_arg(id, 0))
}

/// Replaces the group's program (through any of its sockets) by one that spreads flows over
/// the first `pairs` sockets.
pub fn set_pairs(fd: RawFd, pairs: u16) -> io::Result<()> {
    sys::set_program(
        fd,
        libc::SOL_PACKET,
        libc::PACKET_FANOUT_DATA,
        &program(pairs),
    )
}

/// Instruction codes (linux/bpf_common.h, filter.h).
const LD_W_ABS: u16 = 0x20;
const LD_H_ABS: u16 = 0x28;
const LD_B_ABS: u16 = 0x30;
const LD_W_IND: u16 = 0x40;
const LD_MEM: u16 = 0x60;
const LDX_B_MSH: u16 = 0xb1;
const ST: u16 = 0x02;
const TAX: u16 = 0x07;
const XOR_X: u16 = 0xac;
const RSH_K: u16 = 0x74;
const MOD_K: u16 = 0x94;
const JA: u16 = 0x05;
const JEQ_K: u16 = 0x15;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;
const RET_A: u16 = 0x16;

/// A jump's targets, by label; `None` falls through.
type Targets = (Option<&'static str>, Option<&'static str>);

/// Classic BPF with labels, resolved to the forward offsets the kernel takes.
#[derive(Default)]
struct Asm {
    insns: Vec<(u16, Targets, u32)>,
    labels: HashMap<&'static str, usize>,
}

impl Asm {
    fn op(&mut self, code: u16, k: u32) -> &mut Self {
        self.insns.push((code, (None, None), k));
        self
    }

    fn jump(&mut self, code: u16, k: u32, jt: Option<&'static str>, jf: Option<&'static str>) {
        self.insns.push((code, (jt, jf), k));
    }

    fn label(&mut self, name: &'static str) {
        self.labels.insert(name, self.insns.len());
    }

    fn finish(self) -> Vec<libc::sock_filter> {
        let offset = |at: usize, label: Option<&str>| -> usize {
            label.map_or(0, |l| self.labels[l] - at - 1)
        };
        self.insns
            .iter()
            .enumerate()
            .map(|(at, &(code, (jt, jf), k))| {
                if code == JA {
                    libc::sock_filter {
                        code,
                        jt: 0,
                        jf: 0,
                        k: offset(at, jt) as u32,
                    }
                } else {
                    libc::sock_filter {
                        code,
                        jt: offset(at, jt) as u8,
                        jf: offset(at, jf) as u8,
                        k,
                    }
                }
            })
            .collect()
    }
}

/// The program that picks one of `pairs` sockets by flow (see the module documentation);
/// with one pair, `ret #0`.
pub fn program(pairs: u16) -> Vec<libc::sock_filter> {
    let mut a = Asm::default();
    if pairs <= 1 {
        a.op(RET_K, 0);
        return a.finish();
    }
    // The IP version.
    a.op(LD_B_ABS, 0).op(RSH_K, 4);
    a.jump(JEQ_K, 4, Some("v4"), None);
    a.jump(JEQ_K, 6, Some("v6"), Some("first"));

    // IPv4: source ^ destination, then the ports of an unfragmented TCP or UDP packet.
    a.label("v4");
    a.op(LD_W_ABS, 12).op(TAX, 0).op(LD_W_ABS, 16).op(XOR_X, 0);
    a.op(ST, 0);
    a.op(LD_B_ABS, 9);
    a.jump(JEQ_K, 6, Some("v4_ports"), None);
    a.jump(JEQ_K, 17, Some("v4_ports"), Some("spread"));
    a.label("v4_ports");
    a.op(LD_H_ABS, 6);
    a.jump(JSET_K, 0x1fff, Some("spread"), None);
    a.op(LDX_B_MSH, 0).op(LD_W_IND, 0);
    a.jump(JA, 0, Some("mix_ports"), None);

    // IPv6: the eight words of both addresses, then the ports when the next header is TCP or
    // UDP (extension headers: addresses only).
    a.label("v6");
    a.op(LD_W_ABS, 8).op(TAX, 0);
    for off in [12, 16, 20, 24, 28, 32, 36] {
        a.op(LD_W_ABS, off).op(XOR_X, 0).op(TAX, 0);
    }
    a.op(ST, 0);
    a.op(LD_B_ABS, 6);
    a.jump(JEQ_K, 6, Some("v6_ports"), None);
    a.jump(JEQ_K, 17, Some("v6_ports"), Some("spread"));
    a.label("v6_ports");
    a.op(LD_W_ABS, 40);

    // A holds the ports: fold them into M[0].
    a.label("mix_ports");
    a.op(TAX, 0).op(LD_MEM, 0).op(XOR_X, 0).op(ST, 0);

    // M[0] is the flow's hash: fold its halves, take it modulo the pairs.
    a.label("spread");
    a.op(LD_MEM, 0).op(TAX, 0).op(RSH_K, 16).op(XOR_X, 0);
    a.op(MOD_K, u32::from(pairs));
    a.op(RET_A, 0);

    a.label("first");
    a.op(RET_K, 0);
    a.finish()
}

#[cfg(test)]
mod tests {
    use super::super::bpf::run;
    use super::*;

    /// An IPv4 packet (as the program sees it: from the network header) of `proto` from `src`
    /// to `dst`, ports `sport` → `dport`.
    fn v4(src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16, frag: u16) -> Vec<u8> {
        let mut f = vec![0u8; 20 + 8];
        f[0] = 0x45;
        f[6..8].copy_from_slice(&frag.to_be_bytes());
        f[9] = proto;
        f[12..16].copy_from_slice(&src);
        f[16..20].copy_from_slice(&dst);
        f[20..22].copy_from_slice(&sport.to_be_bytes());
        f[22..24].copy_from_slice(&dport.to_be_bytes());
        f
    }

    fn v6(next: u8, sport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 40 + 8];
        f[0] = 0x60;
        f[6] = next;
        f[8] = 0xfd;
        f[23] = 2;
        f[24] = 0xfd;
        f[39] = 1;
        f[40..42].copy_from_slice(&sport.to_be_bytes());
        f[42..44].copy_from_slice(&80u16.to_be_bytes());
        f
    }

    #[test]
    fn one_pair_takes_everything() {
        let p = program(1);
        assert_eq!(p.len(), 1);
        assert_eq!(run(&p, &v4([10, 0, 0, 1], [10, 0, 0, 2], 6, 1, 2, 0)), 0);
    }

    /// Every index is below the pair count, a flow always lands on the same pair, and flows
    /// differing only in a port reach every pair.
    #[test]
    fn flows_spread_over_every_pair_and_stay_put() {
        for pairs in [2u16, 3, 4, 16] {
            let p = program(pairs);
            let mut seen = vec![0usize; usize::from(pairs)];
            for sport in 1000..1400u16 {
                for proto in [6, 17] {
                    let f = v4([10, 0, 0, 1], [10, 0, 0, 2], proto, sport, 80, 0);
                    let at = run(&p, &f);
                    assert!(at < u32::from(pairs), "{pairs} pairs: index {at}");
                    assert_eq!(run(&p, &f), at, "the same flow moved");
                    seen[at as usize] += 1;
                }
                let at = run(&p, &v6(6, sport));
                assert!(at < u32::from(pairs));
                seen[at as usize] += 1;
            }
            assert!(seen.iter().all(|&n| n > 0), "{pairs} pairs: {seen:?}");
        }
    }

    /// The ports count only where they are there: a fragment's tail and ICMP spread by
    /// addresses; ARP and a packet too short for its header go to pair 0.
    #[test]
    fn what_has_no_ports_spreads_by_address_or_goes_to_pair_0() {
        let p = program(4);
        let tail = |sport| v4([10, 0, 0, 1], [10, 0, 0, 2], 17, sport, 53, 0x00b9);
        assert_eq!(run(&p, &tail(1)), run(&p, &tail(2)));
        let icmp = |sport| v4([10, 0, 0, 1], [10, 0, 0, 2], 1, sport, 0, 0);
        assert_eq!(run(&p, &icmp(1)), run(&p, &icmp(7)));
        let hosts: std::collections::HashSet<u32> = (1..=64u8)
            .map(|h| run(&p, &v4([10, 0, 0, h], [10, 0, 0, 200], 1, 0, 0, 0)))
            .collect();
        assert!(hosts.len() > 1, "addresses do not spread: {hosts:?}");
        // ARP: hardware type 1, so no IP version.
        let mut arp = vec![0u8; 28];
        arp[1] = 1;
        assert_eq!(run(&p, &arp), 0);
        assert_eq!(
            run(&p, &v4([10, 0, 0, 1], [10, 0, 0, 2], 6, 1, 2, 0)[..16]),
            0
        );
    }

    #[test]
    fn jumps_stay_inside_and_the_program_ends_in_a_return() {
        for pairs in 2..=16u16 {
            let p = program(pairs);
            for (at, i) in p.iter().enumerate().filter(|(_, i)| i.code & 0x07 == JA) {
                let reach = if i.code == JA {
                    i.k as usize
                } else {
                    usize::from(i.jt.max(i.jf))
                };
                assert!(at + 1 + reach < p.len(), "insn {at} jumps out");
            }
            assert_eq!(p.last().unwrap().code & 0x07, RET_K & 0x07);
        }
    }
}
