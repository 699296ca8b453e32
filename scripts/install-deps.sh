#!/bin/sh
# Installs every system package and tool the build and the tests need.
# Idempotent: each step checks first and does nothing when already satisfied.
# `--igvm-qemu` also builds (once per machine, cached) the QEMU that boots IGVM files
# (scripts/build-qemu-igvm.sh); the tests need it, `make demo` does not.
# Runs as root on Debian bookworm (see ../shared/design/LAB.md of the team).
set -eu

WITH_IGVM_QEMU=0
for arg in "$@"; do
    case "$arg" in
        --igvm-qemu) WITH_IGVM_QEMU=1 ;;
        *) echo "usage: $0 [--igvm-qemu]" >&2; exit 2 ;;
    esac
done

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
           make gcc libc6-dev bc bison flex libelf-dev perl \
           curl bzip2 ninja-build python3-venv libglib2.0-dev libpixman-1-dev cbindgen \
           dbus-daemon; do
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

# QEMU's build (scripts/build-qemu-igvm.sh) wants meson >= 1.5 and pycotap: bookworm-backports.
if ! dpkg --compare-versions "$(dpkg-query -W -f='${Version}' meson 2>/dev/null || echo 0)" ge 1.5 || \
   ! dpkg-query -W -f='${Status}' python3-pycotap 2>/dev/null | grep -q 'ok installed'; then
    need_update
    log "installing meson and python3-pycotap from bookworm-backports"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports \
        meson python3-pycotap >/dev/null
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
if [ "$WITH_IGVM_QEMU" = 1 ]; then
    # Assigned first: set -e does not see a failure inside an argument's $(...).
    igvm_qemu=$("$(dirname "$0")/build-qemu-igvm.sh")
    log "QEMU with IGVM: $igvm_qemu"
fi
log "all dependencies present"
