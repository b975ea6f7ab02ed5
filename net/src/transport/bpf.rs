//! Classic BPF programs from `bpffile=`: an array of `struct sock_filter` (8 bytes each: u16
//! code, u8 jt, u8 jf, u32 k, host byte order), as UML loads them.

use std::path::Path;

use super::TransportError;

/// The kernel's limit on a classic program (BPF_MAXINSNS).
pub const MAX_INSNS: usize = 4096;

/// A validated program, ready for `SO_ATTACH_FILTER`.
#[derive(Clone, Debug)]
pub struct BpfProgram {
    insns: Vec<libc::sock_filter>,
}

impl BpfProgram {
    /// Reads and checks the file: non-empty, a whole number of instructions, at most
    /// [`MAX_INSNS`], and ending in a return (the kernel's verifier checks the rest when the
    /// program is attached; that error also names the file).
    pub fn load(path: &Path) -> Result<BpfProgram, TransportError> {
        let err = |reason: String| TransportError::Bpf {
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        Self::parse(&bytes).map_err(err)
    }

    /// Checks a program image; the error is the reason it is refused.
    pub fn parse(bytes: &[u8]) -> Result<BpfProgram, String> {
        if bytes.is_empty() {
            return Err("empty file".into());
        }
        if bytes.len() % 8 != 0 {
            return Err(format!(
                "{} bytes is not a whole number of 8-byte instructions",
                bytes.len()
            ));
        }
        let insns: Vec<libc::sock_filter> = bytes
            .chunks_exact(8)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        if insns.len() > MAX_INSNS {
            return Err(format!(
                "{} instructions, more than {MAX_INSNS}",
                insns.len()
            ));
        }
        const BPF_CLASS_MASK: u16 = 0x07;
        const BPF_RET: u16 = 0x06;
        if insns
            .last()
            .is_some_and(|i| i.code & BPF_CLASS_MASK != BPF_RET)
        {
            return Err("the last instruction is not a return".into());
        }
        Ok(BpfProgram { insns })
    }

    /// A program that keeps only frames of packet type `pkttype` (e.g. `PACKET_OUTGOING`) and
    /// hands those to `then` (or accepts them whole). The kernel runs it before it copies a
    /// frame to the socket, so the frames it rejects cost no copy and no wake-up.
    ///
    /// Classic BPF only jumps forward, so `then`'s own jumps stay valid behind the prefix.
    pub fn only_pkttype(pkttype: u8, then: Option<&BpfProgram>) -> Result<BpfProgram, String> {
        const LD_B_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
        const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
        const RET_K: u16 = 0x06;
        // SKF_AD_OFF (-0x1000) + SKF_AD_PKTTYPE (4): the skb's packet type.
        const PKTTYPE: u32 = (-0x1000i32 + 4) as u32;
        let insn = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
        let mut insns = vec![
            insn(LD_B_ABS, 0, 0, PKTTYPE),
            insn(JEQ_K, 1, 0, u32::from(pkttype)),
            insn(RET_K, 0, 0, 0),
        ];
        match then {
            Some(p) => insns.extend_from_slice(&p.insns),
            None => insns.push(insn(RET_K, 0, 0, u32::MAX)),
        }
        if insns.len() > MAX_INSNS {
            return Err(format!(
                "{} instructions with the direction check, more than {MAX_INSNS}",
                insns.len()
            ));
        }
        Ok(BpfProgram { insns })
    }

    pub fn instructions(&self) -> &[libc::sock_filter] {
        &self.insns
    }

    /// A program of one `ret #k`: accept k bytes of every packet (0 drops all).
    pub fn ret(k: u32) -> Vec<u8> {
        let mut b = Vec::with_capacity(8);
        b.extend_from_slice(&0x0006u16.to_ne_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&k.to_ne_bytes());
        b
    }
}

/// Runs a classic BPF program over `packet` in user space, as the kernel's socket filter
/// would, and returns the number of bytes it accepts (0: the packet is rejected).
///
/// The capture of the backend's control handle filters frames with programs libpcap compiled
/// ([`crate::transport::compile_filter`]), where no socket sees the frame. Anything the kernel
/// would refuse or abort on (a load past the packet's end, a division by zero, a jump out of
/// the program, an unknown instruction, an ancillary load such as `SKF_AD_PKTTYPE`, which has
/// no meaning outside a socket) rejects the packet rather than panic: the program is data.
/// Classic BPF jumps only forward, so a run takes at most `insns.len()` steps.
pub fn run(insns: &[libc::sock_filter], packet: &[u8]) -> u32 {
    // Instruction classes, sizes, modes, operations (linux/bpf_common.h).
    const LD: u16 = 0x00;
    const LDX: u16 = 0x01;
    const ST: u16 = 0x02;
    const STX: u16 = 0x03;
    const ALU: u16 = 0x04;
    const JMP: u16 = 0x05;
    const RET: u16 = 0x06;
    const MISC: u16 = 0x07;
    const W: u16 = 0x00;
    const H: u16 = 0x08;
    const B: u16 = 0x10;
    const IMM: u16 = 0x00;
    const ABS: u16 = 0x20;
    const IND: u16 = 0x40;
    const MEM: u16 = 0x60;
    const LEN: u16 = 0x80;
    const MSH: u16 = 0xa0;
    const SRC_X: u16 = 0x08;
    const RVAL_X: u16 = 0x08;
    const RVAL_A: u16 = 0x10;
    const TXA: u16 = 0x80;
    const MEMWORDS: usize = 16;

    let load = |off: u32, size: u16| -> Option<u32> {
        let off = usize::try_from(off).ok()?;
        let n = match size {
            W => 4,
            H => 2,
            B => 1,
            _ => return None,
        };
        let bytes = packet.get(off..off.checked_add(n)?)?;
        Some(bytes.iter().fold(0u32, |v, &b| (v << 8) | u32::from(b)))
    };
    let mut a: u32 = 0;
    let mut x: u32 = 0;
    let mut mem = [0u32; MEMWORDS];
    let len = u32::try_from(packet.len()).unwrap_or(u32::MAX);
    let mut pc = 0usize;
    while let Some(i) = insns.get(pc) {
        pc += 1;
        let k = i.k;
        match i.code & 0x07 {
            LD | LDX => {
                let ldx = i.code & 0x07 == LDX;
                let size = i.code & 0x18;
                let v = match i.code & 0xe0 {
                    IMM => Some(k),
                    ABS if !ldx => load(k, size),
                    IND if !ldx => x.checked_add(k).and_then(|off| load(off, size)),
                    MEM => mem.get(k as usize).copied(),
                    LEN => Some(len),
                    // ldxb 4*([k]&0xf): the IPv4 header length.
                    MSH if ldx && size == B => load(k, B).map(|b| (b & 0x0f) * 4),
                    _ => None,
                };
                let Some(v) = v else { return 0 };
                if ldx {
                    x = v;
                } else {
                    a = v;
                }
            }
            ST | STX => {
                let Some(slot) = mem.get_mut(k as usize) else {
                    return 0;
                };
                *slot = if i.code & 0x07 == ST { a } else { x };
            }
            ALU => {
                let operand = if i.code & SRC_X != 0 { x } else { k };
                a = match i.code & 0xf0 {
                    0x00 => a.wrapping_add(operand),
                    0x10 => a.wrapping_sub(operand),
                    0x20 => a.wrapping_mul(operand),
                    0x30 if operand != 0 => a / operand,
                    0x40 => a | operand,
                    0x50 => a & operand,
                    0x60 => a.checked_shl(operand).unwrap_or(0),
                    0x70 => a.checked_shr(operand).unwrap_or(0),
                    0x80 => a.wrapping_neg(),
                    0x90 if operand != 0 => a % operand,
                    0xa0 => a ^ operand,
                    _ => return 0,
                };
            }
            JMP => {
                let operand = if i.code & SRC_X != 0 { x } else { k };
                let skip = match i.code & 0xf0 {
                    0x00 => k as usize,
                    op => {
                        let taken = match op {
                            0x10 => a == operand,
                            0x20 => a > operand,
                            0x30 => a >= operand,
                            0x40 => a & operand != 0,
                            _ => return 0,
                        };
                        usize::from(if taken { i.jt } else { i.jf })
                    }
                };
                pc = match pc.checked_add(skip) {
                    Some(p) if p < insns.len() => p,
                    _ => return 0,
                };
            }
            RET => {
                return match i.code & 0x18 {
                    0 => k,
                    RVAL_X => x,
                    RVAL_A => a,
                    _ => 0,
                }
            }
            MISC => {
                if i.code & 0xf8 == TXA {
                    a = x;
                } else {
                    x = a;
                }
            }
            _ => return 0,
        }
    }
    // Fell off the end: the kernel's checker refuses such a program; reject the packet.
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direction check goes in front; the user's program keeps its own (relative) jumps.
    #[test]
    fn direction_check_prefixes_the_users_program() {
        let user = BpfProgram::parse(&BpfProgram::ret(96)).unwrap();
        let p = BpfProgram::only_pkttype(4, Some(&user)).unwrap();
        let i = p.instructions();
        assert_eq!(i.len(), 4);
        assert_eq!((i[0].code, i[0].k), (0x30, 0xffff_f004), "ld pkttype");
        assert_eq!((i[1].code, i[1].jt, i[1].jf, i[1].k), (0x15, 1, 0, 4));
        assert_eq!((i[2].code, i[2].k), (0x06, 0), "others: dropped");
        assert_eq!((i[3].code, i[3].k), (0x06, 96), "the user's program");
        let alone = BpfProgram::only_pkttype(4, None).unwrap();
        assert_eq!(alone.instructions()[3].k, u32::MAX, "accept whole frames");
        let full = BpfProgram::parse(&BpfProgram::ret(1).repeat(MAX_INSNS)).unwrap();
        assert!(BpfProgram::only_pkttype(4, Some(&full)).is_err());
    }

    #[test]
    fn malformed_programs_are_refused_with_a_reason() {
        assert!(BpfProgram::parse(&[]).unwrap_err().contains("empty"));
        assert!(BpfProgram::parse(&[0; 7]).unwrap_err().contains("8-byte"));
        // ld #0 without a return.
        assert!(BpfProgram::parse(&[0; 8]).unwrap_err().contains("return"));
        assert!(BpfProgram::parse(&vec![0; 8 * 5000])
            .unwrap_err()
            .contains("4096"));
        assert_eq!(
            BpfProgram::parse(&BpfProgram::ret(0))
                .unwrap()
                .instructions()
                .len(),
            1
        );
    }

    fn i(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
        libc::sock_filter { code, jt, jf, k }
    }

    /// Hand-made programs: loads of each size, the IPv4 header-length idiom, memory, ALU,
    /// conditional jumps; and what must reject rather than panic.
    #[test]
    fn the_interpreter_runs_programs_as_the_kernel_does() {
        let pkt = [0x45u8, 0x01, 0x02, 0x03, 0x04, 0x05];
        // ldh [1]; jeq #0x0102 -> ret #7, else ret #0
        let p = [
            i(0x28, 0, 0, 1),
            i(0x15, 0, 1, 0x0102),
            i(0x06, 0, 0, 7),
            i(0x06, 0, 0, 0),
        ];
        assert_eq!(run(&p, &pkt), 7);
        assert_eq!(run(&p, &pkt[..2]), 0, "a load past the end rejects");
        // ldxb 4*([0]&0xf) = 20; txa; add #2; st M[3]; ld #0; ld M[3]; ret a
        let p = [
            i(0xb1, 0, 0, 0),
            i(0x87, 0, 0, 0),
            i(0x04, 0, 0, 2),
            i(0x02, 0, 0, 3),
            i(0x00, 0, 0, 0),
            i(0x60, 0, 0, 3),
            i(0x16, 0, 0, 0),
        ];
        assert_eq!(run(&p, &pkt), 22);
        // ld len; ldx #2; ld [x+0] (word at 2); jset #0x0400 -> ret a
        let p = [
            i(0x80, 0, 0, 0),
            i(0x01, 0, 0, 2),
            i(0x40, 0, 0, 0),
            i(0x45, 0, 1, 0x0400),
            i(0x16, 0, 0, 0),
            i(0x06, 0, 0, 1),
        ];
        assert_eq!(run(&p, &pkt), 0x0203_0405);
        // Division by zero, a jump out of the program, falling off the end, an ancillary load.
        assert_eq!(run(&[i(0x34, 0, 0, 0), i(0x06, 0, 0, 9)], &pkt), 0);
        assert_eq!(run(&[i(0x05, 0, 0, 5), i(0x06, 0, 0, 9)], &pkt), 0);
        assert_eq!(run(&[i(0x00, 0, 0, 1)], &pkt), 0);
        assert_eq!(
            run(&[i(0x30, 0, 0, 0xffff_f004), i(0x06, 0, 0, 9)], &pkt),
            0
        );
        assert_eq!(
            run(&[i(0x61, 0, 0, 16), i(0x06, 0, 0, 9)], &pkt),
            0,
            "M[16]"
        );
    }
}
