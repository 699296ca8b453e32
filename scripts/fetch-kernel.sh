#!/bin/sh
# Downloads and unpacks the Debian cloud kernel for the pod VM into $1 (a build dir).
# The versioned package name is resolved from the linux-image-cloud-amd64 metapackage
# (bookworm-backports, Linux 6.12), never hard-coded. Prints the unpacked tree's path.
set -eu
OUT=${1:?usage: fetch-kernel.sh <out-dir>}
SUITE=${KERNEL_SUITE:-bookworm-backports}
mkdir -p "$OUT"
resolve() {
    apt-cache depends -t "$SUITE" linux-image-cloud-amd64 2>/dev/null \
        | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}
PKG=$(resolve)
if [ -z "$PKG" ]; then
    # Package lists may predate the backports entry: refresh once.
    apt-get update -qq >&2
    PKG=$(resolve)
fi
[ -n "$PKG" ] || { echo "fetch-kernel: cannot resolve linux-image-cloud-amd64 in $SUITE (apt-get update?)" >&2; exit 1; }
VERSION=$(apt-cache policy -t "$SUITE" "$PKG" | awk '/Candidate:/ {print $2}')
TREE="$OUT/$PKG"
if [ ! -f "$TREE/.unpacked" ]; then
    rm -rf "$TREE" && mkdir -p "$TREE"
    ( cd "$OUT" && apt-get download -qq -t "$SUITE" "$PKG" >&2 )
    dpkg -x "$OUT/${PKG}_"*.deb "$TREE"
    echo "$PKG $VERSION" > "$TREE/.package"
    touch "$TREE/.unpacked"
fi
echo "$TREE"
