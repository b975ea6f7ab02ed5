//! `vmm ctl PATH VERB [ARGS]`: one request to a running VM's control socket (`--api PATH`),
//! its JSON reply on stdout. Exit status 0 when the VMM says `"ok":true`, 1 when it answers
//! with an error (on stderr too) or the connection fails, 2 for bad input.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::{fail, EXIT_USAGE};

/// How long a reply may take (a `pause` waits up to a second for the vCPUs).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(socket: &Path, words: &[String]) -> ExitCode {
    let line = words.join(" ");
    if line.contains('\n') || line.len() > vmm_vmm::control::MAX_LINE {
        return fail(
            EXIT_USAGE,
            format_args!(
                "ctl: the request must be one line of at most {} bytes",
                vmm_vmm::control::MAX_LINE
            ),
        );
    }
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            return fail(
                1,
                format_args!(
                    "ctl {}: cannot connect ({e}): is a VM running with --api there?",
                    socket.display()
                ),
            )
        }
    };
    let _ = stream.set_read_timeout(Some(REPLY_TIMEOUT));
    if let Err(e) = writeln!(stream, "{line}") {
        return fail(1, format_args!("ctl {}: {e}", socket.display()));
    }
    let mut reply = String::new();
    match BufReader::new(&stream).read_line(&mut reply) {
        Ok(0) => {
            return fail(
                1,
                format_args!("ctl {}: the VMM closed the connection", socket.display()),
            )
        }
        Ok(_) => {}
        Err(e) => return fail(1, format_args!("ctl {}: no reply: {e}", socket.display())),
    }
    print!("{reply}");
    let ok = serde_json::from_str::<serde_json::Value>(&reply)
        .ok()
        .and_then(|v| v.get("ok").and_then(serde_json::Value::as_bool))
        .unwrap_or(false);
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
