//! The relay's state machine (`interop::Normaliser`, driven the way `Relay`'s thread drives
//! it with a frontend's messages) on a pipelined frontend: several requests before any reply,
//! `SET_VRING_ENABLE` before and after `SET_FEATURES`, `SET_FEATURES` that acks and un-acks
//! PROTOCOL_FEATURES, `SET_MEM_TABLE` with any region count and any payload size, huge ring
//! indexes, short payloads, and a handler that answers whenever the input says so.
//!
//! Every frontend message is accounted for, exactly once: forwarded (byte-exact, except a
//! `SET_MEM_TABLE` cut to the regions it declares), or held and then either replayed (once,
//! after the `SET_FEATURES` that acks PROTOCOL_FEATURES, without asking the handler for a reply)
//! or superseded by a later state of the same ring. At the end the input is followed by such a
//! `SET_FEATURES`, after which nothing may be left held. The held set never exceeds 64.
//!
//! This target found two ways the relay broke the "exactly once" and "in order" rules, both
//! fixed; with the `strict` feature a regression is a failure, without it it is only counted:
//! - a held-back `SET_VRING_ENABLE` whose payload was too short to name a ring, or that named a
//!   65th distinct ring, was acked and then dropped (now the policy refuses both: the
//!   connection ends, see `Fate::Refused`);
//! - the relay's own ack for an absorbed `SET_VRING_ENABLE` overtook replies the handler still
//!   owed for earlier pipelined requests (now it takes the place of the reply to a
//!   `GET_FEATURES` barrier, so it is one more reply in request order: modelled below).
//!
//!     cargo +nightly fuzz run vhost_user_pipeline [--features strict]       (from net/)
#![no_main]

#[path = "common/input.rs"]
mod input;

use std::collections::{HashMap, VecDeque};

use input::Input;
use libfuzzer_sys::fuzz_target;
use vmm_net::backend::features::VHOST_USER_F_PROTOCOL_FEATURES;
use vmm_net::backend::interop::{Message, Normaliser, Verdict};

const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const SET_MEM_TABLE: u32 = 5;
const GET_VRING_BASE: u32 = 11;
const GET_PROTOCOL_FEATURES: u32 = 15;
const GET_QUEUE_NUM: u32 = 17;
const SET_VRING_ENABLE: u32 = 18;
const GET_CONFIG: u32 = 24;
const GET_MAX_MEM_SLOTS: u32 = 36;
/// Requests whose reply the handler always sends.
const GETS: [u32; 6] = [
    GET_FEATURES,
    GET_VRING_BASE,
    GET_PROTOCOL_FEATURES,
    GET_QUEUE_NUM,
    GET_CONFIG,
    GET_MAX_MEM_SLOTS,
];
const VERSION_1: u32 = 0x1;
const NEED_REPLY: u32 = 0x8;
/// The held set's bound.
const MAX_HELD: usize = 64;


/// What became of one frontend message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Forwarded,
    Held,
    Replayed,
    Superseded,
    /// Held back, then lost: too short to name a ring.
    DroppedShort,
    /// Held back, then lost: a new ring when 64 were already held.
    DroppedFull,
    /// Refused (a ring that does not exist, a payload of the wrong size, ...): the relay ends
    /// the connection, and nothing after it is sent.
    Refused,
}

/// The fuzz target's picture of the relay and of the handler behind it.
#[derive(Default)]
struct Model {
    fates: Vec<Fate>,
    /// Ring → (message id, payload) of the latest held-back state.
    held: HashMap<u32, (usize, Vec<u8>)>,
    protocol_acked: bool,
    /// Replies the handler owes the frontend, in request order (message ids).
    owed: VecDeque<usize>,
    /// The relay refused a message: the connection is over.
    refused: bool,
}

impl Model {
    /// One frontend message through the normaliser, as `Relay`'s thread does it.
    fn send(&mut self, norm: &mut Normaliser, request: u32, flags: u32, payload: Vec<u8>) {
        if self.refused {
            return;
        }
        let id = self.fates.len();
        let mut msg = Message::new(request, flags, payload.clone());
        let verdict = norm.frontend_message(&mut msg);
        assert_eq!((msg.request, msg.flags), (request, flags));
        let early_enable = request == SET_VRING_ENABLE && !self.protocol_acked;
        match verdict {
            Verdict::Forward => {
                assert!(!early_enable, "an early SET_VRING_ENABLE was forwarded");
                assert_eq!(msg.payload, expected_forward(request, &payload));
                self.fates.push(Fate::Forwarded);
                if request == SET_FEATURES && payload.len() >= 8 {
                    let v = u64::from_le_bytes(payload[..8].try_into().unwrap());
                    self.protocol_acked = v & VHOST_USER_F_PROTOCOL_FEATURES != 0;
                }
                if GETS.contains(&request) || flags & NEED_REPLY != 0 {
                    self.owed.push_back(id);
                }
                self.replay(norm);
            }
            Verdict::Absorb { reply } => {
                assert!(early_enable, "message {request} absorbed");
                assert_eq!(reply, flags & NEED_REPLY != 0);
                // The relay's ack comes back as the reply to its GET_FEATURES barrier, in order
                // behind whatever the handler already owes.
                if reply {
                    self.owed.push_back(id);
                }
                self.fates.push(Fate::Held);
                match payload.get(..4) {
                    Some(b) => {
                        let ring = u32::from_le_bytes(b.try_into().unwrap());
                        if let Some((old, _)) = self.held.remove(&ring) {
                            self.fates[old] = Fate::Superseded;
                            self.held.insert(ring, (id, payload));
                        } else if self.held.len() < MAX_HELD {
                            self.held.insert(ring, (id, payload));
                        } else {
                            self.fates[id] = Fate::DroppedFull;
                        }
                    }
                    None => self.fates[id] = Fate::DroppedShort,
                }
            }
            Verdict::Refuse(_) => {
                self.fates.push(Fate::Refused);
                self.refused = true;
            }
        }
        assert!(self.held.len() <= MAX_HELD);
    }

    /// What the relay sends the handler after a forwarded message.
    fn replay(&mut self, norm: &mut Normaliser) {
        let replayed = norm.replay();
        if !self.protocol_acked {
            assert!(replayed.is_empty(), "replayed before PROTOCOL_FEATURES");
            return;
        }
        assert_eq!(replayed.len(), self.held.len(), "replayed {replayed:?}");
        for m in &replayed {
            assert_eq!(m.request, SET_VRING_ENABLE);
            assert_eq!(
                m.flags & NEED_REPLY,
                0,
                "a replay must not make the handler reply"
            );
            assert!(m.fds.is_empty());
            let ring = u32::from_le_bytes(m.payload[..4].try_into().unwrap());
            let (id, payload) = self.held.remove(&ring).expect("replayed a ring not held");
            assert_eq!(m.payload, payload, "ring {ring} replayed a stale state");
            assert_eq!(self.fates[id], Fate::Held);
            self.fates[id] = Fate::Replayed;
        }
        assert!(norm.replay().is_empty(), "replayed twice");
    }
}

/// A forwarded message's payload: unchanged, but for a `SET_MEM_TABLE` longer than the regions
/// it declares (at most 32), which is cut to them.
fn expected_forward(request: u32, payload: &[u8]) -> Vec<u8> {
    if request == SET_MEM_TABLE && payload.len() >= 4 {
        let n = u32::from_le_bytes(payload[..4].try_into().unwrap()) as usize;
        let want = 8 + 32 * n;
        if n <= 32 && payload.len() > want {
            return payload[..want].to_vec();
        }
    }
    payload.to_vec()
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mut norm = Normaliser::default();
    let mut model = Model::default();
    let mut steps = 0;
    while !input.0.is_empty() && steps < 512 {
        steps += 1;
        let op = input.u8();
        let wide = op & 0x08 != 0; // huge values
        let odd = op & 0x10 != 0; // odd payload sizes
        let flags = VERSION_1 | u32::from(input.u8() & 0x0c) | u32::from(op & 0x80) << 24;
        match op % 8 {
            0 => {
                let mut v = input.u64() & !VHOST_USER_F_PROTOCOL_FEATURES;
                if op & 0x20 != 0 {
                    v |= VHOST_USER_F_PROTOCOL_FEATURES;
                }
                let mut p = v.to_le_bytes().to_vec();
                if odd {
                    p.resize(usize::from(input.u8() % 16), 0);
                }
                model.send(&mut norm, SET_FEATURES, flags, p);
            }
            1 | 7 => {
                let ring = if wide {
                    input.u32()
                } else {
                    u32::from(input.u8() % 4)
                };
                let mut p = ring.to_le_bytes().to_vec();
                p.extend_from_slice(&u32::from(input.u8() & 1).to_le_bytes());
                if odd {
                    p.resize(usize::from(input.u8() % 12), 0xee);
                }
                model.send(&mut norm, SET_VRING_ENABLE, flags, p);
            }
            2 => {
                let n = if wide {
                    input.u32()
                } else {
                    u32::from(input.u8() % 10)
                };
                let len = if odd {
                    usize::from(u16::from_le_bytes([input.u8(), input.u8()])) % 4097
                } else {
                    8 + 32 * (n as usize % 9) + 32 * usize::from(input.u8() % 2)
                };
                let mut p = n.to_le_bytes().to_vec();
                p.extend(input.bytes(len.saturating_sub(4)));
                p.truncate(len);
                model.send(&mut norm, SET_MEM_TABLE, flags, p);
            }
            3 => {
                let request = GETS[usize::from(input.u8()) % GETS.len()];
                let len = usize::from(input.u8() % 16);
                let p = input.bytes(len);
                model.send(&mut norm, request, flags, p);
            }
            4 => {
                let request = if wide {
                    input.u32()
                } else {
                    u32::from(input.u8() % 48)
                };
                let len = usize::from(input.u8());
                let p = input.bytes(len);
                model.send(&mut norm, request, flags, p);
            }
            5 => {
                model.owed.pop_front();
            }
            _ => model.owed.clear(),
        }
    }

    // Whatever is still held is replayed once PROTOCOL_FEATURES is acked.
    model.send(
        &mut norm,
        SET_FEATURES,
        VERSION_1,
        VHOST_USER_F_PROTOCOL_FEATURES.to_le_bytes().to_vec(),
    );
    if model.refused {
        // The connection ended: what was held goes with it.
        return;
    }
    assert!(model.held.is_empty());
    for (id, fate) in model.fates.iter().enumerate() {
        assert_ne!(*fate, Fate::Held, "message {id} held forever");
        if cfg!(feature = "strict") {
            assert!(
                !matches!(fate, Fate::DroppedShort | Fate::DroppedFull),
                "message {id} acked and dropped: {fate:?}"
            );
        }
    }
});
