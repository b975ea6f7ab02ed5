use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixDatagram;

use super::*;
use crate::backend::NetBackend;
use crate::config::parse_spec;

const fn send_sync<T: Send + Sync + Clone>() {}
const _: () = send_sync::<NetControl>();

/// A seqpacket pair: the descriptor number for `fd=`, and the test's end.
fn pair() -> (i32, UnixDatagram) {
    let (theirs, ours) = crate::transport::seqpacket_pair().unwrap();
    (theirs.into_raw_fd(), UnixDatagram::from(ours))
}

fn fd_backend() -> (NetBackend, UnixDatagram) {
    let (fd, peer) = pair();
    let spec = parse_spec(&format!("vec3:transport=fd,fd={fd},mac=02:00:00:00:00:03")).unwrap();
    (NetBackend::open(&spec).unwrap(), peer)
}

#[test]
fn stats_name_every_counter_once_and_render_as_json() {
    let (backend, _peer) = fd_backend();
    let st = backend.control().stats();
    assert_eq!((st.device.as_str(), st.transport), ("vec3", "fd"));
    let mut names: Vec<_> = st.counters.iter().map(|(n, _)| *n).collect();
    let count = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), count, "a counter name twice");
    for n in [
        "rx_packets",
        "tx_bytes",
        "dropped_at_swap",
        "bad_chain_too_long",
        "bad_chain_empty",
        "transport_rx_dropped_kernel",
        "transport_rx_dropped_header_wrong_key",
        "swaps",
        "transport_buffer_bytes",
        "capture_active",
        "capture_frames_filtered",
        "capture_write_errors",
    ] {
        assert_eq!(st.get(n), Some(0), "{n}");
    }
    // fd, no offloads negotiated: MTU-sized buffers at the full depth, well under 1 MiB.
    let batches = st.get("batch_buffer_bytes").expect("batch_buffer_bytes");
    assert!(batches > 0 && batches < 1 << 20, "{batches}");
    let json = st.to_json();
    assert!(
        json.starts_with(
            r#"{"device":"vec3","transport":"fd","capture":null,"counters":{"rx_packets":0,"#
        ),
        "{json}"
    );
    assert!(json.ends_with(r#""capture_write_errors":0}}"#), "{json}");
    assert_eq!(json_string("a\"b\\c\n"), r#""a\"b\\c\u000a""#);
}

#[test]
fn swaps_that_change_what_the_guest_sees_or_name_another_device_are_refused() {
    let (backend, _peer) = fd_backend();
    let ctl = backend.control();
    let (fd, _b) = pair();
    let spec = |s: &str| parse_spec(&format!("{s},fd={fd}")).unwrap();
    let e = ctl.swap(spec("vec4:transport=fd")).unwrap_err();
    assert!(matches!(e, SwapError::WrongDevice { .. }), "{e}");
    assert!(e.to_string().contains("`vec4`"), "{e}");
    let e = ctl.swap(spec("vec3:transport=fd,mtu=9000")).unwrap_err();
    assert!(
        e.to_string()
            .contains("mtu 9000 differs from the device's 1500"),
        "{e}"
    );
    let e = ctl
        .swap(spec("vec3:transport=fd,mac=02:00:00:00:00:09"))
        .unwrap_err();
    assert!(e.to_string().contains("mac 02:00:00:00:00:09"), "{e}");
    // A transport that cannot open: the error says why, and the old transport stays.
    let e = ctl
        .swap(parse_spec("vec3:transport=raw,ifname=nosuchif0").unwrap())
        .unwrap_err();
    assert!(matches!(e, SwapError::Open { .. }), "{e}");
    assert!(e.to_string().contains("nosuchif0"), "{e}");
    assert_eq!(ctl.stats().transport, "fd");
    assert_eq!(ctl.stats().get("swaps"), Some(0));
    // The same MAC, or none, is fine.
    ctl.swap(spec("vec3:transport=fd,mac=02:00:00:00:00:03"))
        .unwrap();
    assert_eq!(ctl.stats().get("swaps"), Some(1));
}

#[test]
fn a_swap_without_a_frontend_moves_the_device_to_the_new_descriptor() {
    let (backend, a) = fd_backend();
    let ctl = backend.control();
    let (fd, b) = pair();
    ctl.swap(parse_spec(&format!("vec3:transport=fd,fd={fd}")).unwrap())
        .unwrap();
    // The old descriptor was closed with the old transport: A's peer sees end-of-file.
    a.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(a.recv(&mut buf).unwrap(), 0, "A still open");
    let dp = device::lock(&ctl.shared.dps[0]);
    assert_eq!(dp.transport().rx_fd(), fd);
    drop(dp);
    drop(b);
}

#[test]
fn a_capture_needs_a_good_filter_and_only_one_runs_at_a_time() {
    let (backend, _peer) = fd_backend();
    let ctl = backend.control();
    let path = std::env::temp_dir().join(format!("vmm_net-ctl-{}.pcap", std::process::id()));
    let e = ctl.capture_start(&path, Some("port 99999")).unwrap_err();
    assert!(e.to_string().contains("`port 99999`"), "{e}");
    assert!(!path.exists(), "a refused start made the file");
    assert!(matches!(ctl.capture_stop(), Err(CaptureError::NotRunning)));
    ctl.capture_start(&path, None).unwrap();
    assert_eq!(ctl.stats().capture.as_deref(), Some(path.as_path()));
    assert_eq!(ctl.stats().get("capture_active"), Some(1));
    let e = ctl.capture_start(&path, None).unwrap_err();
    assert!(matches!(e, CaptureError::AlreadyRunning(_)), "{e}");
    let s = ctl.capture_stop().unwrap();
    assert_eq!((s.frames_written, s.write_errors), (0, 0));
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        24,
        "the header alone"
    );
    assert_eq!(ctl.stats().get("capture_active"), Some(0));
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_flash_needs_bpfflash_on_the_device() {
    let (backend, _peer) = fd_backend();
    let ctl = backend.control();
    let path = std::env::temp_dir().join(format!("vmm_net-flash-{}.bpf", std::process::id()));
    std::fs::write(&path, BpfProgram::ret(0)).unwrap();
    let e = ctl.flash_bpf(&path).unwrap_err();
    assert!(matches!(e, FlashError::NotAllowed { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("`bpfflash=1` not set on NIC vec3") && msg.contains("transport fd"),
        "{msg}"
    );
    // Even a file that does not exist is refused for that reason first.
    let e = ctl.flash_bpf(Path::new("/nonexistent/x.bpf")).unwrap_err();
    assert!(matches!(e, FlashError::NotAllowed { .. }), "{e:?}");
    // A transport without a socket filter refuses even when the flag is set (the parser
    // keeps bpfflash=1 off such transports; the trait says no regardless).
    ctl.shared.bpfflash.store(true, Ordering::Relaxed);
    let e = ctl.flash_bpf(&path).unwrap_err();
    assert!(matches!(e, FlashError::Attach { .. }), "{e:?}");
    assert!(e.to_string().contains("no BPF receive filter"), "{e}");
    // A bad file is named, with the reason.
    std::fs::write(&path, [0u8; 7]).unwrap();
    let e = ctl.flash_bpf(&path).unwrap_err();
    assert!(matches!(e, FlashError::Program { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("8-byte instructions"),
        "{msg}"
    );
    let e = ctl.flash_bpf(Path::new("/nonexistent/x.bpf")).unwrap_err();
    assert!(e.to_string().contains("`/nonexistent/x.bpf`"), "{e}");
    std::fs::remove_file(&path).unwrap();
}
