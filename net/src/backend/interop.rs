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
//!   believes it is. Our ack must not overtake replies the handler still owes for requests a
//!   frontend pipelined before it: it goes out in the place of the reply to a `GET_FEATURES`
//!   we send the handler as a barrier (replies come back in request order, and
//!   `GET_FEATURES` is always answered), so no count of owed replies is needed.
//!
//! Everything else is relayed unchanged, with its file descriptors (SCM_RIGHTS). Only control
//! messages cross the relay: the datapath is shared memory and eventfds.
//!
//! Strictness where it protects the backend: every frontend message, with its descriptors, is
//! checked against [`Limits`] first (see `policy.rs`: memory regions that fit their files,
//! eventfds only, rings and queue sizes that exist, offered protocol features only). A refused
//! message ends the connection; [`Relay::join`] says how it ended ([`Ending`]) so the server
//! logs one line naming the request and the reason.

use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::features::VHOST_USER_F_PROTOCOL_FEATURES;
use super::policy::{
    request_name, Limits, Refusal, GET_FEATURES, MEM_HDR, REGION, SET_FEATURES, SET_MEM_TABLE,
    SET_VRING_ENABLE,
};

/// Header flags.
const VERSION_1: u32 = 0x1;
const REPLY: u32 = 0x4;
const NEED_REPLY: u32 = 0x8;
/// The largest payload the protocol allows (the crate's MAX_MSG_SIZE).
const MAX_PAYLOAD: usize = 4096;
/// Most descriptors one message carries (the crate's MAX_ATTACHED_FD_ENTRIES).
const MAX_FDS: usize = 32;

/// One vhost-user message: header fields, payload, attached descriptors.
#[derive(Debug)]
pub struct Message {
    pub request: u32,
    pub flags: u32,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Message {
    /// A message without descriptors.
    pub fn new(request: u32, flags: u32, payload: Vec<u8>) -> Message {
        Message {
            request,
            flags,
            payload,
            fds: Vec::new(),
        }
    }

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
    // Only the relay's threads read messages: confined (once armed) before the first byte of
    // what a frontend sent is looked at.
    crate::seccomp::confine(crate::seccomp::ThreadKind::Relay);
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
#[derive(Debug)]
pub enum Verdict {
    /// Pass it on (possibly rewritten).
    Forward,
    /// Absorb it; if `reply` the frontend gets an ack of 0 from us.
    Absorb { reply: bool },
    /// Refuse it: the connection ends.
    Refuse(Refusal),
}

/// The state the normaliser keeps: the device's limits, the features the frontend acked, and
/// the ring-enable states it sent too early, in order (ring index, payload): at most one per
/// ring, as [`Limits::check`] refuses rings that do not exist.
#[derive(Debug, Default)]
pub struct Normaliser {
    limits: Limits,
    acked_features: u64,
    early_enables: Vec<(u32, Vec<u8>)>,
}

impl Normaliser {
    pub fn new(limits: Limits) -> Normaliser {
        Normaliser {
            limits,
            ..Normaliser::default()
        }
    }

    /// Inspects (and may rewrite) a frontend → backend message: the interop rewrites first,
    /// then the checks of [`Limits::check`].
    pub fn frontend_message(&mut self, msg: &mut Message) -> Verdict {
        let verdict = self.normalise(msg);
        match self.limits.check(msg.request, &msg.payload, &msg.fds) {
            Err(refusal) => Verdict::Refuse(refusal),
            Ok(()) => verdict,
        }
    }

    fn normalise(&mut self, msg: &mut Message) -> Verdict {
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
                    // Only the latest state of a ring matters. Rings that do not exist are
                    // refused (Limits::check), so this holds at most one entry per ring.
                    self.early_enables.retain(|(i, _)| *i != index);
                    if index < self.limits.num_queues {
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

/// How a relayed connection ended: the first cause wins.
#[derive(Debug)]
pub enum Ending {
    /// The frontend closed its end (or the relay was closed from outside).
    Closed,
    /// The relay refused a frontend message.
    Refused { request: u32, reason: Refusal },
    /// The frontend broke the framing (a payload over the protocol's size, a socket error).
    Broken(RelayError),
    /// The crate's handler ended the connection, right after this request (if any): it
    /// refused it.
    Handler { last_request: Option<u32> },
}

impl Ending {
    /// The one log line for a frontend that misbehaved; `None` for one that just left.
    /// `handler_error` is what the crate's request handler ended with, if anything.
    pub fn complaint(&self, handler_error: Option<&str>) -> Option<String> {
        match self {
            Ending::Closed => None,
            Ending::Refused { request, reason } => {
                Some(format!("{} refused: {reason}", request_name(*request)))
            }
            Ending::Broken(e) => Some(format!("broken message: {e}")),
            Ending::Handler { last_request } => Some(format!(
                "{} refused by the vhost-user handler: {}",
                last_request.map_or_else(|| "a request".to_string(), request_name),
                handler_error.unwrap_or("connection closed")
            )),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How the relay thread ends, and the event it signals when it has.
struct Shared {
    ending: Mutex<Option<Ending>>,
    done: Option<vmm_sys_util::eventfd::EventFd>,
}

impl Shared {
    /// Records why the connection ends unless a cause is already recorded.
    fn end(&self, ending: Ending) {
        let mut e = lock(&self.ending);
        if e.is_none() {
            match &ending {
                Ending::Closed => log::debug!("vhost-user relay: frontend closed"),
                other => log::debug!("vhost-user relay: {other:?}"),
            }
            *e = Some(ending);
        }
    }

    fn signal_done(&self) {
        if let Some(d) = self.done.as_ref() {
            let _ = d.write(1);
        }
    }
}

/// A running relay: one thread carrying both directions (`vu-relay`).
///
/// One thread suffices because the handler answers requests one at a time: replies are
/// forwarded as they come, before the next request is read when both are waiting, so no
/// more than a few are ever in flight and neither socket's buffer fills while the thread
/// writes to the other. A frontend that sends half a message, or stops reading its replies,
/// stalls only its own connection; [`Relay::close`] ends it either way.
pub struct Relay {
    thread: JoinHandle<()>,
    frontend: UnixStream,
    handler: UnixStream,
    shared: Arc<Shared>,
}

/// The relay's state between messages.
struct Relaying<'a> {
    fe: &'a UnixStream,
    h: &'a UnixStream,
    norm: Normaliser,
    /// One entry per `GET_FEATURES` sent to the handler, in order: `None` for the frontend's
    /// own, `Some(ack)` for our barrier, whose reply is replaced by that ack.
    get_features: std::collections::VecDeque<Option<Message>>,
    /// The request last forwarded to the handler (named when the handler ends the connection).
    last_request: Option<u32>,
}

impl Relaying<'_> {
    fn handler_ended(&self) -> Ending {
        Ending::Handler {
            last_request: self.last_request,
        }
    }

    /// Both directions until either side closes or misbehaves: one message at a time, the
    /// handler's first when both are readable (a hang-up or error shows in the read).
    fn run(&mut self) -> Ending {
        use std::os::fd::AsRawFd;
        let h = self.h.as_raw_fd();
        let fds = [h, self.fe.as_raw_fd()];
        loop {
            let Some(ready) = super::server::wait_any(&fds) else {
                continue;
            };
            let step = if ready == h {
                self.outbound()
            } else {
                self.inbound()
            };
            if let Err(ending) = step {
                return ending;
            }
        }
    }

    /// One frontend message: read, checked, rewritten, forwarded (with any replays), absorbed
    /// or refused.
    fn inbound(&mut self) -> Result<(), Ending> {
        let mut msg = match recv_message(self.fe) {
            Ok(m) => m,
            Err(RelayError::Closed) => return Err(Ending::Closed),
            Err(e) => return Err(Ending::Broken(e)),
        };
        log::trace!(
            "frontend: request {} flags {:#x} size {} fds {}",
            msg.request,
            msg.flags,
            msg.payload.len(),
            msg.fds.len()
        );
        match self.norm.frontend_message(&mut msg) {
            Verdict::Forward => {
                self.last_request = Some(msg.request);
                if msg.request == GET_FEATURES {
                    self.get_features.push_back(None);
                }
                let sent = send_message(self.h, &msg).and_then(|()| {
                    self.norm
                        .replay()
                        .iter()
                        .try_for_each(|m| send_message(self.h, m))
                });
                sent.map_err(|_| self.handler_ended())
            }
            Verdict::Absorb { reply: false } => Ok(()),
            Verdict::Absorb { reply: true } => {
                let ack = Message {
                    request: msg.request,
                    flags: VERSION_1 | REPLY,
                    payload: 0u64.to_le_bytes().to_vec(),
                    fds: Vec::new(),
                };
                let barrier = Message {
                    request: GET_FEATURES,
                    flags: VERSION_1,
                    payload: Vec::new(),
                    fds: Vec::new(),
                };
                self.get_features.push_back(Some(ack));
                send_message(self.h, &barrier).map_err(|_| self.handler_ended())
            }
            Verdict::Refuse(reason) => Err(Ending::Refused {
                request: msg.request,
                reason,
            }),
        }
    }

    /// One handler reply to the frontend, unchanged but for our barrier's, which becomes the
    /// ack it stands for.
    fn outbound(&mut self) -> Result<(), Ending> {
        let msg = recv_message(self.h).map_err(|_| self.handler_ended())?;
        log::trace!(
            "backend: reply {} flags {:#x} payload {:02x?}",
            msg.request,
            msg.flags,
            &msg.payload[..msg.payload.len().min(16)]
        );
        let msg = match msg.request {
            GET_FEATURES => self.get_features.pop_front().flatten().unwrap_or(msg),
            _ => msg,
        };
        send_message(self.fe, &msg).map_err(|e| match e {
            RelayError::Closed => Ending::Closed,
            e => Ending::Broken(e),
        })
    }
}

impl Relay {
    /// Starts relaying between `frontend` (the real frontend) and `handler` (a stream the
    /// crate's request handler serves), holding the frontend to `limits`. Either side closing
    /// or misbehaving ends both, and `done` (if any) is signalled.
    pub fn start(
        frontend: UnixStream,
        handler: UnixStream,
        done: Option<vmm_sys_util::eventfd::EventFd>,
        limits: Limits,
    ) -> io::Result<Relay> {
        let shared = Arc::new(Shared {
            ending: Mutex::new(None),
            done,
        });
        let (fe, h) = (frontend.try_clone()?, handler.try_clone()?);
        let state = shared.clone();
        let thread = std::thread::Builder::new()
            .name("vu-relay".into())
            .spawn(move || {
                let ending = Relaying {
                    fe: &fe,
                    h: &h,
                    norm: Normaliser::new(limits),
                    get_features: Default::default(),
                    last_request: None,
                }
                .run();
                state.end(ending);
                let _ = fe.shutdown(std::net::Shutdown::Both);
                let _ = h.shutdown(std::net::Shutdown::Both);
                state.signal_done();
            })?;
        Ok(Relay {
            thread,
            frontend,
            handler,
            shared,
        })
    }

    /// Ends the relay from outside (shutdown requested).
    pub fn close(&self) {
        self.shared.end(Ending::Closed);
        let _ = self.frontend.shutdown(std::net::Shutdown::Both);
        let _ = self.handler.shutdown(std::net::Shutdown::Both);
    }

    /// Waits for the relay to end; says how the connection ended.
    pub fn join(self) -> Ending {
        let _ = self.thread.join();
        lock(&self.shared.ending).take().unwrap_or(Ending::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn umls_oversized_mem_table_is_cut_to_its_regions() {
        let mut payload = vec![0u8; 72];
        payload[0] = 1; // num_regions
        payload[8..16].copy_from_slice(&0x1000u64.to_le_bytes());
        let mut m = Message::new(SET_MEM_TABLE, VERSION_1 | NEED_REPLY, payload.clone());
        assert!(matches!(
            Normaliser::default().normalise(&mut m),
            Verdict::Forward
        ));
        assert_eq!(m.payload, payload[..40]);
        // A well-formed table is left alone, and so is nonsense the handler must reject.
        let mut ok = Message::new(SET_MEM_TABLE, VERSION_1, payload[..40].to_vec());
        Normaliser::default().normalise(&mut ok);
        assert_eq!(ok.payload.len(), 40);
        let mut short = Message::new(SET_MEM_TABLE, VERSION_1, vec![3, 0, 0, 0, 0, 0, 0, 0]);
        Normaliser::default().normalise(&mut short);
        assert_eq!(short.payload.len(), 8);
        let mut huge = Message::new(SET_MEM_TABLE, VERSION_1, vec![0xff; 72]);
        Normaliser::default().normalise(&mut huge);
        assert_eq!(huge.payload.len(), 72);
    }

    #[test]
    fn qemus_early_vring_enable_is_absorbed_until_features_are_acked() {
        let mut n = Normaliser::default();
        let enable = |flags| Message::new(SET_VRING_ENABLE, flags, vec![0; 8]);
        // A ring that does not exist is refused rather than held back.
        assert!(matches!(
            n.frontend_message(&mut Message::new(
                SET_VRING_ENABLE,
                VERSION_1,
                vec![64, 0, 0, 0, 1, 0, 0, 0]
            )),
            Verdict::Refuse(Refusal::NoSuchRing { index: 64, .. })
        ));
        assert!(matches!(
            n.frontend_message(&mut enable(VERSION_1)),
            Verdict::Absorb { reply: false }
        ));
        assert!(matches!(
            n.frontend_message(&mut enable(VERSION_1 | NEED_REPLY)),
            Verdict::Absorb { reply: true }
        ));
        let mut features = Message::new(
            SET_FEATURES,
            VERSION_1,
            VHOST_USER_F_PROTOCOL_FEATURES.to_le_bytes().to_vec(),
        );
        assert!(matches!(
            n.frontend_message(&mut features),
            Verdict::Forward
        ));
        assert!(matches!(
            n.frontend_message(&mut enable(VERSION_1)),
            Verdict::Forward
        ));
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

    /// Our ack to an early SET_VRING_ENABLE does not overtake a reply the handler owes for a
    /// request the frontend pipelined before it: it takes the place of the reply to a
    /// GET_FEATURES barrier, after the owed reply.
    #[test]
    fn our_ack_waits_for_replies_owed_before_it() {
        let (frontend, fe_relay) = UnixStream::pair().unwrap();
        let (h_relay, handler) = UnixStream::pair().unwrap();
        let relay = Relay::start(fe_relay, h_relay, None, Limits::default()).unwrap();
        let patience = Some(std::time::Duration::from_secs(5));
        handler.set_read_timeout(patience).unwrap();
        send_message(&frontend, &Message::new(GET_FEATURES, VERSION_1, vec![])).unwrap();
        send_message(
            &frontend,
            &Message::new(SET_VRING_ENABLE, VERSION_1 | NEED_REPLY, vec![0; 8]),
        )
        .unwrap();
        // The handler sees the frontend's GET_FEATURES, then our barrier.
        for _ in 0..2 {
            assert_eq!(recv_message(&handler).unwrap().request, GET_FEATURES);
        }
        frontend
            .set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        let mut probe = [0u8; 1];
        assert!(
            (&frontend).read(&mut probe).is_err(),
            "nothing reaches the frontend before the owed reply"
        );
        frontend.set_read_timeout(patience).unwrap();
        let features = 0x1234_5678u64.to_le_bytes().to_vec();
        send_message(
            &handler,
            &Message::new(GET_FEATURES, VERSION_1 | REPLY, features.clone()),
        )
        .unwrap();
        send_message(
            &handler,
            &Message::new(GET_FEATURES, VERSION_1 | REPLY, vec![9; 8]),
        )
        .unwrap();
        let first = recv_message(&frontend).unwrap();
        assert_eq!((first.request, first.payload), (GET_FEATURES, features));
        let second = recv_message(&frontend).unwrap();
        assert_eq!(
            (second.request, second.flags, second.payload),
            (SET_VRING_ENABLE, VERSION_1 | REPLY, vec![0; 8])
        );
        relay.close();
        relay.join();
    }

    /// One thread carries both directions without wedging: a frontend that pipelines
    /// thousands of requests (far more than a socket buffer holds) while reading replies on
    /// another thread gets every reply, in order, from a handler that answers each at once.
    #[test]
    fn a_long_pipeline_crosses_both_ways_on_one_thread() {
        const N: u64 = 20_000;
        let (frontend, fe_relay) = UnixStream::pair().unwrap();
        let (h_relay, handler) = UnixStream::pair().unwrap();
        let relay = Relay::start(fe_relay, h_relay, None, Limits::default()).unwrap();
        let patience = Some(std::time::Duration::from_secs(10));
        frontend.set_read_timeout(patience).unwrap();
        handler.set_read_timeout(patience).unwrap();
        let answering = std::thread::spawn(move || {
            for i in 0..N {
                let m = recv_message(&handler).unwrap();
                assert_eq!(m.request, GET_FEATURES);
                let reply = Message::new(GET_FEATURES, VERSION_1 | REPLY, i.to_le_bytes().into());
                send_message(&handler, &reply).unwrap();
            }
            handler
        });
        let writer = frontend.try_clone().unwrap();
        let sending = std::thread::spawn(move || {
            for _ in 0..N {
                send_message(&writer, &Message::new(GET_FEATURES, VERSION_1, vec![])).unwrap();
            }
        });
        for i in 0..N {
            let m = recv_message(&frontend).unwrap();
            assert_eq!(
                (m.request, m.payload),
                (GET_FEATURES, i.to_le_bytes().to_vec())
            );
        }
        sending.join().unwrap();
        let _handler = answering.join().unwrap();
        relay.close();
        assert!(matches!(relay.join(), Ending::Closed));
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
                let mut m = Message::new(request, next() as u32, payload);
                let before = m.payload.len();
                let _ = n.frontend_message(&mut m);
                assert!(m.payload.len() <= before);
                assert!(n.replay().len() <= 2);
            }
        }
    }
}
