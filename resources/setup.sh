#!/usr/bin/env bash
# Installs the Debian packages the tests and guests need and builds the guest images into
# resources/out/. Idempotent: a second run only checks.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
pkgs=(busybox-static iperf3 tshark uml-utilities vde2 tcpdump socat kmod
      iproute2 iputils-ping binutils cpio qemu-system-x86 qemu-utils libpcap-dev ethtool
      libslirp-dev libglib2.0-dev pkg-config dpdk-dev)
# libslirp-dev (with libglib2.0-dev, which its pkg-config file names, and pkg-config) is what
# the libslirp-sys crate links `transport=user` against. dpdk-dev brings dpdk-testpmd: a real
# multi-queue vhost-user frontend for the tests, and the packet-rate benchmark's anchor.
# apt_install PKG...: installs those of the Debian packages that are missing.
apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "setup: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}
apt_install "${pkgs[@]}"
# A package the first pass installs can remove one it found present: Debian 12's
# qemu-system-x86 takes away a newer qemu-utils from backports (seen on this project's
# machines), and qemu-img with it. A second pass puts back what went.
apt_install "${pkgs[@]}"
for cmd in qemu-img qemu-system-x86_64 dpdk-testpmd tshark iperf3 vde_switch; do
    command -v "$cmd" >/dev/null || { echo "setup: $cmd is missing after installing" >&2; exit 1; }
done
# virtiofsd (the Rust one) serves --share and `vmm run`: built from crates.io, once.
if ! command -v virtiofsd >/dev/null && [ ! -x "${HOME:-/root}/.cargo/bin/virtiofsd" ]; then
    apt_install libseccomp-dev libcap-ng-dev pkg-config
    echo "setup: building virtiofsd (cargo install virtiofsd, a few minutes)"
    cargo install --locked virtiofsd
fi
# The guest images, in name order: linux-guest.sh builds the PVM test kernel (cached, ~7 min
# cold), sandbox.sh the desktop sandbox's Debian image with mmdebstrap (cached, ~2 min cold),
# uml-guest.sh the UML guests' kernel (cached, ~2.5 min cold) and initramfs.
for script in "$here"/images/*.sh; do
    [ -e "$script" ] || continue
    bash "$script"
done
