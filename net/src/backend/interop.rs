//! A vhost-user message relay between a real frontend and vhost-user-backend's request
//! handler, which normalises what real frontends send and the `vhost` crate (0.18) rejects.
//!
//! Interop wins over strictness. Two messages seen on the socket break the crate:
//! - UML 6.1's `virtio_uml` sends `SET_MEM_TABLE` with `num_regions = 1` in a **72-byte**
//!   payload: room for two regions, the spare one zeroed. The crate requires exactly
//!   8 + 32 × num_regions bytes and fails the request, and UML's virtio-net probe fails with
//!   -EIO. We cut the payload to the regions it declares.
//! - QEMU 7.2 sends `SET_VRING_ENABLE` right after connecting, **before** `SET_FEATURES` has
//!   acked `VHOST_USER_F_PROTOCOL_FEATURES`; the crate answers InactiveFeature and drops the
//!   connection. QEMU does not send it again when it starts the device, yet once the feature
//!   is acked the rings start disabled. So we absorb it (acking it ourselves if the frontend
//!   asked for a reply), remember the last state per ring, and replay those states to the
//!   handler right after the `SET_FEATURES` that acks the feature: the device ends up as QEMU
//!   believes it is.
//!
//! Everything else is relayed unchanged, with its file descriptors (SCM_RIGHTS). Only control
//! messages cross the relay: the datapath is shared memory and eventfds.

use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::features::VHOST_USER_F_PROTOCOL_FEATURES;

/// vhost-user request codes the relay looks at.
const SET_FEATURES: u32 = 2;
const SET_MEM_TABLE: u32 = 5;
const SET_VRING_ENABLE: u32 = 18;
/// Header flags.
const VERSION_1: u32 = 0x1;
const REPLY: u32 = 0x4;
const NEED_REPLY: u32 = 0x8;
/// The largest payload the protocol allows (the crate's MAX_MSG_SIZE).
const MAX_PAYLOAD: usize = 4096;
/// Most descriptors one message carries (the crate's MAX_ATTACHED_FD_ENTRIES).
const MAX_FDS: usize = 32;
/// Bytes of a `SET_MEM_TABLE` region entry and of its payload header.
const REGION: usize = 32;
const MEM_HDR: usize = 8;

/// One vhost-user message: header fields, payload, attached descriptors.
#[derive(Debug)]
pub struct Message {
    pub request: u32,
    pub flags: u32,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Message {
    fn header(&self) -> [u8; 12] {
        let mut h = [0u8; 12];
        h[0..4].copy_from_slice(&self.request.to_le_bytes());
        h[4..8].copy_from_slice(&self.flags.to_le_bytes());
        h[8..12].copy_from_slice(&(self.payload.len() as u32).to_le_bytes());
        h
    }

    fn u64_payload(&self) -> Option<u64> {
        Some(u64::from_le_bytes(self.payload.get(..8)?.try_into().ok()?))
    }
}

/// Errors that end a relay (and so the connection).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("peer closed the connection")]
    Closed,
    #[error("message payload of {0} bytes exceeds {MAX_PAYLOAD}")]
    TooBig(usize),
    #[error("socket: {0}")]
    Io(#[from] io::Error),
}

/// Reads one message, with the descriptors that came with its header.
pub fn recv_message(sock: &UnixStream) -> Result<Message, RelayError> {
    let mut hdr = [0u8; 12];
    let mut raw_fds = [-1 as RawFd; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: hdr.as_mut_ptr().cast(),
        iov_len: hdr.len(),
    }];
    // SAFETY: the iovec points at `hdr`, a live local buffer of the stated length that any
    // bytes may be written to.
    let (n, nfds) = unsafe { sock.recv_with_fds(&mut iov, &mut raw_fds) }
        .map_err(|e| RelayError::Io(io::Error::from_raw_os_error(e.errno())))?;
    // SAFETY: recv_with_fds returned `nfds` new descriptors that nobody else owns.
    let fds: Vec<OwnedFd> = raw_fds[..nfds]
        .iter()
        .map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) })
        .collect();
    if n == 0 {
        return Err(RelayError::Closed);
    }
    // A stream socket may split the header; the rest carries no descriptors.
    let mut reader = sock;
    if n < hdr.len() {
        reader.read_exact(&mut hdr[n..]).map_err(eof_is_closed)?;
    }
    let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
    if size > MAX_PAYLOAD {
        return Err(RelayError::TooBig(size));
    }
    let mut payload = vec![0u8; size];
    reader.read_exact(&mut payload).map_err(eof_is_closed)?;
    Ok(Message {
        request: u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]),
        flags: u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]),
        payload,
        fds,
    })
}

fn eof_is_closed(e: io::Error) -> RelayError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        RelayError::Closed
    } else {
        RelayError::Io(e)
    }
}

/// Writes one message with its descriptors.
pub fn send_message(sock: &UnixStream, msg: &Message) -> Result<(), RelayError> {
    let hdr = msg.header();
    let raw: Vec<RawFd> = msg
        .fds
        .iter()
        .map(std::os::fd::AsRawFd::as_raw_fd)
        .collect();
    let bufs: [&[u8]; 2] = [&hdr, &msg.payload];
    let total = hdr.len() + msg.payload.len();
    let sent = sock
        .send_with_fds(&bufs[..], &raw)
        .map_err(|e| RelayError::Io(io::Error::from_raw_os_error(e.errno())))?;
    if sent < total {
        // The descriptors went with the first bytes; the rest is plain data.
        let mut all = Vec::with_capacity(total);
        all.extend_from_slice(&hdr);
        all.extend_from_slice(&msg.payload);
        let mut w = sock;
        w.write_all(&all[sent..])?;
    }
    Ok(())
}

impl Normaliser {
    /// The held-back ring-enable messages to send the handler now, after a message was
    /// forwarded: non-empty once, right after `SET_FEATURES` acked PROTOCOL_FEATURES.
    pub fn replay(&mut self) -> Vec<Message> {
        if self.acked_features & VHOST_USER_F_PROTOCOL_FEATURES == 0
            || self.early_enables.is_empty()
        {
            return Vec::new();
        }
        log::debug!(
            "replaying {} held-back SET_VRING_ENABLE",
            self.early_enables.len()
        );
        self.early_enables
            .drain(..)
            .map(|(_, payload)| Message {
                request: SET_VRING_ENABLE,
                flags: VERSION_1,
                payload,
                fds: Vec::new(),
            })
            .collect()
    }
}

/// What the relay decides for one frontend message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it on (possibly rewritten).
    Forward,
    /// Absorb it; if `reply` the frontend gets an ack of 0 from us.
    Absorb { reply: bool },
}

/// The state the normaliser keeps: the features the frontend acked, and the ring-enable
/// states it sent too early, in order (ring index, payload).
#[derive(Debug, Default)]
pub struct Normaliser {
    acked_features: u64,
    early_enables: Vec<(u32, Vec<u8>)>,
}

impl Normaliser {
    /// Inspects (and may rewrite) a frontend → backend message.
    pub fn frontend_message(&mut self, msg: &mut Message) -> Verdict {
        match msg.request {
            SET_FEATURES => {
                if let Some(v) = msg.u64_payload() {
                    log::debug!("SET_FEATURES {v:#x}");
                    self.acked_features = v;
                }
                Verdict::Forward
            }
            SET_MEM_TABLE => {
                if let Some(n) = msg
                    .payload
                    .get(..4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                {
                    let want = MEM_HDR + REGION * n as usize;
                    if n as usize <= MAX_FDS && msg.payload.len() > want {
                        log::debug!(
                            "SET_MEM_TABLE: {} regions in a {}-byte payload: cut to {want}",
                            n,
                            msg.payload.len()
                        );
                        msg.payload.truncate(want);
                    }
                }
                Verdict::Forward
            }
            SET_VRING_ENABLE if self.acked_features & VHOST_USER_F_PROTOCOL_FEATURES == 0 => {
                log::debug!(
                    "SET_VRING_ENABLE {:02x?} before PROTOCOL_FEATURES was acked: held back",
                    msg.payload
                );
                if let Some(index) = msg
                    .payload
                    .get(..4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                {
                    // Only the latest state of a ring matters; a frontend cannot make this grow
                    // past the rings it names (bounded by the 32-bit index, kept small below).
                    self.early_enables.retain(|(i, _)| *i != index);
                    if self.early_enables.len() < 64 {
                        self.early_enables.push((index, msg.payload.clone()));
                    }
                }
                Verdict::Absorb {
                    reply: msg.flags & NEED_REPLY != 0,
                }
            }
            _ => Verdict::Forward,
        }
    }
}

/// A running relay: two threads, frontend → handler and handler → frontend.
pub struct Relay {
    threads: Vec<JoinHandle<()>>,
    frontend: UnixStream,
    handler: UnixStream,
}

impl Relay {
    /// Starts relaying between `frontend` (the real frontend) and `handler` (a stream the
    /// crate's request handler serves). Either side closing or misbehaving ends both.
    pub fn start(
        frontend: UnixStream,
        handler: UnixStream,
        done: Option<vmm_sys_util::eventfd::EventFd>,
    ) -> io::Result<Relay> {
        let done = Arc::new(done);
        let fe_writer = Arc::new(Mutex::new(frontend.try_clone()?));
        let mut threads = Vec::new();
        {
            let (fe, h, fe_w) = (
                frontend.try_clone()?,
                handler.try_clone()?,
                fe_writer.clone(),
            );
            let done = done.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("vu-relay-in".into())
                    .spawn(move || {
                        let mut norm = Normaliser::default();
                        let result = loop {
                            let mut msg = match recv_message(&fe) {
                                Ok(m) => m,
                                Err(e) => break e,
                            };
                            log::trace!(
                                "frontend: request {} flags {:#x} size {} fds {}",
                                msg.request,
                                msg.flags,
                                msg.payload.len(),
                                msg.fds.len()
                            );
                            let sent = match norm.frontend_message(&mut msg) {
                                Verdict::Forward => send_message(&h, &msg).and_then(|()| {
                                    norm.replay().iter().try_for_each(|m| send_message(&h, m))
                                }),
                                Verdict::Absorb { reply: false } => Ok(()),
                                Verdict::Absorb { reply: true } => {
                                    let ack = Message {
                                        request: msg.request,
                                        flags: VERSION_1 | REPLY,
                                        payload: 0u64.to_le_bytes().to_vec(),
                                        fds: Vec::new(),
                                    };
                                    let w = fe_w.lock().unwrap_or_else(|p| p.into_inner());
                                    send_message(&w, &ack)
                                }
                            };
                            if let Err(e) = sent {
                                break e;
                            }
                        };
                        log_end("frontend", &result);
                        let _ = fe.shutdown(std::net::Shutdown::Both);
                        let _ = h.shutdown(std::net::Shutdown::Both);
                        if let Some(d) = done.as_ref() {
                            let _ = d.write(1);
                        }
                    })?,
            );
        }
        {
            let (fe, h) = (frontend.try_clone()?, handler.try_clone()?);
            let done = done.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("vu-relay-out".into())
                    .spawn(move || {
                        let result = loop {
                            let msg = match recv_message(&h) {
                                Ok(m) => m,
                                Err(e) => break e,
                            };
                            log::trace!(
                                "backend: reply {} flags {:#x} payload {:02x?}",
                                msg.request,
                                msg.flags,
                                &msg.payload[..msg.payload.len().min(16)]
                            );
                            let w = fe_writer.lock().unwrap_or_else(|p| p.into_inner());
                            if let Err(e) = send_message(&w, &msg) {
                                break e;
                            }
                        };
                        log_end("backend", &result);
                        let _ = fe.shutdown(std::net::Shutdown::Both);
                        let _ = h.shutdown(std::net::Shutdown::Both);
                        if let Some(d) = done.as_ref() {
                            let _ = d.write(1);
                        }
                    })?,
            );
        }
        Ok(Relay {
            threads,
            frontend,
            handler,
        })
    }

    /// Ends the relay from outside (shutdown requested).
    pub fn close(&self) {
        let _ = self.frontend.shutdown(std::net::Shutdown::Both);
        let _ = self.handler.shutdown(std::net::Shutdown::Both);
    }

    /// Waits for both directions to end.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn log_end(side: &str, e: &RelayError) {
    match e {
        RelayError::Closed => log::debug!("vhost-user relay: {side} closed"),
        e => log::info!("vhost-user relay: {side}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(request: u32, flags: u32, payload: Vec<u8>) -> Message {
        Message {
            request,
            flags,
            payload,
            fds: Vec::new(),
        }
    }

    #[test]
    fn umls_oversized_mem_table_is_cut_to_its_regions() {
        let mut payload = vec![0u8; 72];
        payload[0] = 1; // num_regions
        payload[8..16].copy_from_slice(&0x1000u64.to_le_bytes());
        let mut m = msg(SET_MEM_TABLE, VERSION_1 | NEED_REPLY, payload.clone());
        assert_eq!(
            Normaliser::default().frontend_message(&mut m),
            Verdict::Forward
        );
        assert_eq!(m.payload, payload[..40]);
        // A well-formed table is left alone, and so is nonsense the handler must reject.
        let mut ok = msg(SET_MEM_TABLE, VERSION_1, payload[..40].to_vec());
        Normaliser::default().frontend_message(&mut ok);
        assert_eq!(ok.payload.len(), 40);
        let mut short = msg(SET_MEM_TABLE, VERSION_1, vec![3, 0, 0, 0, 0, 0, 0, 0]);
        Normaliser::default().frontend_message(&mut short);
        assert_eq!(short.payload.len(), 8);
        let mut huge = msg(SET_MEM_TABLE, VERSION_1, vec![0xff; 72]);
        Normaliser::default().frontend_message(&mut huge);
        assert_eq!(huge.payload.len(), 72);
    }

    #[test]
    fn qemus_early_vring_enable_is_absorbed_until_features_are_acked() {
        let mut n = Normaliser::default();
        let enable = |flags| msg(SET_VRING_ENABLE, flags, vec![0; 8]);
        assert_eq!(
            n.frontend_message(&mut enable(VERSION_1)),
            Verdict::Absorb { reply: false }
        );
        assert_eq!(
            n.frontend_message(&mut enable(VERSION_1 | NEED_REPLY)),
            Verdict::Absorb { reply: true }
        );
        let mut features = msg(
            SET_FEATURES,
            VERSION_1,
            VHOST_USER_F_PROTOCOL_FEATURES.to_le_bytes().to_vec(),
        );
        assert_eq!(n.frontend_message(&mut features), Verdict::Forward);
        assert_eq!(n.frontend_message(&mut enable(VERSION_1)), Verdict::Forward);
    }

    #[test]
    fn messages_and_descriptors_cross_a_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let (x, _y) = UnixStream::pair().unwrap();
        let fd = OwnedFd::from(x);
        let out = Message {
            request: SET_MEM_TABLE,
            flags: VERSION_1,
            payload: vec![7; 40],
            fds: vec![fd],
        };
        send_message(&a, &out).unwrap();
        let got = recv_message(&b).unwrap();
        assert_eq!(
            (got.request, got.flags, got.payload.clone()),
            (SET_MEM_TABLE, VERSION_1, vec![7; 40])
        );
        assert_eq!(got.fds.len(), 1);
        // An oversized declared payload ends the relay instead of allocating it.
        let mut bad = [0u8; 12];
        bad[8..12].copy_from_slice(&100_000u32.to_le_bytes());
        (&a).write_all(&bad).unwrap();
        assert!(matches!(recv_message(&b), Err(RelayError::TooBig(100_000))));
        drop(a);
        assert!(matches!(recv_message(&b), Err(RelayError::Closed)));
    }

    /// The normaliser on pseudo-random message sequences: no panic, bounded state, payloads
    /// never grow (the fuzz target `vhost_user_relay` explores the same property).
    #[test]
    fn normaliser_survives_arbitrary_messages() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2_000 {
            let mut n = Normaliser::default();
            for _ in 0..20 {
                let request =
                    [SET_FEATURES, SET_MEM_TABLE, SET_VRING_ENABLE, 1, 99][(next() % 5) as usize];
                let len = (next() % 120) as usize;
                let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                let mut m = msg(request, next() as u32, payload);
                let before = m.payload.len();
                let _ = n.frontend_message(&mut m);
                assert!(m.payload.len() <= before);
                assert!(n.replay().len() <= 64);
            }
        }
    }
}
