//! The grammar against UML's documented forms and against every class of mistake.

use super::*;

fn ok(spec: &str) -> NetSpec {
    parse_spec(spec).unwrap_or_else(|e| panic!("{spec}: {e}"))
}

/// The error's one-line message, which must mention every needle.
fn err(spec: &str, needles: &[&str]) -> ConfigError {
    let e = parse_spec(spec).expect_err(spec);
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "multi-line message: {msg}");
    for n in needles {
        assert!(msg.contains(n), "{spec}: message `{msg}` lacks `{n}`");
    }
    e
}

#[test]
fn raw_with_defaults() {
    let s = ok("vec0:transport=raw,ifname=veth0");
    assert_eq!(s.name, "vec0");
    assert_eq!(s.common, CommonOpts::default());
    assert_eq!(s.common.depth, 64);
    assert_eq!(s.common.mtu, 1500);
    assert_eq!(s.common.headroom, 2);
    assert!(s.common.vec && !s.common.gro && s.common.mac.is_none());
    assert_eq!(
        s.transport,
        TransportConfig::Raw(RawConfig {
            ifname: "veth0".into()
        })
    );
}

#[test]
fn common_options() {
    let s = ok("vec12:transport=raw,ifname=eth0,depth=128,mtu=9000,headroom=32,gro=1,vec=0,mac=02:01:02:03:04:05,bpffile=/f.bpf,bpfflash=1,busy_poll=50");
    assert_eq!(s.name, "vec12");
    assert_eq!(
        s.common,
        CommonOpts {
            depth: 128,
            mtu: 9000,
            headroom: 32,
            gro: true,
            vec: false,
            mac: Some(MacAddr([2, 1, 2, 3, 4, 5])),
            bpffile: Some("/f.bpf".into()),
            bpfflash: true,
            queues: 1,
            busy_poll: Some(BusyPollOpt::Micros(50)),
            affinity: None,
        }
    );
}

#[test]
fn busy_poll_on_every_vector_transport_in_range_or_auto() {
    use BusyPollOpt::{Auto, Micros};
    assert_eq!(ok("vec0:transport=tap").common.busy_poll, None);
    assert_eq!(
        ok("vec0:transport=tap,busy_poll=0").common.busy_poll,
        Some(Micros(0))
    );
    assert_eq!(
        ok("vec0:transport=tap,busy_poll=1000").common.busy_poll,
        Some(Micros(1000))
    );
    assert_eq!(
        ok("vec0:transport=gre,src=192.0.2.1,dst=192.0.2.2,busy_poll=20")
            .common
            .busy_poll,
        Some(Micros(20))
    );
    assert_eq!(ok("user,busy_poll=30").common.busy_poll, Some(Micros(30)));
    assert_eq!(
        ok("vec0:transport=raw,ifname=eth0,busy_poll=auto")
            .common
            .busy_poll,
        Some(Auto)
    );
    err(
        "vec0:transport=tap,busy_poll=1001",
        &["busy_poll=1001", "0..=1000", "or auto"],
    );
    err(
        "vec0:transport=tap,busy_poll=-1",
        &["busy_poll=-1", "or auto"],
    );
    err(
        "vec0:transport=tap,busy_poll=Auto",
        &["busy_poll=Auto", "or auto"],
    );
    // Each pair's worker looks for its own pair only, under its own lock.
    let c = ok("vec0:transport=tap,queues=2,busy_poll=50").common;
    assert_eq!((c.queues, c.busy_poll), (2, Some(Micros(50))));
    assert_eq!(Auto.to_string(), "auto");
    assert_eq!(Micros(7).to_string(), "7");
}

#[test]
fn affinity_cpus_ranges_and_repeats_joined_into_one_set() {
    let cpus = |spec: &str| ok(spec).common.affinity.map(|s| s.cpus().to_vec());
    assert_eq!(cpus("vec0:transport=tap"), None);
    assert_eq!(cpus("vec0:transport=tap,affinity=1"), Some(vec![1]));
    assert_eq!(cpus("vec0:transport=tap,affinity=2-4"), Some(vec![2, 3, 4]));
    // Repeated (a comma ends the option), overlapping, out of order: one sorted set.
    assert_eq!(
        cpus("vec0:transport=tap,affinity=6,affinity=2-3,affinity=3,queues=2"),
        Some(vec![2, 3, 6])
    );
    assert_eq!(
        cpus("vec0:transport=gre,src=192.0.2.1,dst=192.0.2.2,affinity=1023"),
        Some(vec![1023])
    );
    assert_eq!(cpus("user,affinity=0"), Some(vec![0]));
    // Shown as Linux's CPU lists.
    let set = ok("vec0:transport=tap,affinity=0-2,affinity=5,affinity=7-8")
        .common
        .affinity
        .unwrap();
    assert_eq!(set.to_string(), "0-2,5,7-8");
    // Repeats of the widest range join into one set of 1024, not a list of millions.
    let many = vec!["affinity=0-1023"; 10_000].join(",");
    let set = ok(&format!("vec0:transport=tap,{many}"))
        .common
        .affinity
        .unwrap();
    assert_eq!((set.cpus().len(), set.to_string()), (1024, "0-1023".into()));
}

#[test]
fn affinity_mistakes_name_the_value() {
    for (v, why) in [
        ("", "a CPU number or a range"),
        ("x", "a CPU number or a range"),
        ("0x1", "a CPU number or a range"),
        ("-1", "a CPU number or a range"),
        ("1-", "a CPU number or a range"),
        ("1:3", "a CPU number or a range"),
        ("1024", "0..=1023"),
        ("0-1024", "0..=1023"),
        ("99999999999", "0..=1023"),
        ("3-1", "runs backwards"),
    ] {
        err(
            &format!("vec0:transport=tap,affinity=0,affinity={v}"),
            &[&format!("`affinity={v}`"), why],
        );
    }
}

#[test]
fn queues_on_tap_and_raw_only_and_in_range() {
    assert_eq!(ok("vec0:transport=tap,queues=4").common.queues, 4);
    assert_eq!(
        ok("vec0:transport=raw,ifname=v,queues=16").common.queues,
        16
    );
    assert_eq!(ok("vec0:transport=raw,ifname=v").common.queues, 1);
    err("vec0:transport=tap,queues=0", &["queues=0", "1..=16"]);
    err("vec0:transport=tap,queues=17", &["queues=17", "1..=16"]);
    err("vec0:transport=tap,queues=two", &["queues=two"]);
    err(
        "vec0:transport=hybrid,ifname=t,queues=2",
        &["queues=2", "tap, raw", "not hybrid"],
    );
    err(
        "vec0:transport=gre,src=192.0.2.1,dst=192.0.2.2,queues=2",
        &["queues=2", "not gre"],
    );
}

#[test]
fn xdp_takes_an_interface_a_hook_and_an_mtu_that_fits_a_chunk() {
    let s = ok("vec0:transport=xdp,ifname=veth0");
    assert_eq!(
        s.transport,
        TransportConfig::Xdp(XdpConfig {
            ifname: "veth0".into(),
            mode: XdpMode::Auto,
        })
    );
    for (word, mode) in [
        ("native", XdpMode::Native),
        ("drv", XdpMode::Native),
        ("skb", XdpMode::Skb),
        ("generic", XdpMode::Skb),
        ("auto", XdpMode::Auto),
    ] {
        let s = ok(&format!("vec0:transport=xdp,ifname=v,mode={word},gro=1"));
        assert!(s.common.gro);
        assert!(
            matches!(s.transport, TransportConfig::Xdp(XdpConfig { mode: m, .. }) if m == mode)
        );
    }
    assert_eq!(
        ok("vec0:transport=xdp,ifname=v,mtu=3822").common.mtu,
        XDP_MAX_MTU
    );
    err(
        "vec0:transport=xdp,ifname=v,mtu=3823",
        &["mtu=3823", "at most 3822"],
    );
    err(
        "vec0:transport=xdp,ifname=v,mode=hw",
        &["mode=hw", "native, skb"],
    );
    err("vec0:transport=xdp", &["ifname"]);
    assert_eq!(ok("vec0:transport=xdp,ifname=v,queues=2").common.queues, 2);
    err(
        "vec0:transport=xdp,ifname=v,queues=17",
        &["queues=17", "1..=16"],
    );
    err("vec0:transport=raw,ifname=v,mode=skb", &["mode=skb", "xdp"]);
}

#[test]
fn tap_ifname_is_optional_hybrid_and_raw_require_it() {
    assert_eq!(
        ok("vec0:transport=tap").transport,
        TransportConfig::Tap(TapConfig { ifname: None })
    );
    assert_eq!(
        ok("vec0:transport=tap,ifname=tap3").transport,
        TransportConfig::Tap(TapConfig {
            ifname: Some("tap3".into())
        })
    );
    err("vec0:transport=hybrid", &["vec0", "hybrid", "ifname"]);
    err("vec0:transport=raw", &["vec0", "raw", "ifname"]);
    assert_eq!(
        ok("vec0:transport=hybrid,ifname=tap0").transport,
        TransportConfig::Hybrid(HybridConfig {
            ifname: "tap0".into()
        })
    );
}

#[test]
fn gre_full_and_minimal() {
    let s = ok("vec0:transport=gre,src=127.0.0.1,dst=127.0.0.2,rx_key=0xffffffff,tx_key=7,sequence=1,pin_sequence=1");
    assert_eq!(
        s.transport,
        TransportConfig::Gre(GreConfig {
            src: "127.0.0.1".parse().unwrap(),
            dst: "127.0.0.2".parse().unwrap(),
            v6: false,
            keys: Some(GreKeys {
                rx: 0xffff_ffff,
                tx: 7
            }),
            sequence: true,
            pin_sequence: true,
        })
    );
    match ok("vec0:transport=gre,src=::1,dst=::2,v6=1").transport {
        TransportConfig::Gre(g) => {
            assert!(g.v6 && g.keys.is_none() && !g.sequence && !g.pin_sequence)
        }
        t => panic!("{t:?}"),
    }
    err("vec0:transport=gre,src=::1,dst=::2", &["src=::1", "v6=1"]);
    err(
        "vec0:transport=gre,src=1.2.3.4,dst=::2,v6=1",
        &["src=1.2.3.4", "IPv6"],
    );
    err("vec0:transport=gre,src=1.2.3.4", &["gre", "dst"]);
    err(
        "vec0:transport=gre,src=1.2.3.4,dst=1.2.3.5,rx_key=1",
        &["rx_key", "tx_key"],
    );
    err(
        "vec0:transport=gre,src=1.2.3.4,dst=1.2.3.5,tx_key=1",
        &["tx_key", "rx_key"],
    );
    err(
        "vec0:transport=gre,src=1.2.3.4,dst=1.2.3.x",
        &["dst=1.2.3.x"],
    );
}

#[test]
fn l2tpv3_udp_and_ip() {
    let s = ok("vec0:transport=l2tpv3,udp=1,src=127.0.0.1,src_port=1706,dst=127.0.0.2,dstport=1707,rx_session=0xffffffff,tx_session=0xffffffff,rx_cookie=0x1122334455667788,tx_cookie=2,cookie64=1,counter=1,pin_counter=1");
    assert_eq!(
        s.transport,
        TransportConfig::L2tpv3(L2tpv3Config {
            src: "127.0.0.1".parse().unwrap(),
            dst: "127.0.0.2".parse().unwrap(),
            udp: true,
            srcport: Some(1706),
            dstport: Some(1707),
            v6: false,
            rx_session: 0xffff_ffff,
            tx_session: 0xffff_ffff,
            cookies: Some(L2tpCookies {
                rx: 0x1122_3344_5566_7788,
                tx: 2
            }),
            cookie64: true,
            counter: true,
            pin_counter: true,
        })
    );
    match ok("vec0:transport=l2tpv3,src=1.1.1.1,dst=2.2.2.2,rx_session=1,tx_session=2").transport {
        TransportConfig::L2tpv3(l) => assert!(!l.udp && l.srcport.is_none() && l.cookies.is_none()),
        t => panic!("{t:?}"),
    }
    err(
        "vec0:transport=l2tpv3,src=1.1.1.1,dst=2.2.2.2,tx_session=2",
        &["l2tpv3", "rx_session"],
    );
    err(
        "vec0:transport=l2tpv3,udp=1,src=1.1.1.1,dst=2.2.2.2,rx_session=1,tx_session=2",
        &["srcport"],
    );
    err(
        "vec0:transport=l2tpv3,src=1.1.1.1,dst=2.2.2.2,rx_session=1,tx_session=2,srcport=5",
        &["srcport=5", "udp=1"],
    );
    err(
        "vec0:transport=l2tpv3,src=1.1.1.1,dst=2.2.2.2,rx_session=1,tx_session=2,rx_cookie=0x100000000,tx_cookie=1",
        &["rx_cookie=0x100000000", "cookie64"],
    );
    err(
        "vec0:transport=l2tpv3,src=1.1.1.1,dst=2.2.2.2,rx_session=4294967296,tx_session=2",
        &["rx_session=4294967296"],
    );
}

#[test]
fn bess_and_fd() {
    assert_eq!(
        ok("vec0:transport=bess,dst=/tmp/bess_unix_x,src=/tmp/me").transport,
        TransportConfig::Bess(BessConfig {
            src: Some("/tmp/me".into()),
            dst: "/tmp/bess_unix_x".into()
        })
    );
    err("vec0:transport=bess", &["bess", "dst"]);
    let long = "x".repeat(108);
    err(&format!("vec0:transport=bess,dst={long}"), &["dst=", "107"]);
    assert_eq!(
        ok("vec0:transport=fd,fd=3").transport,
        TransportConfig::Fd(FdConfig { fd: 3 })
    );
    err("vec0:transport=fd,fd=-1", &["fd=-1"]);
    assert!(ok("vec0:transport=fd,fd=3,gro=1").common.gro);
    err("vec0:transport=fd,fd=3,gro=2", &["gro=2"]);
}

#[test]
fn mistakes_name_the_option_and_value() {
    err("vec0:transport=foo", &["vec0", "foo", "tap, hybrid, raw"]);
    // Matched exactly, not by prefix as UML does.
    err("vec0:transport=rawx,ifname=a", &["rawx"]);
    err("vec0:ifname=eth0", &["vec0", "transport"]);
    err("vec0:transport=raw,ifnmae=eth0", &["ifnmae=eth0"]);
    err("vec0:transport=raw,ifname=a,ifname=b", &["ifname", "twice"]);
    err(
        "vec0:transport=raw,ifname=a,depth=64,depth=64",
        &["depth", "twice"],
    );
    err(
        "vec0:transport=raw,ifname=a,mtu=70000",
        &["mtu=70000", "576..=65535"],
    );
    err("vec0:transport=raw,ifname=a,mtu=100", &["mtu=100"]);
    err("vec0:transport=raw,ifname=a,depth=0", &["depth=0"]);
    err("vec0:transport=raw,ifname=a,depth=ten", &["depth=ten"]);
    err(
        "vec0:transport=raw,ifname=a,mac=01:00:5e:00:00:01",
        &["mac=01:00:5e:00:00:01", "multicast"],
    );
    err("vec0:transport=raw,ifname=a,gro=2", &["gro=2"]);
    err(
        "vec0:transport=raw,ifname=a,src=1.2.3.4",
        &["src=1.2.3.4", "gre", "not raw"],
    );
    err("vec0:transport=tap,bpffile=/x", &["bpffile=/x", "raw"]);
    err("vec0:transport=raw,ifname=a,gro", &["`gro`", "key=value"]);
    err(
        "vec0:transport=raw,ifname=this_name_is_too_long",
        &["ifname=this_name_is_too_long"],
    );
    err("vecX:transport=raw", &["vecN"]);
    err("", &["vecN"]);
    err("eth0", &["vecN"]);
}

#[test]
fn vector_vde_takes_a_vnl_naming_a_switch() {
    let vde = |switch: Option<&str>| {
        TransportConfig::Vde(VdeConfig {
            switch: switch.map(Into::into),
            port: None,
            group: None,
            mode: None,
            descr: None,
        })
    };
    let s = ok("vec2:transport=vde,vnl=vde:///tmp/switch");
    assert_eq!(s.name, "vec2");
    assert_eq!(s.transport, vde(Some("/tmp/switch")));
    assert_eq!(s.common, CommonOpts::default());
    // A plain path is a switch directory too (relative paths stay relative).
    assert_eq!(
        ok("vec0:transport=vde,vnl=/var/run/sw").transport,
        vde(Some("/var/run/sw"))
    );
    assert_eq!(ok("vec0:transport=vde,vnl=sw").transport, vde(Some("sw")));
    // Absent, empty or bare `vde://`: libvdeplug's default switch.
    for spec in [
        "vec0:transport=vde",
        "vec0:transport=vde,vnl=",
        "vec0:transport=vde,vnl=vde://",
    ] {
        assert_eq!(ok(spec).transport, vde(None), "{spec}");
    }
    // The common vector options, as for the other transports.
    let s = ok(
        "vec1:transport=vde,vnl=vde:///s,mtu=9000,depth=16,headroom=8,vec=0,mac=02:00:00:00:00:07",
    );
    assert_eq!(
        s.common,
        CommonOpts {
            depth: 16,
            mtu: 9000,
            headroom: 8,
            vec: false,
            mac: Some(MacAddr([2, 0, 0, 0, 0, 7])),
            ..CommonOpts::default()
        }
    );
    // The vector and the legacy form give the same port.
    assert_eq!(
        ok("vec0:transport=vde,vnl=vde:///tmp/sw").transport,
        ok("eth0=vde,/tmp/sw").transport
    );
}

#[test]
fn vector_vde_mistakes_name_the_key_and_value() {
    for scheme in [
        "tap://tap0",
        "slirp://",
        "vxvde://234.0.0.1",
        "cmd://ssh host vde_plug",
    ] {
        let spec = format!("vec0:transport=vde,vnl={scheme}");
        let name = scheme.split("://").next().unwrap();
        err(
            &spec,
            &[
                "vec0",
                &format!("vnl={scheme}"),
                &format!("`{name}://`"),
                "not supported",
                "vde://PATH",
                "plain PATH",
            ],
        );
    }
    err(
        "vec0:transport=vde,vnl=vde:///tmp/sw[port=3]",
        &["vnl=vde:///tmp/sw[port=3]", "[options]", "ethN=vde"],
    );
    err("vec0:transport=vde,vnl=a,vnl=b", &["vnl", "twice"]);
    err("vec0:transport=vde,ifname=a", &["ifname=a", "not vde"]);
    err("vec0:transport=vde,gro=1", &["gro=1", "not vde"]);
    err(
        "vec0:transport=raw,ifname=a,vnl=/x",
        &["vnl=/x", "vde", "not raw"],
    );
    err("vec0:transport=vde,mtu=100", &["mtu=100"]);
    err("vec0:transport=vdex", &["vdex", "vde"]);
}

#[test]
fn bpf_options_are_refused_where_there_is_no_bpf_receive_filter() {
    for t in ["tap", "fd,fd=3", "bess,dst=/x", "vde", "user"] {
        err(
            &format!("vec0:transport={t},bpfflash=1"),
            &[
                "bpfflash=1",
                "no BPF receive filter",
                "raw and hybrid",
                "replace",
            ],
        );
        err(
            &format!("vec0:transport={t},bpffile=/f"),
            &["bpffile=/f", "no BPF receive filter", "attach"],
        );
    }
    assert!(ok("vec0:transport=raw,ifname=a,bpfflash=1").common.bpfflash);
    assert!(
        ok("vec0:transport=hybrid,ifname=a,bpfflash=1")
            .common
            .bpfflash
    );
    assert!(!ok("vec0:transport=raw,ifname=a").common.bpfflash);
}

#[test]
fn trailing_commas_are_harmless() {
    assert_eq!(
        ok("vec0:transport=raw,ifname=a,").transport,
        ok("vec0:transport=raw,ifname=a").transport
    );
}

#[test]
fn legacy_forms_with_defaults() {
    let s = ok("eth0=mcast");
    assert_eq!(s.name, "eth0");
    assert_eq!(
        s.transport,
        TransportConfig::Mcast(McastConfig {
            group: "239.192.168.1".parse().unwrap(),
            port: 1102,
            ttl: 1
        })
    );
    let s = ok("eth1=mcast,02:00:00:00:00:09,239.1.2.3,2000,4");
    assert_eq!(s.common.mac, Some(MacAddr([2, 0, 0, 0, 0, 9])));
    assert_eq!(
        s.transport,
        TransportConfig::Mcast(McastConfig {
            group: "239.1.2.3".parse().unwrap(),
            port: 2000,
            ttl: 4
        })
    );
    err("eth0=mcast,,10.0.0.1", &["GROUP", "10.0.0.1", "multicast"]);
    assert_eq!(
        ok("eth0=tuntap,tap0,,192.168.0.254").transport,
        TransportConfig::TunTap(TunTapConfig {
            ifname: "tap0".into(),
            gate_ip: Some("192.168.0.254".parse().unwrap())
        })
    );
    err("eth0=tuntap,,,192.168.0.254", &["tuntap", "IFNAME"]);
    assert_eq!(
        ok("eth0=ucast,,127.0.0.2").transport,
        TransportConfig::Ucast(UcastConfig {
            remote: "127.0.0.2".parse().unwrap(),
            local_port: 1102,
            remote_port: 1102
        })
    );
    assert_eq!(
        ok("eth0=pcap,eth0,tcp port 80,nopromisc,optimize").transport,
        TransportConfig::Pcap(PcapConfig {
            ifname: "eth0".into(),
            filter: Some("tcp port 80".into()),
            promisc: false,
            optimize: true
        })
    );
    err("eth0=pcap,eth0,,fast", &["pcap OPT", "fast"]);
    assert_eq!(
        ok("eth0=daemon").transport,
        TransportConfig::Daemon(DaemonConfig {
            ctl: "/tmp/uml.ctl".into()
        })
    );
    err("eth0=daemon,,inet,/x", &["TYPE", "inet"]);
    assert_eq!(
        ok("eth0=vde,/tmp/sw,,3,grp,0770,my port").transport,
        TransportConfig::Vde(VdeConfig {
            switch: Some("/tmp/sw".into()),
            port: Some(3),
            group: Some("grp".into()),
            mode: Some(0o770),
            descr: Some("my port".into())
        })
    );
    err("eth0=vde,,,,,999", &["MODE", "999", "octal"]);
    err("eth0=mcast,,,,,,", &["too many", "mcast"]);
    err("eth0=slirp", &["slirp", "tuntap"]);
}

#[test]
fn mac_display_round_trips() {
    let m = MacAddr::random_local();
    assert_eq!(m.0[0] & 3, 2, "locally administered unicast");
    assert_eq!(m.to_string().parse::<MacAddr>(), Ok(m));
}

/// No input, however mangled, panics: mutations of valid specs and random bytes.
#[test]
fn never_panics() {
    let seeds = [
        "vec0:transport=raw,ifname=veth0,gro=1",
        "vec0:transport=l2tpv3,udp=1,src=::1,srcport=1,dst=::2,dstport=2,rx_session=1,tx_session=2,v6=1",
        "vec0:transport=gre,src=1.1.1.1,dst=2.2.2.2,rx_key=1,tx_key=2",
        "eth0=vde,/a,02:00:00:00:00:01,1,g,0700,d",
        "vec0:transport=vde,vnl=vde:///tmp/sw,mac=02:00:00:00:00:01",
        "eth0=pcap,eth0,port 80,promisc,optimize,02:00:00:00:00:01",
    ];
    let alphabet: Vec<char> = "vecth0123456789:=,.x/-_ abcdefipv6\u{e9}\u{1f600}\0"
        .chars()
        .collect();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let mut s: Vec<char> = seeds[(next() % seeds.len() as u64) as usize]
            .chars()
            .collect();
        for _ in 0..(next() % 6) {
            let pos = (next() % (s.len() as u64 + 1)) as usize;
            match next() % 3 {
                0 if pos < s.len() => {
                    s.remove(pos);
                }
                1 if pos < s.len() => s[pos] = alphabet[(next() % alphabet.len() as u64) as usize],
                _ => s.insert(pos, alphabet[(next() % alphabet.len() as u64) as usize]),
            }
        }
        let s: String = s.into_iter().collect();
        if let Err(e) = parse_spec(&s) {
            assert!(!e.to_string().is_empty());
        }
    }
}

#[test]
fn user_defaults_and_shorthand() {
    let s = ok("vec0:transport=user");
    assert_eq!(s.transport, TransportConfig::User(UserConfig::default()));
    assert_eq!(ok("user"), s);
    let s = ok("user,hostfwd=tcp::2222-:22,mtu=1400");
    assert_eq!(s.name, "vec0");
    assert_eq!(s.common.mtu, 1400);
    let TransportConfig::User(u) = s.transport else {
        panic!("not user")
    };
    assert_eq!(
        u.hostfwd,
        vec![HostFwd {
            udp: false,
            host_addr: "127.0.0.1".parse().unwrap(),
            host_port: 2222,
            guest_addr: None,
            guest_port: 22,
        }]
    );
    assert_eq!(u.host(2).to_string(), "10.0.2.2");
    // Not the shorthand: a name that merely starts with `user`.
    err("userx", &["userx"]);
}

#[test]
fn user_options() {
    let s = ok("vec3:transport=user,net=192.168.76.0/24,restrict=1,hostfwd=udp:0.0.0.0:5353-192.168.76.9:53,hostfwd=:127.0.0.2:8080-:80");
    let TransportConfig::User(u) = s.transport else {
        panic!("not user")
    };
    assert!(u.restrict);
    assert_eq!(u.net.to_string(), "192.168.76.0");
    assert_eq!(u.mask().to_string(), "255.255.255.0");
    assert_eq!(u.host(15).to_string(), "192.168.76.15");
    assert_eq!(u.hostfwd.len(), 2);
    assert!(u.hostfwd[0].udp);
    assert_eq!(u.hostfwd[0].host_addr.to_string(), "0.0.0.0");
    assert_eq!(u.hostfwd[0].guest_addr.unwrap().to_string(), "192.168.76.9");
    assert!(!u.hostfwd[1].udp);
    assert_eq!(u.hostfwd[1].host_addr.to_string(), "127.0.0.2");
    assert_eq!(
        (u.hostfwd[1].host_port, u.hostfwd[1].guest_port),
        (8080, 80)
    );
}

#[test]
fn user_mistakes_name_key_and_value() {
    for (spec, needles) in [
        ("user,hostfwd=garbage", &["hostfwd=garbage", "tcp|udp"][..]),
        (
            "user,hostfwd=tcp::0-:22",
            &["hostfwd=tcp::0-:22", "host port"],
        ),
        (
            "user,hostfwd=tcp::22-:99999",
            &["hostfwd=tcp::22-:99999", "guest port"],
        ),
        (
            "user,hostfwd=sctp::22-:22",
            &["hostfwd=sctp::22-:22", "sctp"],
        ),
        (
            "user,hostfwd=tcp:1.2.3:22-:22",
            &["hostfwd=tcp:1.2.3:22-:22", "1.2.3"],
        ),
        ("user,hostfwd=tcp::22-10.0.3.1:22", &["10.0.3.1", "outside"]),
        (
            "user,hostfwd=tcp::22-:22,hostfwd=tcp::22-:23",
            &["hostfwd=tcp::22-:23", "twice"],
        ),
        ("user,net=10.0.2.1/24", &["net=10.0.2.1/24", "host bits"]),
        ("user,net=10.0.2.0/30", &["net=10.0.2.0/30", "8..=27"]),
        ("user,net=10.0.2.0", &["net=10.0.2.0", "ADDR/PREFIX"]),
        ("user,restrict=maybe", &["restrict=maybe"]),
        ("user,bogus=1", &["bogus=1", "unknown"]),
        ("user,ifname=eth0", &["ifname=eth0", "user"]),
        (
            "vec0:transport=user,net=10.0.0.0/16,net=10.0.0.0/16",
            &["net", "twice"],
        ),
        ("vec0:transport=tap,hostfwd=tcp::1-:1", &["hostfwd", "user"]),
    ] {
        err(spec, needles);
    }
}
