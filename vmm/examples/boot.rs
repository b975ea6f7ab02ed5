//! Minimal runner for manual testing (the real CLI lives in `cli/`):
//! `cargo run -p vmm-vmm --example boot -- KERNEL [CPUS] [MEM_MIB] [CMDLINE]`.
//! Console on stdio; exits with the VM's status, or 2 on a VMM error (what the CLI does).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(kernel) = args.first() else {
        eprintln!("usage: boot KERNEL [CPUS] [MEM_MIB] [CMDLINE]");
        std::process::exit(2);
    };
    let mut cfg = vmm_vmm::VmConfig::new(kernel);
    if let Some(c) = args.get(1).and_then(|s| s.parse().ok()) {
        cfg.cpus = c;
    }
    if let Some(m) = args.get(2).and_then(|s| s.parse().ok()) {
        cfg.mem_mib = m;
    }
    if let Some(c) = args.get(3) {
        cfg.cmdline = c.clone();
    }
    match vmm_vmm::run(cfg) {
        Ok(report) => {
            eprintln!(
                "vmm: {:?} after {:?}, vCPUs entered: {:?}",
                report.exit, report.elapsed, report.vcpus_entered
            );
            std::process::exit(report.exit_code());
        }
        Err(e) => {
            eprintln!("vmm: {e}");
            std::process::exit(2);
        }
    }
}
