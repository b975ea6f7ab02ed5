use std::io;

use super::*;

/// An Ethernet/IPv4/UDP frame to `dport` with `payload` bytes.
pub(crate) fn udp_frame(dport: u16, payload: usize) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    let ip_len = 20 + 8 + payload;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&4000u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend((0..payload).map(|i| i as u8));
    f
}

/// The records of a pcap file: (incl_len, orig_len, data), after checking its header.
fn records(bytes: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
    let u32_at = |o: usize| u32::from_ne_bytes(bytes[o..o + 4].try_into().unwrap());
    assert_eq!(u32_at(0), 0xa1b2_c3d4, "magic");
    assert_eq!(
        &bytes[4..8],
        &[2, 0, 4, 0][..],
        "version 2.4 (little-endian host)"
    );
    assert_eq!(u32_at(16), 65_535, "snaplen");
    assert_eq!(u32_at(20), 1, "LINKTYPE_ETHERNET");
    let mut out = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        let incl = u32_at(at + 8);
        let orig = u32_at(at + 12);
        let data = bytes[at + 16..at + 16 + incl as usize].to_vec();
        out.push((incl, orig, data));
        at += 16 + incl as usize;
    }
    out
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "vmm_net-capture-{}-{name}.pcap",
        std::process::id()
    ))
}

#[test]
fn frames_are_written_with_their_lengths_and_long_ones_are_cut_to_the_snap_length() {
    let path = temp_path("plain");
    let (session, mut tap) = CaptureSession::start(&path, None).unwrap();
    let a = udp_frame(53, 10);
    let big = udp_frame(53, 65_000 - 42 + 1000);
    tap.frame(&a);
    tap.frame(&big);
    drop(tap);
    let s = session.finish();
    assert_eq!(
        (s.frames_written, s.frames_filtered, s.write_errors),
        (2, 0, 0)
    );
    assert_eq!(s.bytes, a.len() as u64 + 65_535);
    let r = records(&std::fs::read(&path).unwrap());
    std::fs::remove_file(&path).unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0], (a.len() as u32, a.len() as u32, a));
    assert_eq!((r[1].0, r[1].1), (65_535, big.len() as u32));
    assert_eq!(r[1].2, big[..65_535]);
}

#[test]
fn the_filter_keeps_only_matching_frames_and_a_bad_one_is_refused_by_name() {
    let f = Filter::compile("udp port 9999").unwrap();
    assert!(f.matches(&udp_frame(9999, 4)));
    assert!(!f.matches(&udp_frame(9998, 4)));
    assert!(
        !f.matches(&[0u8; 6]),
        "a frame too short to hold the fields"
    );
    let path = temp_path("filter");
    let (session, mut tap) = CaptureSession::start(&path, Some(f)).unwrap();
    for port in [9999, 1, 9999, 2, 3] {
        tap.frame(&udp_frame(port, 20));
    }
    drop(tap);
    let s = session.finish();
    assert_eq!((s.frames_written, s.frames_filtered), (2, 3));
    let r = records(&std::fs::read(&path).unwrap());
    std::fs::remove_file(&path).unwrap();
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|(_, _, d)| d[36..38] == 9999u16.to_be_bytes()));

    let e = Filter::compile("udp prt 9999").unwrap_err();
    assert!(matches!(e, CaptureError::Filter { .. }), "{e:?}");
    assert!(e.to_string().contains("`udp prt 9999`"), "{e}");
}

#[test]
fn a_file_that_cannot_be_written_fails_the_start() {
    let e = CaptureSession::start(Path::new("/dev/full"), None)
        .err()
        .unwrap();
    assert!(matches!(e, CaptureError::File { .. }), "{e:?}");
    assert!(e.to_string().contains("/dev/full"), "{e}");
    let e = CaptureSession::start(Path::new("/nonexistent-dir/x.pcap"), None)
        .err()
        .unwrap();
    assert!(e.to_string().contains("/nonexistent-dir/x.pcap"), "{e}");
}

/// An output that takes `room` bytes, then fails as a full disk does.
struct Full {
    room: usize,
}

impl Write for Full {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.room == 0 {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_full_disk_ends_the_capture_counted_and_reported_without_blocking_the_tap() {
    let frame = udp_frame(7, 100);
    // Room for two records and part of a third.
    let room = 2 * (16 + frame.len()) + 20;
    let (session, mut tap) =
        CaptureSession::start_writer(Path::new("full.pcap"), Full { room }, None).unwrap();
    for _ in 0..3 {
        tap.frame(&frame);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !session.counters().failed() {
        assert!(
            std::time::Instant::now() < deadline,
            "the write error went unnoticed"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    // The capture is over: more frames are neither queued nor counted, and never block.
    for _ in 0..10_000 {
        tap.frame(&frame);
    }
    drop(tap);
    let s = session.finish();
    assert_eq!(s.frames_written, 2);
    assert_eq!(s.write_errors, 1);
    assert_eq!(s.frames_dropped, 0);
    assert!(
        s.error.as_deref().unwrap().contains("No space left"),
        "{s:?}"
    );
}

#[test]
fn a_writer_that_falls_behind_costs_copies_not_waits() {
    /// An output that blocks until told to go on.
    struct Stuck(std::sync::mpsc::Receiver<()>);
    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.0.recv();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let (go, wait) = std::sync::mpsc::channel();
    let (session, mut tap) =
        CaptureSession::start_writer(Path::new("stuck.pcap"), Stuck(wait), None).unwrap();
    let frame = udp_frame(7, 100);
    let n = QUEUE_FRAMES + 500;
    for _ in 0..n {
        tap.frame(&frame);
    }
    drop(go);
    drop(tap);
    let s = session.finish();
    assert!(s.frames_dropped >= 499, "{s:?}");
    assert_eq!(s.frames_written + s.frames_dropped, n as u64, "{s:?}");
}
