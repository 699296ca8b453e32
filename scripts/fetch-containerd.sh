#!/bin/sh
# Fetches Debian's containerd packages of newer suites (1.7 from trixie, 2.1 from sid) and
# unpacks them into $1 (a build dir) as $1/<upstream version>/usr/bin/{containerd,ctr},
# without changing which suite the host installs anything from: a private sources list and
# private apt list/cache dirs are used, and nothing is installed. The .deb files are kept in
# a cache outside the clone ($CONTRAST_CACHE, default /var/cache/contrast), keyed by their
# Debian version, so a clean clone on the same machine does not download them again.
# Prints one line per version: "<upstream version> <dir>".
set -eu
OUT=${1:?usage: fetch-containerd.sh <out-dir> [upstream-version ...]}
shift
# The tested versions (README): 1.6 is the host's own (bookworm), these two come from here.
[ $# -gt 0 ] || set -- 1.7.24 2.1.9
. "$(dirname "$0")/apt-private.sh"
mkdir -p "$OUT"

for want in "$@"; do
    dest="$OUT/$want"
    if [ -x "$dest/usr/bin/containerd" ] && [ -f "$dest/.unpacked" ]; then
        echo "$want $dest"
        continue
    fi
    deb=$(ls "$DEBS"/containerd_"$want"[~+]*.deb 2>/dev/null | head -1 || true)
    if [ -z "$deb" ]; then
        apt_private_update
        version=$(apt_private apt-cache madison containerd | awk -v w="$want" \
            '{ v=$3; if (index(v, w "~") == 1 || index(v, w "+") == 1) { print v; exit } }')
        [ -n "$version" ] || { echo "fetch-containerd: containerd $want is in neither trixie nor sid" >&2; exit 1; }
        echo "fetch-containerd: downloading containerd=$version" >&2
        ( cd "$DEBS" && apt_private apt-get -qq download "containerd=$version" >&2 )
        deb=$(ls "$DEBS"/containerd_"$want"[~+]*.deb | head -1)
    fi
    rm -rf "$dest" && mkdir -p "$dest"
    dpkg -x "$deb" "$dest"
    "$dest/usr/bin/containerd" --version >/dev/null \
        || { echo "fetch-containerd: $dest/usr/bin/containerd does not run here" >&2; exit 1; }
    touch "$dest/.unpacked"
    echo "$want $dest"
done
