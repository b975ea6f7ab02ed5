//! `vmm net-backend`: one device served to vhost-user frontends over a unix socket.

use std::path::Path;
use std::process::ExitCode;

use vmm_vmm::{seccomp, signals};

use crate::privs::{Lockdown, PrivilegeArgs};
use crate::{fail, EXIT_USAGE};

pub fn run(
    socket: &Path,
    spec: &str,
    privileges: &PrivilegeArgs,
    filter: seccomp::Mode,
    mode: Option<&str>,
    group: Option<&str>,
) -> ExitCode {
    let spec = match vmm_net::config::parse_spec(spec) {
        Ok(spec) => spec,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let lockdown = match Lockdown::new(
        privileges,
        ("--socket-mode", mode),
        ("--socket-group", group),
        true,
    ) {
        Ok(l) => l,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return fail(
                EXIT_USAGE,
                format_args!(
                    "--socket {}: directory {} does not exist",
                    socket.display(),
                    dir.display()
                ),
            );
        }
    }
    let shutdown = match signals::install() {
        Ok(event) => event,
        Err(e) => return fail(1, format_args!("installing signal handlers: {e}")),
    };
    // Once the transport is open and the socket bound: share it, drop privileges, install
    // the seccomp filter (every thread, and those created later) and arm the per-thread ones
    // (each vhost-user, datapath and relay thread confines itself as it starts to act), then
    // serve.
    let ready = |path: &Path| {
        lockdown
            .apply(Some(path), "--socket")
            .and_then(|()| {
                seccomp::install_all_threads(&seccomp::net_backend_list(), filter)
                    .and_then(|()| seccomp::arm(filter))
                    .map_err(|e| format!("seccomp: {e}"))
            })
            .map_err(vmm_net::backend::BackendError::Setup)
    };
    match vmm_net::backend::serve_with(socket, spec, shutdown, ready) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e.exit_status(), e),
    }
}
