//! The options that share our sockets and drop our privileges, common to `vmm` and `vmm
//! net-backend` (the mechanism is `vmm_vmm::privileges` and `vmm_net::unix_socket`).

use std::path::Path;

use clap::Args;
use vmm_net::unix_socket::{self, Access};
use vmm_vmm::privileges::{self, Plan};

/// `--user` and `--keep-privileges`.
#[derive(Args, Clone, Debug, Default)]
pub struct PrivilegeArgs {
    /// Once the devices, transports and sockets are open, switch to USER (a name or uid: its
    /// groups, gid and uid) with no capabilities and PR_SET_NO_NEW_PRIVS. Without it, root run
    /// through sudo becomes the user who ran sudo (SUDO_UID/SUDO_GID), and plain root keeps uid
    /// 0 but drops every capability. Afterwards the control socket refuses `reboot` and `net
    /// swap`, which would open devices and transports again.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// As root, keep every privilege for the whole run (no --user, no sudo user, capabilities
    /// kept): `reboot` and `net swap` through the control socket then work.
    #[arg(long, conflicts_with = "user")]
    pub keep_privileges: bool,
}

/// What happens once everything is open: the socket shared as asked, then privileges dropped.
pub struct Lockdown {
    pub plan: Plan,
    pub access: Access,
}

impl Lockdown {
    /// Resolves the options (a one-line usage error naming the bad one) and logs, once, what
    /// will happen. `sudo`: whether SUDO_UID may choose the user.
    pub fn new(
        args: &PrivilegeArgs,
        mode: (&'static str, Option<&str>),
        group: (&'static str, Option<&str>),
        sudo: bool,
    ) -> Result<Lockdown, String> {
        let plan = privileges::plan(args.user.as_deref(), args.keep_privileges, sudo)
            .map_err(|e| e.to_string())?;
        let mode = mode
            .1
            .map(|m| unix_socket::parse_mode(m).map_err(|e| format!("{} {e}", mode.0)))
            .transpose()?;
        let group = group
            .1
            .map(|g| privileges::lookup_group(group.0, g).map_err(|e| e.to_string()))
            .transpose()?;
        if let Some(line) = plan.describe() {
            log::info!("{line}");
        }
        Ok(Lockdown {
            plan,
            access: Access { mode, group },
        })
    }

    /// A lockdown that only drops root's capabilities (keeping uid 0), as for `vmm run`.
    pub fn root_only() -> Lockdown {
        Lockdown {
            plan: privileges::plan(None, false, false).unwrap_or(Plan::Keep),
            access: Access::default(),
        }
    }

    /// Shares `socket` (given to the new user, its group the one asked for or the new
    /// user's) and drops privileges. The error is one line.
    pub fn apply(&self, socket: Option<&Path>, option: &str) -> Result<(), String> {
        if let Some(path) = socket {
            let owner = self.plan.new_owner();
            let access = Access {
                mode: self.access.mode,
                group: self.access.group.or(owner.map(|o| o.1)),
            };
            unix_socket::share(path, owner.map(|o| o.0), access)
                .map_err(|e| format!("{option} {}: sharing the socket: {e}", path.display()))?;
        }
        privileges::drop_privileges(&self.plan).map_err(|e| e.to_string())
    }
}
