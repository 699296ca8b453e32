#!/bin/sh
# Builds the pod VM's own kernel from Debian's kernel source package (linux-source-6.12,
# bookworm-backports): `make tinyconfig` + packaging/kernel/pod-vm.config, everything built in
# (CONFIG_MODULES=n). The result is cached under /var/cache/contrast/kernel/<key>, where <key>
# is the SHA-256 of package name, version, the fragment and this script, in the shape of an
# unpacked Debian linux-image package (boot/vmlinuz-<release>, boot/config-<release>,
# boot/System.map-<release>, lib/modules/<release>/modules.builtin[.modinfo], .package).
# $1 (a build dir) gets a symlink linux-image-<release> to that tree. Prints the tree's path
# as the only line on stdout; everything else goes to stderr.
#
# The package name is linux-source-6.12 itself, not the `linux-source` metapackage: the
# fragment is written and checked against one kernel series (as is the Debian cloud kernel we
# compare with), and the metapackage would move to the next series without anyone noticing.
# When backports' metapackage points elsewhere, this script says so.
#
# Needs: apt (an index with KERNEL_SUITE), dpkg-deb, xz-utils, tar, build-essential, bc,
# bison, flex, libelf-dev (objtool), zstd (KERNEL_ZSTD), perl.
set -eu
OUT=${1:?usage: build-kernel.sh <out-dir>}
SUITE=${KERNEL_SUITE:-bookworm-backports}
PKG=linux-source-6.12
SELF=$(readlink -f "$0")
FRAGMENT=${KERNEL_FRAGMENT:-$(dirname "$SELF")/../packaging/kernel/pod-vm.config}
CACHE=/var/cache/contrast/kernel
DEBS=/var/cache/contrast/debs

log() { echo "build-kernel: $*" >&2; }
die() { log "$*"; exit 1; }

[ -f "$FRAGMENT" ] || die "no config fragment at $FRAGMENT"
FRAGMENT=$(readlink -f "$FRAGMENT")

missing=""
for tool in apt-cache apt-get dpkg-deb xz tar make gcc bc bison flex zstd perl sha256sum; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
[ -f /usr/include/gelf.h ] || missing="$missing libelf-dev"
[ -z "$missing" ] || die "missing build tools:$missing (apt-get install bc bison flex libelf-dev zstd xz-utils build-essential)"

# --- which source package -------------------------------------------------------------------
# The newest version of $PKG in $SUITE exactly (apt-cache madison lists newest first), so a
# newer build in another suite (bookworm-security carries linux-6.12 too) is not picked up.
resolve_version() {
    apt-cache madison "$PKG" 2>/dev/null | awk -F'|' -v suite=" $SUITE/" \
        'index($3, suite) { gsub(/ /, "", $2); print $2; exit }'
}
VERSION=$(resolve_version)
if [ -z "$VERSION" ]; then
    # Package lists may predate the backports entry: refresh once.
    apt-get update -qq >&2
    VERSION=$(resolve_version)
fi
[ -n "$VERSION" ] || die "$PKG is not in $SUITE (is $SUITE in the apt sources? run scripts/install-deps.sh)"
META=$(apt-cache depends -t "$SUITE" linux-source 2>/dev/null | awk '/Depends: linux-source-/ {print $2; exit}')
if [ -n "$META" ] && [ "$META" != "$PKG" ]; then
    log "note: $SUITE's linux-source now points at $META; building $PKG as configured"
fi

KEY=$({ printf '%s\n%s\n' "$PKG" "$VERSION"; cat "$FRAGMENT" "$SELF"; } | sha256sum | cut -c1-64)
TREE=$CACHE/$KEY

link_and_print() {
    release=$(cat "$TREE/.release")
    mkdir -p "$OUT"
    ln -sfn "$TREE" "$OUT/linux-image-$release"
    echo "$TREE"
}

if [ -f "$TREE/.built" ]; then
    log "cached: $PKG $VERSION, key $KEY"
    link_and_print
    exit 0
fi

# --- the .deb, kept in $DEBS and checked against the package index --------------------------
mkdir -p "$DEBS" "$CACHE"
DEB=$DEBS/${PKG}_$(echo "$VERSION" | sed 's/^[0-9]*://')_all.deb
WANT_SHA=$(apt-cache show "$PKG=$VERSION" | awk '/^SHA256:/ {print $2; exit}')
[ -n "$WANT_SHA" ] || die "no SHA256 for $PKG $VERSION in the package index"
if [ ! -f "$DEB" ] || [ "$(sha256sum < "$DEB" | cut -c1-64)" != "$WANT_SHA" ]; then
    log "downloading $PKG $VERSION"
    DL=$(mktemp -d "$DEBS/.download.XXXXXX")
    ( cd "$DL" && apt-get download -qq "$PKG=$VERSION" >&2 ) || { rm -rf "$DL"; die "apt-get download $PKG=$VERSION failed"; }
    mv -f "$DL"/*.deb "$DEB"
    rm -rf "$DL"
    [ "$(sha256sum < "$DEB" | cut -c1-64)" = "$WANT_SHA" ] || die "$DEB does not match the package index"
fi

# --- scratch build dir, removed whatever happens ---------------------------------------------
BUILD=$(mktemp -d "$CACHE/.build-$(echo "$KEY" | cut -c1-12).XXXXXX")
STAGE=""
cleanup() {
    rm -rf "$BUILD"
    [ -z "$STAGE" ] || rm -rf "$STAGE"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# Configuration output (noisy) goes to a log, kept when something fails.
LOG=$CACHE/$KEY.log
: > "$LOG"
fail() {
    log "$1; last lines of $LOG:"
    tail -n 30 "$LOG" >&2
    exit 1
}

START=$(date +%s)
log "unpacking $PKG $VERSION into $BUILD"
TARBALL=$(dpkg-deb -c "$DEB" | awk '{print $NF}' | grep '^\./usr/src/linux-source-.*\.tar\.xz$' | head -n 1)
[ -n "$TARBALL" ] || die "no linux-source-*.tar.xz in $DEB"
dpkg-deb --fsys-tarfile "$DEB" | tar -xOf - "$TARBALL" | xz -dc | tar -x -C "$BUILD"
SRC=$(find "$BUILD" -mindepth 1 -maxdepth 1 -type d | head -n 1)
[ -f "$SRC/Makefile" ] || die "no kernel tree in $TARBALL"

# Build identity: no host name, user or wall-clock time in `uname -v`; the date of the
# package's changelog entry instead.
STAMP=$(dpkg-deb --fsys-tarfile "$DEB" | tar -xOf - "./usr/share/doc/$PKG/changelog.Debian.gz" 2>/dev/null \
    | gzip -dc | sed -n 's/^ -- .*>  //p' | head -n 1)
export KBUILD_BUILD_USER=contrast KBUILD_BUILD_HOST=contrast KBUILD_BUILD_VERSION=1
[ -z "$STAMP" ] || export KBUILD_BUILD_TIMESTAMP="$STAMP"
# LOCALVERSION set (empty) on the command line: no "+" appended; the suffix is the fragment's.
kmake() { make -C "$SRC" LOCALVERSION= "$@" >>"$LOG" 2>&1; }

log "configuring: tinyconfig + $(basename "$FRAGMENT")"
kmake tinyconfig || fail "make tinyconfig failed"
( cd "$SRC" && scripts/kconfig/merge_config.sh -m .config "$FRAGMENT" ) >>"$LOG" 2>&1 || fail "merge_config.sh failed"
kmake olddefconfig || fail "make olddefconfig failed"

# Kconfig silently drops what has unmet dependencies: every line of the fragment must hold.
if ! awk '
    FNR == NR {
        if (match($0, /^CONFIG_[A-Za-z0-9_]+=/)) { k = substr($0, 1, RLENGTH - 1); want[k] = substr($0, RLENGTH + 1); order[++n] = k }
        else if ($0 ~ /^# CONFIG_[A-Za-z0-9_]+ is not set$/) { want[$2] = "n"; order[++n] = $2 }
        next
    }
    match($0, /^CONFIG_[A-Za-z0-9_]+=/) { have[substr($0, 1, RLENGTH - 1)] = substr($0, RLENGTH + 1); next }
    $0 ~ /^# CONFIG_[A-Za-z0-9_]+ is not set$/ { have[$2] = "n" }
    END {
        bad = 0
        for (i = 1; i <= n; i++) {
            k = order[i]
            got = (k in have) ? have[k] : "n"
            if (got != want[k]) {
                printf "build-kernel: %s: fragment wants %s, .config has %s\n", k, want[k],
                    (k in have) ? have[k] : "nothing (dependencies unmet)" > "/dev/stderr"
                bad++
            }
        }
        exit bad > 0
    }' "$FRAGMENT" "$SRC/.config"; then
    die "options of $(basename "$FRAGMENT") did not stick (see above): add their dependencies to the fragment"
fi
log "configuration holds; building with $(nproc) jobs"

# Compiler warnings and errors straight to stderr; no per-file lines.
make -s -C "$SRC" LOCALVERSION= -j"$(nproc)" bzImage >&2 || die "make bzImage failed"
BUILT=$(date +%s)
log "build took $((BUILT - START)) s (unpack + configure + compile)"
# Written by the build from CONFIG_LOCALVERSION (auto.conf exists only once the build ran).
RELEASE=$(cat "$SRC/include/config/kernel.release")
case $RELEASE in *-contrast-pod) ;; *) die "unexpected kernel release $RELEASE";; esac

# modules.builtin(.modinfo) come from vmlinux.o even without CONFIG_MODULES (scripts/
# Makefile.vmlinux_o); made explicitly should the bzImage target ever stop implying them.
[ -f "$SRC/modules.builtin" ] || make -s -C "$SRC" LOCALVERSION= modules.builtin >&2 || die "make modules.builtin failed"

# --- install: stage next to the cache entry, then one rename ---------------------------------
STAGE=$(mktemp -d "$CACHE/.tree-$(echo "$KEY" | cut -c1-12).XXXXXX")
mkdir -p "$STAGE/boot" "$STAGE/lib/modules/$RELEASE"
cp "$SRC/arch/x86/boot/bzImage" "$STAGE/boot/vmlinuz-$RELEASE"
cp "$SRC/.config" "$STAGE/boot/config-$RELEASE"
cp "$SRC/System.map" "$STAGE/boot/System.map-$RELEASE"
for f in modules.builtin modules.builtin.modinfo; do
    if [ -f "$SRC/$f" ]; then
        cp "$SRC/$f" "$STAGE/lib/modules/$RELEASE/$f"
    else
        log "note: the build made no $f"
    fi
done
echo "$PKG $VERSION (contrast pod-vm config $(echo "$KEY" | cut -c1-12))" > "$STAGE/.package"
echo "$RELEASE" > "$STAGE/.release"
touch "$STAGE/.built"
chmod 755 "$STAGE"
if ! mv -T "$STAGE" "$TREE" 2>/dev/null; then
    # Another build of the same key finished first (same inputs, same kernel) or a stale,
    # unfinished directory is in the way.
    if [ -f "$TREE/.built" ]; then
        log "another build installed $TREE first; keeping it"
    else
        rm -rf "$TREE"
        mv -T "$STAGE" "$TREE"
    fi
fi
STAGE=""
rm -f "$LOG"
log "$RELEASE: bzImage $(wc -c < "$TREE/boot/vmlinuz-$RELEASE") bytes, vmlinux $(wc -c < "$SRC/vmlinux") bytes"
link_and_print
