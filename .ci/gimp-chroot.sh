#!/usr/bin/env bash
# Build (or reuse) a Debian chroot with GIMP and its Python bindings, for the real-GIMP tests.
#
#   sudo .ci/gimp-chroot.sh [--gimp 3.0|3.2] [--with-xvfb]   prints the chroot's path as its last line
#
# GIMP 3.0 comes from Debian trixie, GIMP 3.2 from Debian forky (default: 3.0). Each chroot lives
# outside the clone, in $IMAGE_ENHANCER_GIMP_CACHE/gimp-<suite> (default ~/.cache/image-enhancer), and
# is rebuilt only when it is missing, broken, built from a different package list, or older than
# $IMAGE_ENHANCER_GIMP_MAX_AGE_DAYS days (default 30).
# Needs root (debootstrap, chroot) and network access to a Debian mirror ($DEBIAN_MIRROR, optional).
# --with-xvfb adds an X server and xwd, for screenshots of the plug-in's dialog.
set -euo pipefail

GIMP_VERSION=3.0
WITH_XVFB=no
while [[ $# -gt 0 ]]; do
    case "$1" in
        --gimp) GIMP_VERSION="${2:-}"; shift 2 ;;
        --with-xvfb) WITH_XVFB=yes; shift ;;
        *) echo "gimp-chroot: unknown argument $1 (use --gimp 3.0|3.2, --with-xvfb)" >&2; exit 2 ;;
    esac
done
# APT_CONF goes into the chroot's apt configuration: forky's index on some mirrors outlives its
# Valid-Until date (the index is still signed and checked).
case "$GIMP_VERSION" in
    3.0) SUITE=trixie; APT_CONF="" ;;
    3.2) SUITE=forky; APT_CONF='Acquire::Check-Valid-Until "false";' ;;
    *) echo "gimp-chroot: unknown GIMP version $GIMP_VERSION (3.0 or 3.2)" >&2; exit 2 ;;
esac
ROOT="${IMAGE_ENHANCER_GIMP_CACHE:-${HOME}/.cache/image-enhancer}/gimp-$SUITE"
MAX_AGE_DAYS="${IMAGE_ENHANCER_GIMP_MAX_AGE_DAYS:-30}"
PACKAGES="gimp python3-gi gir1.2-gimp-3.0"
if [[ "$WITH_XVFB" == yes ]]; then
    PACKAGES="$PACKAGES xvfb xauth x11-apps"
fi
# The stamp records the suite and the packages the chroot was built with.
STAMP="$ROOT/.image-enhancer-stamp"

log() { echo "gimp-chroot: $*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root (debootstrap and chroot need it)"
    exit 2
fi

# The packages asked for that the chroot was not built with.
missing_packages() {
    local built
    built=" $(sed -n 's/^packages=//p' "$STAMP") "
    for package in $PACKAGES; do
        [[ "$built" == *" $package "* ]] || echo "$package"
    done
}

# Packages asked for later (e.g. --with-xvfb) go into a chroot that is otherwise fine, not a new one.
add_packages() {
    local extra
    extra="$(missing_packages | xargs)"
    [[ -n "$extra" ]] || return 0
    log "adding $extra"
    mount -t proc proc "$ROOT/proc"
    # shellcheck disable=SC2086
    if chroot "$ROOT" apt-get update -qq >&2 && chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends $extra >&2; then
        chroot "$ROOT" apt-get clean
        local built_at
        built_at="$(stat -c %Y "$STAMP")"
        sed -i "s/^packages=.*/& $extra/" "$STAMP"
        touch -d "@$built_at" "$STAMP"  # the chroot's age still counts from its build
    fi
    umount "$ROOT/proc"
}

usable() {
    [[ -f "$STAMP" ]] || return 1
    [[ "$(sed -n 's/^suite=//p' "$STAMP")" == "$SUITE" ]] || { log "built for another suite"; return 1; }
    [[ -z "$(find "$STAMP" -mtime +"$MAX_AGE_DAYS")" ]] || { log "older than $MAX_AGE_DAYS days"; return 1; }
    add_packages
    [[ -z "$(missing_packages)" ]] || { log "$(missing_packages | xargs) could not be added"; return 1; }
    chroot "$ROOT" "gimp-console-$GIMP_VERSION" --version >/dev/null 2>&1 || { log "gimp does not run"; return 1; }
    chroot "$ROOT" python3 -c 'import gi; gi.require_version("Gimp", "3.0")' 2>/dev/null \
        || { log "GIMP's Python bindings are missing"; return 1; }
}

mkdir -p "$(dirname "$ROOT")"
exec 9>"$ROOT.lock"
flock 9  # one build at a time; a second caller waits, then reuses the result

if usable; then
    log "reusing $ROOT"
    echo "$ROOT"
    exit 0
fi
if [[ -f "$STAMP" ]]; then  # keep what an earlier build had (e.g. --with-xvfb)
    # shellcheck disable=SC2046,SC2086  # splitting the package lists into words is the point
    PACKAGES="$(printf '%s\n' $PACKAGES $(sed -n 's/^packages=//p' "$STAMP") | sort -u | xargs)"
fi

if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2
fi

BUILD="$ROOT.building"
# Never recurse into a mounted /proc (left behind by an interrupted run): unmount, then stay on one
# file system while deleting.
remove_tree() {
    if mountpoint -q "$1/proc"; then umount "$1/proc"; fi
    rm -rf --one-file-system "$1"
}
cleanup() { remove_tree "$BUILD"; }
trap cleanup EXIT
cleanup

log "debootstrap $SUITE into $BUILD"
# Older debootstraps lack a script for the newest suites; every current suite bootstraps like sid.
SCRIPT=/usr/share/debootstrap/scripts/$SUITE
[[ -e "$SCRIPT" ]] || SCRIPT=/usr/share/debootstrap/scripts/sid
debootstrap --variant=minbase "$SUITE" "$BUILD" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" "$SCRIPT" >&2
if [[ -n "$APT_CONF" ]]; then  # for every later apt run in the chroot, ours or a person's
    echo "$APT_CONF" >"$BUILD/etc/apt/apt.conf.d/90image-enhancer"
fi
mount -t proc proc "$BUILD/proc"  # apt's maintainer scripts need it; unmounted again below
chroot "$BUILD" apt-get update -qq >&2
log "installing $PACKAGES"
# shellcheck disable=SC2086
chroot "$BUILD" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends $PACKAGES >&2
chroot "$BUILD" apt-get clean
umount "$BUILD/proc"
if [[ -e "$BUILD/usr/bin/bwrap" ]]; then  # GTK's image loaders need it, and no namespaces exist here
    chroot "$BUILD" dpkg-divert --local --rename --add /usr/bin/bwrap >&2
    install -m 755 "$(dirname "$0")/bwrap-shim.sh" "$BUILD/usr/bin/bwrap"
fi
mkdir -p "$BUILD/tmp/home"
chmod 1777 "$BUILD/tmp"
printf 'suite=%s\npackages=%s\n' "$SUITE" "$PACKAGES" >"$BUILD/.image-enhancer-stamp"

remove_tree "$ROOT"
mv "$BUILD" "$ROOT"
trap - EXIT
log "built $ROOT"
echo "$ROOT"
