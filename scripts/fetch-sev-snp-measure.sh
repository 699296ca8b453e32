#!/bin/sh
# Fetches sev-snp-measure (PyPI), the independent SEV-SNP launch digest calculator our own
# measurements are checked against, and unpacks the wheel into $1 (run it with
# `PYTHONPATH=$1 python3 -m sevsnpmeasure.cli`; the digest path needs no other package).
# The wheel is pinned by version and SHA-256 and cached outside the clone.
set -eu
OUT=${1:?usage: fetch-sev-snp-measure.sh <out-dir>}
VERSION=0.0.13
WHEEL=sev_snp_measure-$VERSION-py3-none-any.whl
SHA256=feda1aebe69dcbf38e9c636ed1d082bb7dc741fc6969f197d39faddb72b2762d
[ -f "$OUT/.unpacked-$VERSION" ] && exit 0
CACHE=${CONTRAST_CACHE:-/var/cache/contrast}/pypi
mkdir -p "$CACHE"
if [ ! -f "$CACHE/$WHEEL" ]; then
    echo "fetch-sev-snp-measure: pip download sev-snp-measure==$VERSION" >&2
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$CACHE" "sev-snp-measure==$VERSION" >&2
fi
echo "$SHA256  $CACHE/$WHEEL" | sha256sum -c --quiet - \
    || { echo "fetch-sev-snp-measure: $WHEEL does not have the pinned SHA-256" >&2; exit 1; }
rm -rf "$OUT" && mkdir -p "$OUT"
python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$CACHE/$WHEEL" "$OUT"
touch "$OUT/.unpacked-$VERSION"
