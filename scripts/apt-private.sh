# Sourced by the fetch-* scripts: apt against newer Debian suites (trixie, sid) without
# changing which suite the host installs anything from — a private sources list and private
# apt list/cache dirs under $CONTRAST_CACHE (default /var/cache/contrast), nothing installed.
# Defines CACHE, DEBS, apt_private (runs an apt command privately) and apt_private_update.
CACHE=${CONTRAST_CACHE:-/var/cache/contrast}
APT="$CACHE/apt"
DEBS="$CACHE/debs"
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$DEBS"

MIRROR=$(awk '/^URIs:/ && $2 ~ /debian\/?$/ && $2 !~ /security/ {print $2; exit}' \
    /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
{
    echo "deb [signed-by=$KEYRING] $MIRROR trixie main"
    echo "deb [signed-by=$KEYRING] $MIRROR sid main"
} > "$APT/sources.list"
apt_private() {
    "$@" -o APT::Sandbox::User=root -o Dir::Etc::sourcelist="$APT/sources.list" -o Dir::Etc::sourceparts=- \
        -o Dir::State::Lists="$APT/lists" -o Dir::Cache="$APT/cache" \
        -o Dir::State::status=/var/lib/dpkg/status
}
# Updates the private lists once per cache (a new package version needs `rm $APT/.updated`).
apt_private_update() {
    if [ ! -f "$APT/.updated" ]; then
        echo "apt-private: apt-get update (private lists: trixie, sid)" >&2
        apt_private apt-get -qq update >&2
        touch "$APT/.updated"
    fi
}
