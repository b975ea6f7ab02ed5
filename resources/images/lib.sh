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

# add_modules ROOT MODULE_PATH...: copies the modules and lists them in /etc/modules for
# /init to insmod, dependencies first (from each module's own `depends=` field, as depmod
# would; a dependency outside the list must be built in).
add_modules() {
    local root="$1"; shift
    local -A deps=()
    local m name pending placed=" "
    for m in "$@"; do
        cp "$m" "$root/lib/modules/"
        name="$(basename "$m" .ko)"
        deps[$name]="$(strings -a "$m" | sed -n 's/^depends=//p' | tr ',' ' ')"
    done
    pending="${!deps[*]}"
    while [ -n "${pending// /}" ]; do
        local next="" progress=0
        for name in $pending; do
            local ready=1 d
            for d in ${deps[$name]}; do
                [ -n "${deps[$d]+x}" ] && [[ "$placed" != *" $d "* ]] && ready=0
            done
            if [ $ready = 1 ]; then
                echo "$name" >> "$root/etc/modules"
                placed="$placed$name "
                progress=1
            else
                next="$next $name"
            fi
        done
        [ $progress = 1 ] || { echo "add_modules: dependency cycle in:$next" >&2; return 1; }
        pending="$next"
    done
}

# pack ROOT IMG: a gzipped newc cpio, written atomically.
pack() {
    mkdir -p "$(dirname "$2")"
    (cd "$1" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 > "$2.tmp"
    mv "$2.tmp" "$2"
}
