//! Network namespaces and interfaces owned by a test, deleted on drop (also on panic).

use std::process::Command;

/// Runs `ip ARGS`, panicking with its stderr when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A network namespace, deleted on drop with everything in it.
pub struct NetNs {
    name: String,
    /// Interfaces made here, deleted explicitly: a persistent tap may outlive its namespace.
    links: std::cell::RefCell<Vec<String>>,
}

impl NetNs {
    pub fn new() -> NetNs {
        crate::require_root();
        let name = crate::unique_name("vt");
        ip(&["netns", "add", &name]);
        let ns = NetNs {
            name,
            links: Default::default(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NS ARGS`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs a program in the namespace; returns whether it succeeded and what it printed.
    pub fn run(&self, program: &str, args: &[&str]) -> (bool, String) {
        let out = self
            .command(program)
            .args(args)
            .output()
            .expect("run in namespace");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Runs `f` on a thread that has entered this namespace, returning its result. Sockets and
    /// taps opened there stay in the namespace and can be used from any thread.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).expect("open netns");
                // SAFETY: setns on a namespace file we opened; it only changes this thread's
                // network namespace, and the thread ends after `f`.
                let rc = unsafe {
                    libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET)
                };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread in namespace panicked")
        })
    }

    /// Waits (up to 5 s) until `link` is operationally up with a real queueing discipline:
    /// attaching a tap's descriptor raises its carrier, but the kernel activates the qdisc
    /// asynchronously and frames sent before that vanish in the noop qdisc.
    pub fn wait_link_up(&self, link: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let out = Command::new("ip")
                .args(["-n", &self.name, "-o", "link", "show", "dev", link])
                .output()
                .expect("ip link show");
            let text = String::from_utf8_lossy(&out.stdout);
            if text.contains("state UP") && !text.contains("qdisc noop") {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{link} did not come up: {text}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Creates a veth pair with both ends in this namespace, up, the first with `addr`.
    pub fn veth_pair(&self, addr: Option<&str>) -> (String, String) {
        let a = crate::unique_name("va");
        let b = crate::unique_name("vb");
        self.ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        self.links.borrow_mut().push(a.clone());
        if let Some(addr) = addr {
            self.ip(&["addr", "add", addr, "dev", &a]);
        }
        self.ip(&["link", "set", &a, "up"]);
        self.ip(&["link", "set", &b, "up"]);
        (a, b)
    }

    /// Turns IPv6 off on every link of the namespace, present and future: their router
    /// solicitations and MLD reports would otherwise reach a test's guest before its frames.
    pub fn disable_ipv6(&self) {
        for key in ["all", "default"] {
            let (ok, out) = self.run(
                "sysctl",
                &["-qw", &format!("net.ipv6.conf.{key}.disable_ipv6=1")],
            );
            assert!(ok, "sysctl: {out}");
        }
    }

    /// Creates a persistent tap in this namespace, up, with `addr`.
    pub fn tap(&self, addr: Option<&str>) -> String {
        self.tap_with(addr, false)
    }

    /// [`NetNs::tap`], a multi-queue tap (`multi_queue`) when asked: one `queues=N` can use.
    pub fn tap_with(&self, addr: Option<&str>, multi_queue: bool) -> String {
        let t = crate::unique_name("vtap");
        let mut args = vec!["tuntap", "add", "name", &t, "mode", "tap"];
        if multi_queue {
            args.push("multi_queue");
        }
        self.ip(&args);
        self.links.borrow_mut().push(t.clone());
        if let Some(addr) = addr {
            self.ip(&["addr", "add", addr, "dev", &t]);
        }
        self.ip(&["link", "set", &t, "up"]);
        t
    }
}

impl Default for NetNs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for link in self.links.borrow().iter() {
            let _ = Command::new("ip")
                .args(["-n", &self.name, "link", "del", link])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
