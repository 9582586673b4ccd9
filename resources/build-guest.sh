#!/usr/bin/env bash
# Builds the default rxvmm test guest:
#   - bzImage:    the newest Debian 12 cloud kernel (linux-image-*-cloud-amd64)
#   - initrd.img: a gzip'd newc cpio with static busybox, the virtio modules of
#                 that kernel and our /init (resources/guest/init) plus the run
#                 scripts (resources/guest/run/*, selected with rxvmm.run=<name>).
#
# Everything is cached in resources/cache/ (git-ignored). Re-running is cheap:
# nothing is downloaded again and the outputs are rebuilt only when an input
# (this script, resources/guest/, the .deb files) changed. Safe to run
# concurrently (flock). Progress goes to stderr; the last (only) stdout line is
#   <abs path of bzImage> <abs path of initrd.img>
#
# Environment:
#   RXVMM_GUEST_DIR      output dir (default resources/cache/guest; relative
#                        paths are relative to the repo root)
#   RXVMM_GUEST_REFRESH  if set, resolve the newest kernel package again; by
#                        default the one picked by the first run is kept so
#                        cached runs stay fast, offline and reproducible.
set -euo pipefail

SCRIPT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
REPO=$(cd "$(dirname "$SCRIPT")/.." && pwd)
CACHE=$REPO/resources/cache
GUEST_SRC=$REPO/resources/guest
OUT=${RXVMM_GUEST_DIR:-resources/cache/guest}
case $OUT in /*) ;; *) OUT=$REPO/$OUT ;; esac

# The metapackage that points at the newest versioned cloud kernel.
KERNEL_META=linux-image-cloud-amd64
# Modules the guest needs for virtio (names with '_'). Their dependency closure
# is added from modules.dep; built-in ones are skipped. A leading '?' marks
# modules that only some kernel versions have.
MODULES="virtio virtio_ring virtio_mmio virtio_pci ?virtio_pci_modern_dev
  ?virtio_pci_legacy_dev virtio_blk virtio_net ?net_failover ?failover
  virtio_console virtio_rng ?rng_core vmw_vsock_virtio_transport
  ?vmw_vsock_virtio_transport_common ?vsock pvpanic_mmio"

export LC_ALL=C
export PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin  # depmod lives in sbin

log() { echo "build-guest: $*" >&2; }
die() { log "error: $*"; exit 1; }

mkdir -p "$CACHE/debs" "$CACHE/extract" "$OUT"
# One build at a time: tests in several binaries may call us concurrently.
exec 9>"$CACHE/build-guest.lock"
flock 9

rm -rf "$CACHE"/tmp.*  # left by a killed run (we hold the lock)
TMP=$(mktemp -d "$CACHE/tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# --- apt helpers -------------------------------------------------------------

APT_UPDATED=0
# apt-get update, but at most once per run and only when something failed for
# lack of package lists.
apt_update_once() {
    [ "$APT_UPDATED" = 0 ] || return 1
    APT_UPDATED=1
    log "refreshing package lists (apt-get update)"
    apt-get update -qq >&2
}

# Runs "$@"; if it fails, refreshes the package lists once and retries.
with_apt_retry() {
    "$@" && return 0
    apt_update_once || return 1
    "$@"
}

# need <command> <package>: installs <package> if <command> is missing.
need() {
    command -v "$1" >/dev/null && return 0
    log "installing $2 (for $1)"
    with_apt_retry env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$2" >&2 ||
        die "cannot install $2 (run as root, or install it by hand)"
    command -v "$1" >/dev/null || die "$2 installed but $1 still not found"
}

# fetch_deb <package>: prints the path of the cached .deb, downloading it once.
fetch_deb() {
    local pkg=$1 deb
    deb=$(find "$CACHE/debs" -maxdepth 1 -name "${pkg}_*.deb" | sort -V | tail -n1)
    if [ -z "$deb" ]; then
        log "downloading $pkg"
        mkdir -p "$TMP/dl" && rm -f "$TMP/dl"/*
        # Download into a temp dir so an interrupted download is never cached.
        # (Sandbox::User=root: _apt cannot write into our cache dir.)
        (cd "$TMP/dl" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2) ||
            { apt_update_once && (cd "$TMP/dl" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2); } ||
            die "cannot download $pkg"
        deb=$(ls "$TMP/dl"/*.deb)
        mv "$deb" "$CACHE/debs/"
        deb=$CACHE/debs/$(basename "$deb")
    fi
    echo "$deb"
}

# extract <deb>: prints the dir the .deb is extracted to (once, atomically).
extract() {
    local dir
    dir=$CACHE/extract/$(basename "$1" .deb)
    if [ ! -e "$dir/.extracted" ]; then
        log "extracting $(basename "$1")"
        rm -rf "$dir" "$dir.tmp"
        mkdir -p "$dir.tmp"
        dpkg-deb -x "$1" "$dir.tmp"
        touch "$dir.tmp/.extracted"
        mv "$dir.tmp" "$dir"
    fi
    echo "$dir"
}

# Prints the versioned package the kernel metapackage depends on, e.g.
# linux-image-6.1.0-56-cloud-amd64 (the signed image: not -dbg/-unsigned).
newest_kernel_pkg() {
    {
        apt-cache depends "$KERNEL_META" 2>/dev/null |
            sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' || true
        # Fallback if the metapackage is missing: highest versioned name.
        apt-cache search --names-only '^linux-image-[0-9].*-cloud-amd64$' 2>/dev/null |
            awk '{print $1}' | sort -V | tail -n1 || true
    } | sed -n 1p
}

resolve_kernel_pkg() {
    local pin=$CACHE/debs/kernel-package pkg=
    if [ -z "${RXVMM_GUEST_REFRESH:-}" ] && [ -s "$pin" ]; then
        cat "$pin"
        return
    fi
    pkg=$(newest_kernel_pkg)
    if [ -z "$pkg" ] && apt_update_once; then
        pkg=$(newest_kernel_pkg)
    fi
    [ -n "$pkg" ] || die "no $KERNEL_META package found by apt-cache"
    echo "$pkg" >"$pin"
    echo "$pkg"
}

# --- inputs ------------------------------------------------------------------

[ -f "$GUEST_SRC/init" ] || die "missing $GUEST_SRC/init"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found: this script needs Debian"

KERNEL_PKG=$(resolve_kernel_pkg)
KERNEL_DEB=$(fetch_deb "$KERNEL_PKG")
BUSYBOX_DEB=$(fetch_deb busybox-static)

# Stamp = hash of every input; the outputs are reused while it matches.
STAMP=$(
    {
        basename "$KERNEL_DEB"
        basename "$BUSYBOX_DEB"
        sha256sum "$SCRIPT" | cut -d' ' -f1
        cd "$GUEST_SRC"
        find . -printf '%p %y %m %l\n' | sort
        find . -type f -print0 | sort -z | xargs -0 sha256sum
    } | sha256sum | cut -d' ' -f1
)
if [ -f "$OUT/bzImage" ] && [ -f "$OUT/initrd.img" ] &&
    [ "$(cat "$OUT/.stamp" 2>/dev/null)" = "$STAMP" ]; then
    log "up to date ($(cat "$OUT/kernel.release"))"
    echo "$OUT/bzImage $OUT/initrd.img"
    exit 0
fi

# --- build -------------------------------------------------------------------

need cpio cpio
need depmod kmod  # the kernel .deb ships no modules.dep (postinst runs depmod)

KX=$(extract "$KERNEL_DEB")
BX=$(extract "$BUSYBOX_DEB")

vmlinuz=$(ls "$KX"/boot/vmlinuz-*)
[ "$(echo "$vmlinuz" | wc -l)" = 1 ] || die "expected one vmlinuz in $KERNEL_DEB"
RELEASE=${vmlinuz##*/vmlinuz-}
# Debian 12 packages use /lib/modules; merged-/usr ones /usr/lib/modules.
if [ -d "$KX/lib/modules/$RELEASE" ]; then MODBASE=$KX; else MODBASE=$KX/usr; fi
MODDIR=$MODBASE/lib/modules/$RELEASE
[ -d "$MODDIR" ] || die "no modules for $RELEASE in $KERNEL_DEB"
if [ ! -s "$MODDIR/modules.dep" ]; then
    log "generating modules.dep"
    depmod -b "$MODBASE" "$RELEASE"
fi
log "kernel $RELEASE from $(basename "$KERNEL_DEB")"

R=$TMP/root
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,etc/rxvmm/run,root,mnt}
chmod 1777 "$R/tmp"
chmod 700 "$R/root"

# busybox + a symlink per applet, at the path busybox itself suggests.
install -m 755 "$BX/bin/busybox" "$R/bin/busybox"
"$R/bin/busybox" --list-full | while read -r applet; do
    case $applet in linuxrc | bin/busybox) continue ;; esac
    mkdir -p "$R/$(dirname "$applet")"
    [ -e "$R/$applet" ] || ln -s /bin/busybox "$R/$applet"
done
[ -L "$R/bin/sh" ] || die "busybox has no sh applet"

install -m 755 "$GUEST_SRC/init" "$R/init"
if [ -d "$GUEST_SRC/run" ]; then
    for f in "$GUEST_SRC"/run/*; do
        [ -f "$f" ] && install -m 755 "$f" "$R/etc/rxvmm/run/"
    done
fi

# Modules: dependency closure from modules.dep, in load order (a dependency
# always before its users), skipping built-in ones.
ORDER=$(awk -v want="$MODULES" '
    function norm(p) { sub(/.*\//, "", p); sub(/\.ko(\.(xz|zst|gz))?$/, "", p); gsub(/-/, "_", p); return p }
    function visit(n,    d, k, m) {
        if (n in seen) return
        seen[n] = 1
        m = split(deps[n], d, " ")
        for (k = m; k >= 1; k--) visit(d[k])  # modprobe loads them right to left
        print path[n]
    }
    FNR == 1 { file++ }
    file == 1 { builtin[norm($1)] = 1; next }
    file == 2 {
        p = $1; sub(/:$/, "", p); n = norm(p); path[n] = p; deps[n] = ""
        for (i = 2; i <= NF; i++) deps[n] = deps[n] " " norm($i)
    }
    END {
        m = split(want, w, " ")
        for (i = 1; i <= m; i++) {
            n = w[i]; optional = sub(/^\?/, "", n)
            if (n in builtin) { print "build-guest: " n " is built in" > "/dev/stderr"; continue }
            if (!(n in path)) {
                if (optional) continue
                print "build-guest: error: kernel has no module " n > "/dev/stderr"; exit 1
            }
            visit(n)
        }
    }' "$MODDIR/modules.builtin" "$MODDIR/modules.dep")

GMOD=$R/lib/modules/$RELEASE
mkdir -p "$GMOD"
: >"$GMOD/load-order"
for rel in $ORDER; do
    src=$MODDIR/$rel
    ko=$(basename "$rel")
    # busybox insmod cannot be trusted with compressed modules: store plain .ko.
    case $ko in
    *.ko.xz) need xz xz-utils; ko=${ko%.xz}; xz -dc "$src" >"$GMOD/$ko" ;;
    *.ko.zst) need zstd zstd; ko=${ko%.zst}; zstd -qdc "$src" >"$GMOD/$ko" ;;
    *.ko.gz) ko=${ko%.gz}; gzip -dc "$src" >"$GMOD/$ko" ;;
    *.ko) cp "$src" "$GMOD/$ko" ;;
    *) die "unexpected module file $rel" ;;
    esac
    echo "$ko" >>"$GMOD/load-order"
done
log "modules: $(tr '\n' ' ' <"$GMOD/load-order")"

# The kernel opens /dev/console before running /init, so the archive needs that
# node. mknod would need privileges, so the entry is written by hand as a second
# newc archive (the kernel unpacks concatenated archives).
newc() { # newc <name> <mode> <rdevmajor> <rdevminor>
    local namesize=$((${#1} + 1))
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
        0x7f00 "$2" 0 0 1 0 0 0 0 "$3" "$4" "$namesize" 0
    printf '%s\0' "$1"
    head -c $(((4 - (110 + namesize) % 4) % 4)) /dev/zero
}

find "$R" -exec touch -h -d @0 {} +  # fixed mtimes: same inputs, same bytes
{
    (cd "$R" && find . -mindepth 1 -printf '%P\n' | sort |
        cpio -o -H newc -R 0:0 --reproducible --quiet)
    newc dev/console $((0020600)) 5 1
    newc 'TRAILER!!!' 0 0 0
} | gzip -9 -n >"$TMP/initrd.img"

cp "$vmlinuz" "$TMP/bzImage"
echo "$RELEASE" >"$TMP/kernel.release"
cp "$MODDIR/modules.builtin" "$TMP/modules.builtin"
# Publish with renames so readers never see half-written files.
rm -f "$OUT/.stamp"
for f in bzImage initrd.img kernel.release modules.builtin; do
    mv -f "$TMP/$f" "$OUT/$f"
done
echo "$STAMP" >"$OUT/.stamp"

log "built $OUT (initrd $(stat -c %s "$OUT/initrd.img") bytes)"
echo "$OUT/bzImage $OUT/initrd.img"
