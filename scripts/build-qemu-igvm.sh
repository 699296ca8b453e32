#!/bin/sh
# Builds, once per machine, a QEMU that can boot IGVM files: QEMU 10.2 (Debian's source
# package; the first QEMU that loads a native IGVM VP context) for x86_64 system emulation
# only, linked with libigvm (the `igvm` crate's C API, packaging/libigvm). Debian ships no
# libigvm, so no Debian QEMU has `igvm-cfg`.
#
# Installs into $CONTRAST_CACHE/qemu-igvm/<key> (default /var/cache/contrast), never over
# Debian's QEMU; <key> hashes every input (this script, the libigvm lock file and cbindgen
# configs, the QEMU tarball's checksum), so a changed input builds anew and an unchanged one
# costs nothing. Prints the QEMU binary's path. ~15 min on 2 cores, once.
#
# Build dependencies (scripts/install-deps.sh installs them): meson >= 1.5 and python3-pycotap
# (bookworm-backports), ninja-build, python3-venv, libglib2.0-dev, libpixman-1-dev, cbindgen.
set -eu

QEMU_VERSION=10.2.2
QEMU_ORIG=qemu_${QEMU_VERSION}+ds.orig.tar.xz
QEMU_ORIG_SHA256=be05230fe47a6937cd29f28f562932c8125f9c93c2a82c625198f7a4aa601dfb

log() { echo "build-qemu-igvm: $*" >&2; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
LIBIGVM="$ROOT/packaging/libigvm"
CACHE=${CONTRAST_CACHE:-/var/cache/contrast}
export PATH="$HOME/.cargo/bin:$PATH"

key=$( { cat "$0" "$LIBIGVM/Cargo.toml" "$LIBIGVM/Cargo.lock" "$LIBIGVM"/cbindgen-*.toml
         echo "$QEMU_ORIG_SHA256"; } | sha256sum | cut -c1-16)
out="$CACHE/qemu-igvm/$key"
if [ -x "$out/bin/qemu-system-x86_64" ]; then
    echo "$out/bin/qemu-system-x86_64"
    exit 0
fi

mkdir -p "$CACHE/qemu-igvm" "$CACHE/src"
work=$(mktemp -d "$CACHE/qemu-igvm/build.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

# --- QEMU source: the upstream tarball of Debian's source package ------------------------
src="$CACHE/src/$QEMU_ORIG"
if ! echo "$QEMU_ORIG_SHA256  $src" | sha256sum -c --status 2>/dev/null; then
    MIRROR=$(awk '/^URIs:/ && $2 ~ /debian\/?$/ && $2 !~ /security/ {print $2; exit}' \
        /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
    log "downloading $QEMU_ORIG from $MIRROR"
    curl -fsSL -o "$src.part" "$MIRROR/pool/main/q/qemu/$QEMU_ORIG"
    echo "$QEMU_ORIG_SHA256  $src.part" | sha256sum -c --status || {
        log "$QEMU_ORIG: checksum mismatch"; exit 1; }
    mv "$src.part" "$src"
fi

# --- libigvm: static library, headers (cbindgen), pkg-config file ------------------------
prefix="$work/libigvm"
mkdir -p "$prefix/lib/pkgconfig" "$prefix/include/igvm"
log "building libigvm"
CARGO_TARGET_DIR="$work/cargo" cargo build --quiet --release --locked \
    --manifest-path "$LIBIGVM/Cargo.toml" -p igvm
cp "$work/cargo/release/libigvm.a" "$prefix/lib/"
igvm_version=$(awk '/^name = "igvm"$/ {getline; gsub(/[^0-9.]/, ""); print}' "$LIBIGVM/Cargo.lock")
registry=$(cargo metadata --quiet --locked --format-version 1 --manifest-path "$LIBIGVM/Cargo.toml" |
    python3 -c 'import json,sys,os; m=json.load(sys.stdin)
for p in m["packages"]:
    if p["name"] in ("igvm", "igvm_defs"): print(p["name"], os.path.dirname(p["manifest_path"]))')
igvm_src=$(echo "$registry" | awk '$1 == "igvm" {print $2}')
defs_src=$(echo "$registry" | awk '$1 == "igvm_defs" {print $2}')
cbindgen -q -c "$LIBIGVM/cbindgen-igvm.toml" "$igvm_src" -o "$prefix/include/igvm/igvm.h"
cbindgen -q -c "$LIBIGVM/cbindgen-igvm-defs.toml" "$defs_src" -o "$prefix/include/igvm/igvm_defs.h"
# Names cbindgen leaves bare, which C would see as globals clashing with other headers;
# QEMU's loader uses the IGVM_-prefixed ones.
sed -i -e 's/^\( *\)INVALID = 0/\1IGVM_INVALID = 0/' \
       -e 's/^\( *\)RESERVED_DO_NOT_USE = /\1IGVM_RESERVED_DO_NOT_USE = /' "$prefix/include/igvm/igvm_defs.h"
sed -i -e 's/^\( *\)HEADER_SECTION_/\1IGVM_HEADER_SECTION_/' "$prefix/include/igvm/igvm.h"
cat > "$prefix/lib/pkgconfig/igvm.pc" <<PC
prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: igvm
Description: IGVM file parser (the igvm crate's C API)
Version: $igvm_version
Libs: -L\${libdir} -ligvm -lpthread -ldl -lm -lgcc_s
Cflags: -I\${includedir}
PC

# --- QEMU: x86_64 system emulator, what a pod VM uses, nothing else ------------------------
log "building QEMU $QEMU_VERSION with IGVM (x86_64-softmmu; about 15 min on 2 cores)"
tar -C "$work" -xf "$src"
cd "$work/qemu-$QEMU_VERSION"
# Debian's "+ds" tarball drops the firmware blobs, which meson still lists whenever bzip2 is
# installed: stand empty ones in. None is installed (--disable-install-blobs); firmware and
# option ROMs come from Debian's packages through --firmwarepath.
for fd in $(sed -n "s/^ *'\\(edk2-[a-z0-9_-]*\\.fd\\)',$/\\1/p" pc-bios/meson.build); do
    [ -e "pc-bios/$fd.bz2" ] || bzip2 </dev/null >"pc-bios/$fd.bz2"
done
# Likewise the prebuilt device trees of other architectures (installed, empty, when no dtc).
for dtb in $(sed -n "s/^ *'\\([a-z0-9_-]*\\.dtb\\)',$/\\1/p" pc-bios/dtb/meson.build); do
    [ -e "pc-bios/dtb/$dtb" ] || : >"pc-bios/dtb/$dtb"
done
PKG_CONFIG_PATH="$prefix/lib/pkgconfig" ./configure --prefix="$out" --python=/usr/bin/python3 \
    --target-list=x86_64-softmmu --without-default-features --disable-download \
    --enable-igvm --enable-kvm --enable-tcg --enable-vhost-kernel --enable-vhost-net \
    --enable-vhost-user --enable-pixman --enable-attr --disable-install-blobs \
    --firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu \
    >"$work/configure.log" 2>&1 || { tail -40 "$work/configure.log" >&2; exit 1; }
grep -q "IGVM support *: *YES" "$work/configure.log" || {
    grep -i igvm "$work/configure.log" >&2; log "configure did not enable IGVM"; exit 1; }
make -j"$(nproc)" >"$work/make.log" 2>&1 || { tail -60 "$work/make.log" >&2; exit 1; }
make install DESTDIR="$work/stage" >/dev/null
"$work/stage$out/bin/qemu-system-x86_64" -object help | grep -q '^ *igvm-cfg$' || {
    log "the built QEMU lacks igvm-cfg"; exit 1; }
mv "$work/stage$out" "$out"
log "installed $out"
echo "$out/bin/qemu-system-x86_64"
