#!/usr/bin/env bash
# Build (or reuse) a Debian trixie chroot with GIMP 3.0 and its Python bindings, for the real-GIMP tests.
#
#   sudo .ci/gimp-chroot.sh [--with-xvfb]     prints the chroot's path as its last line of output
#
# The chroot lives outside the clone, in $IMAGE_ENHANCER_GIMP_ROOT (default
# ~/.cache/image-enhancer/gimp-trixie), and is rebuilt only when it is missing, broken, built from a
# different package list, or older than $IMAGE_ENHANCER_GIMP_MAX_AGE_DAYS days (default 30).
# Needs root (debootstrap, chroot) and network access to a Debian mirror ($DEBIAN_MIRROR, optional).
# --with-xvfb adds an X server and xwd, for screenshots of the plug-in's dialog.
set -euo pipefail

ROOT="${IMAGE_ENHANCER_GIMP_ROOT:-${HOME}/.cache/image-enhancer/gimp-trixie}"
MAX_AGE_DAYS="${IMAGE_ENHANCER_GIMP_MAX_AGE_DAYS:-30}"
SUITE=trixie
PACKAGES="gimp python3-gi gir1.2-gimp-3.0"
if [[ "${1:-}" == "--with-xvfb" ]]; then
    PACKAGES="$PACKAGES xvfb xauth x11-apps"
fi
# The stamp records the suite and the packages the chroot was built with.
STAMP="$ROOT/.image-enhancer-stamp"

log() { echo "gimp-chroot: $*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root (debootstrap and chroot need it)"
    exit 2
fi

usable() {
    [[ -f "$STAMP" ]] || return 1
    local built
    built=" $(sed -n 's/^packages=//p' "$STAMP") "
    [[ "$(sed -n 's/^suite=//p' "$STAMP")" == "$SUITE" ]] || { log "built for another suite"; return 1; }
    for package in $PACKAGES; do
        [[ "$built" == *" $package "* ]] || { log "$package is missing"; return 1; }
    done
    [[ -z "$(find "$STAMP" -mtime +"$MAX_AGE_DAYS")" ]] || { log "older than $MAX_AGE_DAYS days"; return 1; }
    chroot "$ROOT" gimp-console-3.0 --version >/dev/null 2>&1 || { log "gimp does not run"; return 1; }
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
# shellcheck disable=SC2086  # DEBIAN_MIRROR is optional: debootstrap picks its default mirror without it
debootstrap --variant=minbase "$SUITE" "$BUILD" ${DEBIAN_MIRROR:-} >&2
mount -t proc proc "$BUILD/proc"  # apt's maintainer scripts need it; unmounted again below
chroot "$BUILD" apt-get update -qq >&2
log "installing $PACKAGES"
# shellcheck disable=SC2086
chroot "$BUILD" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends $PACKAGES >&2
chroot "$BUILD" apt-get clean
umount "$BUILD/proc"
mkdir -p "$BUILD/tmp/home"
chmod 1777 "$BUILD/tmp"
printf 'suite=%s\npackages=%s\n' "$SUITE" "$PACKAGES" >"$BUILD/.image-enhancer-stamp"

remove_tree "$ROOT"
mv "$BUILD" "$ROOT"
trap - EXIT
log "built $ROOT"
echo "$ROOT"
