//! The reference text for device specifications, shown by `--help`: a fixed head (the forms
//! and the options every transport shares), then one entry per row of
//! [`KINDS`](crate::kind::KINDS) in each form, then examples. It is assembled at compile time,
//! so it stays a `&'static str`.

use crate::kind::{Row, KINDS};

/// The `&'static str` a `const fn(&mut Out)` writes: measured, then written.
macro_rules! assembled {
    ($write:ident) => {{
        const LEN: usize = {
            let mut out = Out {
                buf: &mut [],
                len: 0,
                column: 0,
            };
            $write(&mut out);
            out.len
        };
        const BYTES: [u8; LEN] = {
            let mut buf = [0u8; LEN];
            $write(&mut Out {
                buf: &mut buf,
                len: 0,
                column: 0,
            });
            buf
        };
        match core::str::from_utf8(&BYTES) {
            Ok(s) => s,
            Err(_) => panic!("the help text is not UTF-8"),
        }
    }};
}

/// Every transport and option, for `vmm --help` and `vmm net-backend --help`.
pub const SPEC_HELP: &str = assembled!(help);

/// The vector transports' names, for an unknown `transport=NAME`.
pub const VECTOR_NAMES: &str = assembled!(vector_names);

/// The legacy transports' names, for an unknown `ethN=NAME`.
pub const LEGACY_NAMES: &str = assembled!(legacy_names);

const HEAD: &str = "\
DEVICE SPECIFICATIONS (User-Mode Linux syntax)

  vecN:transport=NAME,key=value,...      vector transports
  user[,key=value,...]                   shorthand for vec0:transport=user[,key=value,...]
                                         (with several --net, the next free vecN)
  ethN=TRANSPORT,field,field,...         legacy transports (positional; empty field = default)

Unlike UML, every mistake is an error at start-up naming the option and its value: an unknown
transport or option, an option given twice, a bad number, MAC or address, a missing mandatory
option, an option of another transport, one of a pair (rx_key/tx_key, ...) without the other.
Numbers are decimal or 0x-hexadecimal; keys, sessions and 32-bit cookies take the full unsigned
32-bit range (UML itself parses them as signed). Booleans are 0 or 1.

Options of every vector transport:
  depth=N       packets per multi-packet system call (recvmmsg/sendmmsg)   default 64, 1..=1024
  mtu=N         the device's MTU, offered to the guest                     default 1500, 576..=65535
  headroom=N    bytes reserved before each frame                           default 2, 0..=256
  vec=0|1       multi-packet I/O; vec=0 moves one packet per call          default 1
  mac=MAC       the device's MAC (unicast)                      default: random, locally administered
  busy_poll=US|auto
                how long the worker keeps looking for work after each event before
                it sleeps (Linux's SO_BUSY_POLL, vhost-net's busyloop_timeout): a
                streaming guest's chains are taken as they come, not a wake-up later,
                for the time of a core spent looking. auto: a window of up to 50 us
                that opens at the second close event in a row (not at a ping's echo),
                grows while they come close and shrinks to none when they do not (an
                idle NIC never looks); US: always that long; 0: never. How often and how
                long it looked: busy_poll_spells and busy_poll_us in the counters
                                                                     default auto, 0..=1000
  affinity=CPUS the host CPUs the device's workers (one per queue pair) run on, as taskset
                sets them: a CPU N or a range N-M, the option repeated for more
                (affinity=2-3,affinity=6); each must be one the process may run on, or
                the device refuses to start. The threads answering the frontend stay
                unpinned. A trade: on a core of its own a worker cannot be woken on its
                waker's, so round trips take longer; beside the guest's core, they are
                shorter but the two share it (measured in the README's Performance section)
                                                            default: where the process may run
tap, hybrid, raw, gre, l2tpv3, bess, fd also:
  gro=0|1       64 KiB GSO frames into the guest                            default 0
                tap, hybrid, raw: the host side always has a virtio_net_hdr (TUNSETOFFLOAD,
                PACKET_VNET_HDR), so, as with UML's own, the guest sends partial checksums
                and 64 KiB TSO frames and takes partial checksums either way; gro=1 adds
                GSO frames into the guest, mirrored to the host from what it negotiates
                (without it the kernel segments what it hands a tap, while GSO frames
                reaching raw and hybrid are dropped and counted: turn tso/gso off there)
                gre, l2tpv3, bess, fd (and every transport without that header): the guest
                sends partial checksums and 64 KiB TSO frames, which the backend completes
                and segments before they leave; gro=1 adds consecutive TCP segments of a
                flow merged into 64 KiB frames for the guest
raw, hybrid also:
  bpffile=PATH  classic BPF program (an array of struct sock_filter, 8 bytes each) attached as
                the receive filter; a malformed file is refused at start-up
  bpfflash=0|1  allow the receive filter to be replaced while the VM runs (UML: the guest's
                ethtool -f; here the control socket's `net bpf NIC FILE`)  default 0
                Both are refused on other transports: they have no BPF receive filter.
tap, raw, xdp also:
  queues=N      queue pairs offered to the guest (VIRTIO_NET_F_MQ)        default 1, 1..=16
                each pair has a worker thread and a descriptor of its own: a queue of a
                multi-queue tap (one made with `ip tuntap add ... multi_queue`, or a new
                one), an AF_PACKET socket of a fanout group that hashes flows over the
                pairs the guest enabled (Linux enables one per vCPU), or an AF_XDP socket
                on the interface's receive queue of the pair's number (the NIC spreads
                flows over its queues; it needs at least N); works with the VM's own NIC,
                QEMU (queues=N) and DPDK's virtio_user (queues=N,cq=1)

vector transports:
";

const LEGACY_HEAD: &str = "\nlegacy transports:\n";

const TAIL: &str = "
EXAMPLES
  vec0:transport=raw,ifname=veth0,gro=1,depth=128
  vec0:transport=tap,ifname=tap0,mac=02:00:00:00:00:01
  vec0:transport=gre,src=192.0.2.1,dst=192.0.2.2,rx_key=0x1,tx_key=0x1,sequence=1
  vec0:transport=l2tpv3,udp=1,src=192.0.2.1,srcport=1701,dst=192.0.2.2,dstport=1701,rx_session=0xffffffff,tx_session=0xffffffff
  vec0:transport=user,hostfwd=tcp::8080-:80
  user,hostfwd=tcp:127.0.0.1:2222-10.0.2.15:22,restrict=1
  eth0=mcast,,239.192.168.1,1102,1
  vec0:transport=vde,vnl=vde:///tmp/switch
  eth0=daemon,,unix,/tmp/uml.ctl
";

/// Where a vector transport's synopsis starts, and its description below it.
const VECTOR_COLUMN: usize = 12;
/// Where a legacy transport's description starts.
const LEGACY_COLUMN: usize = 42;

const fn help(out: &mut Out) {
    out.text(HEAD, 0);
    let mut i = 0;
    while i < KINDS.len() {
        let row: &Row = &KINDS[i];
        if let Some(v) = &row.vector {
            out.text("  ", 0);
            out.text(row.name, 0);
            out.pad_to(VECTOR_COLUMN, 1);
            out.text(v.synopsis, VECTOR_COLUMN);
            out.text("\n", 0);
            out.pad_to(VECTOR_COLUMN, 0);
            out.text(v.about, VECTOR_COLUMN);
            out.text("\n", 0);
        }
        i += 1;
    }
    out.text(LEGACY_HEAD, 0);
    let mut i = 0;
    while i < KINDS.len() {
        if let Some(l) = &KINDS[i].legacy {
            out.text("  ethN=", 0);
            out.text(l.usage, 0);
            out.pad_to(LEGACY_COLUMN, 2);
            out.text(l.about, LEGACY_COLUMN);
            out.text("\n", 0);
        }
        i += 1;
    }
    out.text(TAIL, 0);
}

const fn vector_names(out: &mut Out) {
    names(out, true);
}

const fn legacy_names(out: &mut Out) {
    names(out, false);
}

/// The names of the transports with a vector (or legacy) form, comma-separated.
const fn names(out: &mut Out, vector: bool) {
    let mut i = 0;
    while i < KINDS.len() {
        let row = &KINDS[i];
        let listed = if vector {
            row.vector.is_some()
        } else {
            row.legacy.is_some()
        };
        if listed {
            if out.len > 0 {
                out.text(", ", 0);
            }
            out.text(row.name, 0);
        }
        i += 1;
    }
}

/// Text written at compile time into a buffer; past its end, only counted (a first pass with
/// an empty buffer measures the text).
struct Out<'a> {
    buf: &'a mut [u8],
    len: usize,
    column: usize,
}

impl Out<'_> {
    const fn byte(&mut self, b: u8) {
        if self.len < self.buf.len() {
            self.buf[self.len] = b;
        }
        self.len += 1;
        self.column = if b == b'\n' { 0 } else { self.column + 1 };
    }

    /// `s`, every line after its first indented to `indent`.
    const fn text(&mut self, s: &str, indent: usize) {
        let s = s.as_bytes();
        let mut i = 0;
        while i < s.len() {
            if self.column == 0 && s[i] != b'\n' {
                self.pad_to(indent, 0);
            }
            self.byte(s[i]);
            i += 1;
        }
    }

    /// Spaces up to `column`, and at least `min` of them.
    const fn pad_to(&mut self, column: usize, min: usize) {
        let mut n = 0;
        while n < min || self.column < column {
            self.byte(b' ');
            n += 1;
        }
    }
}
