//! The control socket (`--api PATH`): UML's mconsole in spirit. A client connects to a unix
//! stream socket that only the VMM's user can use (0600) and sends requests, one per line: words
//! separated by spaces, at most [`MAX_LINE`] bytes of UTF-8. Each request gets one reply line of
//! JSON, `{"ok":true,...}` or `{"ok":false,"error":"..."}`, the error naming the verb and the
//! value. The verbs ([`HELP`]):
//!
//! - `info`: the VM (state, vCPUs, memory, uptime), every device with its PCI slot and, for a
//!   NIC, its link and backend, and the socket's own counters;
//! - `net link NIC up|down`: the guest sees its link go down or up (a configuration
//!   interrupt), whatever the backend does;
//! - `net swap NIC SPEC`: the NIC's transport is replaced while the guest runs (a NIC the VMM
//!   serves itself); the guest's NIC (MAC, features, rings) stays as it is;
//! - `net capture NIC FILE [FILTER]`, `net capture NIC stop`: every frame both ways (that the
//!   tcpdump-syntax FILTER passes) to a pcap file Wireshark opens;
//! - `net bpf NIC FILE`: the classic BPF program in FILE (`bpffile=`'s format) replaces the
//!   receive filter of the NIC's raw or hybrid socket, UML's `bpfflash`; only on a NIC whose
//!   spec said `bpfflash=1`;
//! - `halt`: the VM ends (status 130); `reboot`: the VMM boots the same configuration afresh;
//!   once the VMM has dropped its privileges ([`crate::privileges`]), `reboot` and `net swap`
//!   are refused (they open devices and transports again; `--keep-privileges` keeps them);
//! - `sysrq KEY`: a serial BREAK and KEY on the console, which Linux takes as magic SysRq KEY;
//! - `pause`, `resume`: the vCPUs stop between two `KVM_RUN`s and start again.
//!
//! Everything a client sends is untrusted: a request too long, not UTF-8 or unknown is answered
//! with an error (a too-long one also ends the connection, whose framing is lost); a client
//! that does not read its replies is dropped once [`MAX_PENDING_OUT`] bytes wait for it; a
//! client that goes away mid-request is forgotten. None of it touches the VM. Counters of each
//! are in `info`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use serde_json::{json, Value};
use vmm_devices::serial::SerialConsole;
use vmm_devices::{ExitNotifier, ExitRequest};

use vmm_net::backend::NetControl;

use crate::builder::net::{Nic, NicBackend};
use crate::builder::AttachedDevice;
use crate::vcpu::VcpuThreads;

/// Longest request line, newline excluded.
pub const MAX_LINE: usize = 4096;
/// Most reply bytes that may wait for a client before it is dropped.
pub const MAX_PENDING_OUT: usize = 1 << 20;
/// Most clients connected at once; more are refused (and counted).
pub const MAX_CLIENTS: usize = 64;

/// The verbs, for `help` and for errors naming an unknown one.
pub const HELP: &str = "info | net link NIC up|down | net swap NIC SPEC | \
                        net capture NIC FILE [FILTER] | net capture NIC stop | net bpf NIC FILE | \
                        halt | reboot | \
                        sysrq KEY | pause | resume | help";

/// Why the control socket cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another process serves a socket at the path.
    #[error("--api {}: another process is listening there", .0.display())]
    InUse(PathBuf),
    /// Something that is not a socket is at the path (never removed).
    #[error("--api {}: exists and is not a socket (not replaced)", .0.display())]
    NotSocket(PathBuf),
    /// Binding, listening or setting its mode failed.
    #[error("--api {}: {source}", .path.display())]
    Bind {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The bound socket, before the VM runs; removed from the file system when dropped.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds `path`, mode 0600. A socket left there by a VMM that died (nobody accepts on it)
    /// is replaced; a live one, or anything else at the path, is an error.
    pub fn bind(path: &Path) -> Result<Self, Error> {
        use vmm_net::unix_socket::BindError;
        let bind_err = |source| Error::Bind {
            path: path.to_path_buf(),
            source,
        };
        let listener = vmm_net::unix_socket::bind_private(path).map_err(|e| match e {
            BindError::InUse => Error::InUse(path.to_path_buf()),
            BindError::NotSocket => Error::NotSocket(path.to_path_buf()),
            BindError::Io(e) => bind_err(e),
        })?;
        let socket = ControlSocket {
            listener,
            path: path.to_path_buf(),
        };
        socket.listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(socket)
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What the verbs act on.
pub struct Context {
    /// Ends the VM (`halt`, `reboot`).
    pub exit: Arc<ExitNotifier>,
    /// Pauses and resumes the vCPUs.
    pub vcpus: VcpuThreads,
    /// The devices, in slot order.
    pub devices: Vec<AttachedDevice>,
    /// The console (`sysrq`).
    pub serial: Arc<Mutex<SerialConsole>>,
    /// When the vCPUs started.
    pub started: Instant,
    /// Guest memory in MiB.
    pub mem_mib: u64,
}

/// The socket's own counters, in `info`.
#[derive(Default)]
struct Counters {
    connections: u64,
    requests: u64,
    errors: u64,
    refused_too_many: u64,
    dropped_too_long: u64,
    dropped_slow_reader: u64,
    dropped_io_error: u64,
}

/// One request, parsed.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Help,
    Info,
    Link {
        nic: String,
        up: bool,
    },
    Swap {
        nic: String,
        spec: String,
    },
    CaptureStart {
        nic: String,
        file: PathBuf,
        filter: Option<String>,
    },
    CaptureStop {
        nic: String,
    },
    Bpf {
        nic: String,
        file: PathBuf,
    },
    Halt,
    Reboot,
    Sysrq(u8),
    Pause,
    Resume,
}

/// Parses one request line; the error names the verb and the value.
fn parse(line: &str) -> Result<Request, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let none = |verb: &str, rest: &[&str]| -> Result<(), String> {
        match rest {
            [] => Ok(()),
            _ => Err(format!(
                "{verb}: takes no arguments, got '{}'",
                rest.join(" ")
            )),
        }
    };
    match words.as_slice() {
        [] => Err("empty request (verbs: ".to_string() + HELP + ")"),
        ["help", rest @ ..] => none("help", rest).map(|()| Request::Help),
        ["info", rest @ ..] => none("info", rest).map(|()| Request::Info),
        ["halt", rest @ ..] => none("halt", rest).map(|()| Request::Halt),
        ["reboot", rest @ ..] => none("reboot", rest).map(|()| Request::Reboot),
        ["pause", rest @ ..] => none("pause", rest).map(|()| Request::Pause),
        ["resume", rest @ ..] => none("resume", rest).map(|()| Request::Resume),
        ["sysrq", key] => match key.as_bytes() {
            [k] if k.is_ascii_digit() || k.is_ascii_lowercase() => Ok(Request::Sysrq(*k)),
            _ => Err(format!(
                "sysrq {key}: KEY is one character, 0-9 or a-z (h lists them in the guest)"
            )),
        },
        ["sysrq", ..] => Err("sysrq: needs one KEY (e.g. sysrq h)".into()),
        ["net", "link", nic, state] => match *state {
            "up" => Ok(Request::Link {
                nic: nic.to_string(),
                up: true,
            }),
            "down" => Ok(Request::Link {
                nic: nic.to_string(),
                up: false,
            }),
            other => Err(format!("net link {nic} {other}: say up or down")),
        },
        ["net", "link", ..] => Err("net link: needs NIC and up|down".into()),
        ["net", "swap", nic, spec] => Ok(Request::Swap {
            nic: nic.to_string(),
            spec: spec.to_string(),
        }),
        ["net", "swap", ..] => Err("net swap: needs NIC and SPEC (one word, no spaces)".into()),
        ["net", "capture", nic, "stop"] => Ok(Request::CaptureStop {
            nic: nic.to_string(),
        }),
        ["net", "capture", nic, file, filter @ ..] => Ok(Request::CaptureStart {
            nic: nic.to_string(),
            file: PathBuf::from(file),
            filter: (!filter.is_empty()).then(|| filter.join(" ")),
        }),
        ["net", "capture", ..] => {
            Err("net capture: needs NIC and FILE [FILTER], or NIC stop".into())
        }
        ["net", "bpf", nic, file] => Ok(Request::Bpf {
            nic: nic.to_string(),
            file: PathBuf::from(file),
        }),
        ["net", "bpf", ..] => Err("net bpf: needs NIC and FILE (a classic BPF program)".into()),
        ["net", sub, ..] => Err(format!("net {sub}: unknown (net link|swap|capture|bpf)")),
        ["net"] => Err("net: needs a sub-verb (net link|swap|capture|bpf)".into()),
        [verb, ..] => Err(format!("verb '{verb}': unknown (verbs: {HELP})")),
    }
}

/// Parses one request line as the server does (UTF-8, then the words), without acting on it.
/// For fuzz targets: whatever a client sends, this returns.
#[doc(hidden)]
pub fn check_request(line: &[u8]) -> Result<(), String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_string())?;
    parse(text).map(drop)
}

/// A connected client: what it sent that is not a whole line yet, and replies it has not read.
struct Client {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
}

/// The control socket on the event loop: the listener and its clients.
pub struct ControlServer {
    socket: ControlSocket,
    clients: HashMap<RawFd, Client>,
    ctx: Context,
    counters: Counters,
}

impl ControlServer {
    /// Serves `socket` with `ctx`.
    pub fn new(socket: ControlSocket, ctx: Context) -> Self {
        ControlServer {
            socket,
            clients: HashMap::new(),
            ctx,
            counters: Counters::default(),
        }
    }

    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            let stream = match self.socket.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("control: accept: {e}");
                    return;
                }
            };
            if self.clients.len() >= MAX_CLIENTS {
                self.counters.refused_too_many += 1;
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                log::warn!("control: cannot watch a client: {e:?}");
                self.counters.dropped_io_error += 1;
                continue;
            }
            self.counters.connections += 1;
            self.clients.insert(
                fd,
                Client {
                    stream,
                    input: Vec::new(),
                    output: Vec::new(),
                },
            );
        }
    }

    /// Forgets a client: off the event loop first, while its descriptor is still open (the
    /// manager would otherwise keep the number registered and refuse the next client that
    /// gets it), then closed.
    fn drop_client(&mut self, fd: RawFd, ops: &mut EventOps) {
        if self.clients.contains_key(&fd) {
            if let Err(e) = ops.remove(Events::empty_raw(fd)) {
                log::warn!("control: cannot unwatch a client: {e:?}");
            }
            self.clients.remove(&fd);
        }
    }

    /// Reads what the client sent, answers each whole line, writes what it can.
    fn serve(&mut self, fd: RawFd, events: EventSet, ops: &mut EventOps) {
        let Some(client) = self.clients.get_mut(&fd) else {
            return;
        };
        let mut closed = events.contains(EventSet::ERROR);
        if events.contains(EventSet::IN) {
            let mut buf = [0u8; 1024];
            loop {
                match client.stream.read(&mut buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => {
                        client.input.extend_from_slice(&buf[..n]);
                        if client.input.len() > 4 * MAX_LINE {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        self.counters.dropped_io_error += 1;
                        closed = true;
                        break;
                    }
                }
            }
        }
        let mut lines = Vec::new();
        let mut too_long = false;
        let client = self.clients.get_mut(&fd).expect("present above");
        while let Some(nl) = client.input.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = client.input.drain(..=nl).collect();
            lines.push(line);
        }
        if client.input.len() > MAX_LINE {
            too_long = true;
            client.input.clear();
        }
        for line in lines {
            let reply = self.answer(&line[..line.len() - 1]);
            self.queue_reply(fd, &reply);
        }
        if too_long {
            self.counters.dropped_too_long += 1;
            self.counters.errors += 1;
            let reply = error(format!(
                "request longer than {MAX_LINE} bytes: connection closed"
            ));
            self.queue_reply(fd, &reply);
        }
        let Some(client) = self.clients.get_mut(&fd) else {
            return;
        };
        // Write what the socket takes now; the rest waits for EPOLLOUT.
        while !client.output.is_empty() {
            match client.stream.write(&client.output) {
                Ok(0) => break,
                Ok(n) => {
                    client.output.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        if client.output.len() > MAX_PENDING_OUT {
            self.counters.dropped_slow_reader += 1;
            closed = true;
        }
        if closed || too_long {
            self.drop_client(fd, ops);
            return;
        }
        let want = if client.output.is_empty() {
            EventSet::IN
        } else {
            EventSet::IN | EventSet::OUT
        };
        let _ = ops.modify(Events::new_raw(fd, want));
    }

    fn queue_reply(&mut self, fd: RawFd, reply: &Value) {
        if let Some(c) = self.clients.get_mut(&fd) {
            c.output.extend_from_slice(reply.to_string().as_bytes());
            c.output.push(b'\n');
        }
    }

    /// One request line to one reply.
    fn answer(&mut self, line: &[u8]) -> Value {
        self.counters.requests += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let reply = match std::str::from_utf8(line) {
            Err(_) => Err("request is not UTF-8".to_string()),
            Ok(text) => parse(text).and_then(|r| self.execute(r)),
        };
        match reply {
            Ok(v) => v,
            Err(e) => {
                self.counters.errors += 1;
                error(e)
            }
        }
    }

    fn nic(&self, name: &str) -> Result<&Nic, String> {
        let nics: Vec<&Nic> = self
            .ctx
            .devices
            .iter()
            .filter_map(|d| match d {
                AttachedDevice::Net(n) => Some(n),
                _ => None,
            })
            .collect();
        nics.iter()
            .copied()
            .find(|n| n.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = nics.iter().map(|n| n.name.as_str()).collect();
                if names.is_empty() {
                    format!("NIC '{name}': the VM has no NIC")
                } else {
                    format!(
                        "NIC '{name}': no such NIC (the VM has {})",
                        names.join(", ")
                    )
                }
            })
    }

    /// The backend of a NIC the VMM serves itself (`verb` names the request in errors).
    fn served(&self, name: &str, verb: &str) -> Result<NetControl, String> {
        match &self.nic(name)?.backend {
            NicBackend::InProcess(c) => Ok(c.clone()),
            NicBackend::External { socket } => Err(format!(
                "{verb} {name}: its backend is external ({}): ask that backend",
                socket.display()
            )),
        }
    }

    fn execute(&mut self, req: Request) -> Result<Value, String> {
        match req {
            Request::Help => Ok(json!({"ok": true, "verbs": HELP})),
            Request::Info => Ok(self.info()),
            Request::Link { nic, up } => {
                let n = self.nic(&nic)?;
                let link = n
                    .link
                    .as_ref()
                    .ok_or_else(|| format!("net link {nic}: this NIC has no link status"))?;
                let changed = link.set(up);
                Ok(json!({"ok": true, "nic": nic, "link": updown(up), "changed": changed}))
            }
            Request::Swap { nic, spec } => {
                let control = self.served(&nic, "net swap")?;
                // `transport=...` alone is for this NIC.
                let full = if spec.starts_with("transport=") {
                    format!("{nic}:{spec}")
                } else {
                    spec.clone()
                };
                let parsed = vmm_net::config::parse_spec(&full)
                    .map_err(|e| format!("net swap {nic} {spec}: {e}"))?;
                if let Some(why) = crate::privileges::refusal() {
                    return Err(format!("net swap {nic} {spec}: {why}"));
                }
                control
                    .swap(parsed)
                    .map_err(|e| format!("net swap {nic} {spec}: {e}"))?;
                let transport = control.stats().transport;
                Ok(json!({"ok": true, "nic": nic, "transport": transport}))
            }
            Request::CaptureStart { nic, file, filter } => {
                let control = self.served(&nic, "net capture")?;
                control
                    .capture_start(&file, filter.as_deref())
                    .map_err(|e| format!("net capture {nic} {}: {e}", file.display()))?;
                Ok(json!({
                    "ok": true,
                    "nic": nic,
                    "capture": file.display().to_string(),
                    "filter": filter,
                }))
            }
            Request::CaptureStop { nic } => {
                let control = self.served(&nic, "net capture")?;
                let summary = control
                    .capture_stop()
                    .map_err(|e| format!("net capture {nic} stop: {e}"))?;
                let counters: serde_json::Map<String, Value> = summary
                    .counters()
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v)))
                    .collect();
                Ok(json!({
                    "ok": true,
                    "nic": nic,
                    "capture": summary.path.display().to_string(),
                    "counters": counters,
                    "error": summary.error,
                }))
            }
            Request::Bpf { nic, file } => {
                let control = self.served(&nic, "net bpf")?;
                control
                    .flash_bpf(&file)
                    .map_err(|e| format!("net bpf {nic} {}: {e}", file.display()))?;
                Ok(json!({
                    "ok": true,
                    "nic": nic,
                    "bpf": file.display().to_string(),
                    "transport": control.stats().transport,
                }))
            }
            Request::Halt => {
                self.ctx.exit.request(ExitRequest::Halt);
                Ok(json!({"ok": true, "state": "halting"}))
            }
            Request::Reboot => {
                if let Some(why) = crate::privileges::refusal() {
                    return Err(format!("reboot: {why}"));
                }
                self.ctx.exit.request(ExitRequest::Reboot);
                Ok(json!({"ok": true, "state": "rebooting"}))
            }
            Request::Sysrq(key) => {
                let sent = self
                    .ctx
                    .serial
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .send_break(key);
                if sent {
                    Ok(json!({"ok": true, "sysrq": (key as char).to_string()}))
                } else {
                    Err(format!(
                        "sysrq {}: console input is waiting for the guest; try again",
                        key as char
                    ))
                }
            }
            Request::Pause => {
                if self.ctx.vcpus.pause() {
                    Ok(json!({"ok": true, "state": "paused"}))
                } else {
                    Err("pause: the vCPUs did not stop within a second".into())
                }
            }
            Request::Resume => {
                self.ctx.vcpus.resume();
                Ok(json!({"ok": true, "state": "running"}))
            }
        }
    }

    fn info(&self) -> Value {
        let devices: Vec<Value> = self
            .ctx
            .devices
            .iter()
            .map(|d| match d {
                AttachedDevice::Net(n) => {
                    let (backend, stats) = match &n.backend {
                        NicBackend::InProcess(c) => {
                            let st = c.stats();
                            let counters: serde_json::Map<String, Value> = st
                                .counters
                                .iter()
                                .map(|(k, v)| (k.to_string(), json!(v)))
                                .collect();
                            let mut stats = json!({
                                "transport": st.transport,
                                "capture": st.capture.map(|p| p.display().to_string()),
                                "counters": counters,
                            });
                            if st.pairs.len() > 1 {
                                stats["pairs"] = st
                                    .pairs
                                    .iter()
                                    .map(|p| {
                                        json!({
                                            "rx_packets": p.rx_packets,
                                            "tx_packets": p.tx_packets,
                                            "rx_dropped_unserved": p.rx_dropped_unserved,
                                        })
                                    })
                                    .collect();
                            }
                            (json!("in-process"), stats)
                        }
                        NicBackend::External { socket } => (
                            json!({"vhost-user": socket.display().to_string()}),
                            Value::Null,
                        ),
                    };
                    json!({
                        "slot": n.slot,
                        "type": "net",
                        "name": n.name,
                        "arg": n.arg,
                        "link": n.link.as_ref().map(|l| updown(l.admin_up() && l.backend_up())),
                        "admin_link": n.link.as_ref().map(|l| updown(l.admin_up())),
                        "backend_link": n.link.as_ref().map(|l| updown(l.backend_up())),
                        "backend": backend,
                        "stats": stats,
                    })
                }
                AttachedDevice::Fs { arg, tag, slot } => {
                    json!({"slot": slot, "type": "fs", "tag": tag, "arg": arg})
                }
                AttachedDevice::Disk {
                    arg,
                    path,
                    readonly,
                    slot,
                } => json!({
                    "slot": slot,
                    "type": "disk",
                    "path": path.display().to_string(),
                    "readonly": readonly,
                    "arg": arg,
                }),
            })
            .collect();
        let c = &self.counters;
        json!({
            "ok": true,
            "vm": {
                "state": if self.ctx.vcpus.is_paused() { "paused" } else { "running" },
                "cpus": self.ctx.vcpus.count(),
                "mem_mib": self.ctx.mem_mib,
                "uptime_s": self.ctx.started.elapsed().as_secs_f64(),
            },
            "devices": devices,
            "control": {
                "connections": c.connections,
                "clients": self.clients.len(),
                "requests": c.requests,
                "errors": c.errors,
                "refused_too_many_clients": c.refused_too_many,
                "dropped_too_long": c.dropped_too_long,
                "dropped_slow_reader": c.dropped_slow_reader,
                "dropped_io_error": c.dropped_io_error,
            },
        })
    }
}

fn updown(up: bool) -> &'static str {
    if up {
        "up"
    } else {
        "down"
    }
}

fn error(msg: String) -> Value {
    json!({"ok": false, "error": msg})
}

impl MutEventSubscriber for ControlServer {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.socket.listener.as_raw_fd() {
            self.accept(ops);
        } else {
            self.serve(events.fd(), events.event_set(), ops);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.socket.listener, EventSet::IN)) {
            log::error!("control: cannot watch the socket: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_errors_name_verb_and_value() {
        assert_eq!(parse("info"), Ok(Request::Info));
        assert_eq!(parse("  pause  "), Ok(Request::Pause));
        assert_eq!(
            parse("net link vec0 down"),
            Ok(Request::Link {
                nic: "vec0".into(),
                up: false
            })
        );
        assert_eq!(parse("sysrq h"), Ok(Request::Sysrq(b'h')));
        assert_eq!(
            parse("net capture vec0 /tmp/c.pcap udp port 53"),
            Ok(Request::CaptureStart {
                nic: "vec0".into(),
                file: "/tmp/c.pcap".into(),
                filter: Some("udp port 53".into())
            })
        );
        assert_eq!(
            parse("net capture vec0 stop"),
            Ok(Request::CaptureStop { nic: "vec0".into() })
        );
        assert_eq!(
            parse("net bpf vec0 /tmp/drop.bpf"),
            Ok(Request::Bpf {
                nic: "vec0".into(),
                file: "/tmp/drop.bpf".into()
            })
        );
        for (bad, why) in [
            ("", "empty request"),
            ("frob", "verb 'frob': unknown"),
            ("info now", "info: takes no arguments, got 'now'"),
            (
                "net link vec0 sideways",
                "net link vec0 sideways: say up or down",
            ),
            ("net link vec0", "needs NIC and up|down"),
            ("net frob", "net frob: unknown"),
            ("net swap vec0", "net swap: needs NIC and SPEC"),
            ("net capture vec0", "net capture: needs NIC and FILE"),
            ("net bpf vec0", "net bpf: needs NIC and FILE"),
            ("net bpf vec0 /a /b", "net bpf: needs NIC and FILE"),
            ("sysrq HH", "sysrq HH: KEY is one character"),
            ("sysrq", "needs one KEY"),
            ("sysrq \u{e9}", "KEY is one character"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
