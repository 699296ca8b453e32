#!/bin/sh
# Fetches the confidential-VM firmware Debian ships in architecture-independent packages of
# a newer suite — `ovmf-amdsev` (OVMF.amdsev.fd: OVMF for SEV-SNP with the kernel-hashes
# table) and `ovmf-inteltdx` (OVMF.inteltdx.ms.fd: TDVF) — and unpacks the images into $1 as
# $1/OVMF.amdsev.fd and $1/OVMF.inteltdx.fd, plus $1/packages (name and Debian version of
# each). Nothing is installed on the host (scripts/apt-private.sh); the .deb files are cached
# outside the clone, so a clean clone on the same machine reuses them.
set -eu
OUT=${1:?usage: fetch-firmware.sh <out-dir>}
if [ -f "$OUT/.unpacked" ] && [ -f "$OUT/OVMF.amdsev.fd" ] && [ -f "$OUT/OVMF.inteltdx.fd" ]; then
    exit 0
fi
. "$(dirname "$0")/apt-private.sh"
mkdir -p "$OUT"
: > "$OUT/packages.tmp"
for spec in "ovmf-amdsev usr/share/ovmf/OVMF.amdsev.fd OVMF.amdsev.fd" \
            "ovmf-inteltdx usr/share/ovmf/OVMF.inteltdx.ms.fd OVMF.inteltdx.fd"; do
    set -- $spec
    pkg=$1 path=$2 name=$3
    deb=$(ls "$DEBS"/"$pkg"_*_all.deb 2>/dev/null | sort -V | tail -1 || true)
    if [ -z "$deb" ]; then
        apt_private_update
        echo "fetch-firmware: downloading $pkg" >&2
        ( cd "$DEBS" && apt_private apt-get -qq download "$pkg" >&2 )
        deb=$(ls "$DEBS"/"$pkg"_*_all.deb | sort -V | tail -1)
    fi
    tmp=$(mktemp -d)
    dpkg -x "$deb" "$tmp"
    [ -f "$tmp/$path" ] || { echo "fetch-firmware: $deb has no $path" >&2; rm -rf "$tmp"; exit 1; }
    cp "$tmp/$path" "$OUT/$name"
    rm -rf "$tmp"
    echo "$name $pkg $(dpkg-deb -f "$deb" Version)" >> "$OUT/packages.tmp"
done
mv "$OUT/packages.tmp" "$OUT/packages"
touch "$OUT/.unpacked"
