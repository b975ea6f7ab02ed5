# Shared by the guest image recipes (sourced, not run).

# is_stale IMG INPUT...: true when IMG is missing or older than an input.
is_stale() {
    local img="$1"; shift
    [ -f "$img" ] || return 0
    local f
    for f in "$@"; do [ "$f" -nt "$img" ] && return 0; done
    return 1
}

# make_root ROOT: busybox-static (one link per applet), iperf3 with its shared libraries,
# resources/guest/init as /init.
make_root() {
    local root="$1" here
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,host,lib/modules,usr/bin,run}
    cp /bin/busybox "$root/bin/busybox"
    # `busybox --list` also names busybox itself, which must stay a file.
    local applet
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] && continue
        ln -sf busybox "$root/bin/$applet"
    done
    cp /usr/bin/iperf3 "$root/usr/bin/iperf3"
    local lib
    for lib in $(ldd /usr/bin/iperf3 | grep -oE '/[^ ]+'); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
    install -m 0755 "$here/guest/init" "$root/init"
    echo "root:x:0:0:root:/:/bin/sh" > "$root/etc/passwd"
    echo "127.0.0.1 localhost" > "$root/etc/hosts"
}

# add_modules ROOT MODULE_PATH...: copies the modules and lists them, in the order given, in
# /etc/modules for /init to insmod.
add_modules() {
    local root="$1"; shift
    local m
    for m in "$@"; do
        cp "$m" "$root/lib/modules/"
        basename "$m" .ko >> "$root/etc/modules"
    done
}

# pack ROOT IMG: a gzipped newc cpio, written atomically.
pack() {
    mkdir -p "$(dirname "$2")"
    (cd "$1" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 > "$2.tmp"
    mv "$2.tmp" "$2"
}
