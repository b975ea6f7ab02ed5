//! The reference text for device specifications, shown by `--help`.

/// Every transport and option, for `vmm --help` and `vmm net-backend --help`.
pub const SPEC_HELP: &str = "\
DEVICE SPECIFICATIONS (User-Mode Linux syntax)

  vecN:transport=NAME,key=value,...      vector transports
  user[,key=value,...]                   shorthand for vec0:transport=user[,key=value,...]
                                         (with several --net, the next free vecN)
  ethN=TRANSPORT,field,field,...         legacy transports (positional; empty field = default)

Unlike UML, every mistake is an error at start-up naming the option and its value: an unknown
transport or option, an option given twice, a bad number, MAC or address, a missing mandatory
option, an option of another transport, one of a pair (rx_key/tx_key, ...) without the other.
Numbers are decimal or 0x-hexadecimal; keys, sessions and 32-bit cookies take the full unsigned
32-bit range (UML itself parses them as signed). Booleans are 0 or 1.

Options of every vector transport:
  depth=N       packets per multi-packet system call (recvmmsg/sendmmsg)   default 64, 1..=1024
  mtu=N         the device's MTU, offered to the guest                     default 1500, 576..=65535
  headroom=N    bytes reserved before each frame                           default 2, 0..=256
  vec=0|1       multi-packet I/O; vec=0 moves one packet per call          default 1
  mac=MAC       the device's MAC (unicast)                      default: random, locally administered
tap, hybrid, raw also:
  gro=0|1       offloads: a virtio_net_hdr on the host side, checksum and TSO offered to the guest
                and mirrored to the host (TUNSETOFFLOAD, PACKET_VNET_HDR) from what it negotiates;
                must match the host side's expectations                    default 0
raw, hybrid also:
  bpffile=PATH  classic BPF program (an array of struct sock_filter, 8 bytes each) attached as
                the receive filter; a malformed file is refused at start-up
  bpfflash=0|1  allow the receive filter to be replaced while the VM runs (UML: the guest's
                ethtool -f; here the control socket's `net bpf NIC FILE`)  default 0
                Both are refused on other transports: they have no BPF receive filter.

vector transports:
  tap       ifname=NAME (optional: a new tapN is created)
            A tap device; Linux has no multi-packet I/O on a tap, so one packet per call.
  hybrid    ifname=NAME (required)
            Transmit through the tap NAME, receive through AF_PACKET on it (multi-packet).
  raw       ifname=NAME (required)
            AF_PACKET on any interface (a veth end, a NIC); copies of our own transmissions are
            dropped.
  gre       src=ADDR dst=ADDR (required) v6=0|1 rx_key=N tx_key=N sequence=0|1 pin_sequence=0|1
            Ethernet over GRE (IP protocol 47); keys both or neither; sequence numbers start
            at 1 (always 0 with pin_sequence). v6=1 makes both addresses IPv6.
  l2tpv3    src=ADDR dst=ADDR rx_session=N tx_session=N (required) udp=0|1 srcport=N dstport=N
            v6=0|1 rx_cookie=N tx_cookie=N cookie64=0|1 counter=0|1 pin_counter=0|1
            Ethernet over L2TPv3, raw IP (protocol 115) or UDP (udp=1 needs srcport and dstport;
            src_port/dst_port, the how-to's spelling, are accepted too). Cookies both or
            neither, 64-bit with cookie64=1. counter is UML's plain 32-bit counter (first 1, 0
            with pin_counter), not RFC 4719's default L2-specific sublayer that Linux's own
            l2tp driver uses.
  bess      dst=PATH (required) src=PATH
            A unix seqpacket socket connected to dst (bound to src if given); paths <= 107 bytes.
  fd        fd=N (required)
            An inherited descriptor used both ways, bare frames: a datagram or seqpacket socket
            (multi-packet), or with vec=0 also a tap without vnet header.
  user      hostfwd=FWD (repeatable) net=ADDR/PREFIX restrict=0|1
            Rootless user networking through libslirp (QEMU's -netdev user): DHCP, DNS,
            outbound TCP/UDP through the host's sockets; needs no privilege. With the default
            net=10.0.2.0/24 the guest gets 10.0.2.15, the gateway 10.0.2.2 is also the host's
            loopback (10.0.2.2:PORT reaches 127.0.0.1:PORT) and 10.0.2.3 answers DNS. Prefix
            8..=27. restrict=1: nothing outbound, only forwards come in.
            hostfwd=[tcp|udp]:[HOSTADDR]:HPORT-[GUESTADDR]:GPORT forwards the host's
            HOSTADDR:HPORT (default 127.0.0.1, never all addresses unless 0.0.0.0 is given)
            to the guest's GUESTADDR:GPORT (default the first DHCP address); give hostfwd=
            once per forward, e.g. hostfwd=tcp::2222-:22,hostfwd=udp::5353-:53.
  vde       vnl=VNL
            A port on a vde_switch (UML >= 6.12's vector form of ethN=vde). VNL is libvdeplug4's
            locator: vde:///DIR or a plain DIR (the switch's directory, holding DIR/ctl), or
            vde:// or empty (libvdeplug's default switch: /var/run/vde.ctl, then /tmp/vde.ctl).
            We speak vde_switch's protocol ourselves (every frame one datagram, multi-packet);
            libvdeplug's other modules (tap://, slirp://, vxvde://, cmd://, ...) and its
            [options] are refused: use transport=tap or user, or ethN=vde for PORT/GROUP/MODE.

legacy transports:
  ethN=tuntap,IFNAME,MAC,GATE_IP          an existing tap IFNAME (required: the setuid uml_net
                                          helper that made one is obsolete)
  ethN=mcast,MAC,GROUP,PORT,TTL           UDP multicast; defaults 239.192.168.1, 1102, 1
  ethN=ucast,MAC,REMOTE_IP,LPORT,RPORT    UDP point to point; REMOTE_IP required; ports 1102
  ethN=pcap,IFNAME,FILTER,OPT,OPT,MAC     receive only, through a pcap filter expression (no
                                          commas in it); OPT: promisc|nopromisc,
                                          optimize|nooptimize (defaults promisc, nooptimize)
  ethN=daemon,MAC,unix,CTL_PATH           a port on uml_switch; CTL_PATH default /tmp/uml.ctl
  ethN=vde,SWITCH,MAC,PORT,GROUP,MODE,DESCR  a port on vde_switch; MODE in octal

EXAMPLES
  vec0:transport=raw,ifname=veth0,gro=1,depth=128
  vec0:transport=tap,ifname=tap0,mac=02:00:00:00:00:01
  vec0:transport=gre,src=192.0.2.1,dst=192.0.2.2,rx_key=0x1,tx_key=0x1,sequence=1
  vec0:transport=l2tpv3,udp=1,src=192.0.2.1,srcport=1701,dst=192.0.2.2,dstport=1701,rx_session=0xffffffff,tx_session=0xffffffff
  vec0:transport=user,hostfwd=tcp::8080-:80
  user,hostfwd=tcp:127.0.0.1:2222-10.0.2.15:22,restrict=1
  eth0=mcast,,239.192.168.1,1102,1
  vec0:transport=vde,vnl=vde:///tmp/switch
  eth0=daemon,,unix,/tmp/uml.ctl
";
