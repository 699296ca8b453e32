#!/bin/sh
# Installs every system package and tool the build and the tests need.
# Idempotent: each step checks first and does nothing when already satisfied.
# Runs as root on Debian bookworm (see ../shared/design/LAB.md of the team).
set -eu

VHOST_DEVICE_VSOCK_VERSION=0.3.0
VIRTIOFSD_VERSION=1.14.0

log() { echo "install-deps: $*" >&2; }

# --- bookworm-backports, reusing the configured Debian mirror -----------------
BACKPORTS=/etc/apt/sources.list.d/contrast-backports.sources
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    MIRROR=$(awk '/^URIs:/ && $2 ~ /debian\/?$/ && $2 !~ /security/ {print $2; exit}' \
        /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
    log "enabling bookworm-backports from $MIRROR"
    cat > "$BACKPORTS" <<SRC
Types: deb
URIs: $MIRROR
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    APT_UPDATED=0
else
    APT_UPDATED=1
fi

need_update() {
    if [ "$APT_UPDATED" = 0 ] || [ ! -e /var/lib/apt/lists/lock ] || \
       ! ls /var/lib/apt/lists/*bookworm-backports*Packages* >/dev/null 2>&1; then
        log "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
}

missing=""
for pkg in containerd runc busybox-static erofs-utils e2fsprogs xz-utils zstd \
           cryptsetup-bin libseccomp-dev libcap-ng-dev pkg-config musl-tools \
           protobuf-compiler fdisk containernetworking-plugins iproute2 \
           make gcc libc6-dev bc bison flex libelf-dev perl; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    need_update
    log "installing$missing"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

# QEMU 10 from backports (bookworm's own QEMU 7.2 lacks sev-snp-guest).
if ! qemu-system-x86_64 --version 2>/dev/null | grep -q 'version 10\.'; then
    need_update
    log "installing qemu-system-x86 from bookworm-backports"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports \
        qemu-system-x86 >/dev/null
fi

# --- Rust tools -----------------------------------------------------------------
export PATH="$HOME/.cargo/bin:$PATH"
if ! vhost-device-vsock --version 2>/dev/null | grep -q "$VHOST_DEVICE_VSOCK_VERSION"; then
    log "cargo install vhost-device-vsock $VHOST_DEVICE_VSOCK_VERSION"
    cargo install --quiet --locked vhost-device-vsock --version "$VHOST_DEVICE_VSOCK_VERSION"
fi

if ! virtiofsd --version 2>/dev/null | grep -q "$VIRTIOFSD_VERSION"; then
    log "cargo install virtiofsd $VIRTIOFSD_VERSION"
    cargo install --quiet --locked virtiofsd --version "$VIRTIOFSD_VERSION"
fi

if ! rustup target list --installed | grep -q x86_64-unknown-linux-musl; then
    log "adding rust target x86_64-unknown-linux-musl"
    rustup target add x86_64-unknown-linux-musl
fi
log "all dependencies present"
