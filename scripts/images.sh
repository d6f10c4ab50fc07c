#!/usr/bin/env bash
# Build the two container images with podman, from Debian packages only (no
# image registry): `make images`.
#
#   localhost/consentd:latest            Dockerfile (the daemon, uid 10001)
#   localhost/consentd-asterisk:latest   asterisk/Containerfile (Asterisk 22, uid 10002)
#
# Each base is a root made by mmdebstrap as a tarball (.cache/images/*.tar)
# and imported with `podman import`. Each image carries a label
# org.consentd.inputs, the SHA-256 of everything it is made from (its
# Containerfile, the base's recipe, the sources, the config or greetings): when
# the label of the existing image equals it, nothing is built, so a second run
# takes seconds. FORCE=1 rebuilds both.
#
# The build contexts are staged in .cache/images/ctx-* with exactly what each
# image needs: never the checkout itself, which holds .state/secrets.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$REPO/.cache/images
CONSENTD_IMAGE=localhost/consentd:latest
ASTERISK_IMAGE=localhost/consentd-asterisk:latest
LABEL=org.consentd.inputs

# Changing a recipe rebuilds its tarball (and with it the image).
# consentd: Debian 12's Python 3.11, the host's own (its wheels are built here);
# sox and its MP3 format convert operators' greetings.
CONSENTD_BASE_SUITE=bookworm
CONSENTD_BASE_INCLUDE=python3,python3-venv,sox,libsox-fmt-mp3
# Asterisk 22 exists only in Debian's unstable suite (as in scripts/setup.sh).
ASTERISK_BASE_SUITE=sid
ASTERISK_BASE_INCLUDE=asterisk,asterisk-core-sounds-en-gsm

say() { printf '==> %s\n' "$*"; }
die() { printf 'images.sh: error: %s\n' "$*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "must run as root (mmdebstrap and podman need it); try: sudo $0"
command -v podman >/dev/null || die "podman is not installed: run make setup"
[[ -x $REPO/.venv/bin/pip ]] || die "$REPO/.venv missing: run make setup"
[[ -d $REPO/.cache/sounds/en/consentd ]] || die "$REPO/.cache/sounds missing: run make setup"

mkdir -p "$OUT"
exec 8>"$OUT/.images.lock"
flock -w 1800 8 || die "another scripts/images.sh still holds $OUT/.images.lock"

# hash_of FILE_OR_DIR...: one SHA-256 over the files' paths and contents.
hash_of() {
    (cd "$REPO" && find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 |
        LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64)
}

image_label() { podman image inspect --format "{{index .Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null || true; }

# base_tarball NAME SUITE INCLUDE: .cache/images/NAME.tar, made once per recipe;
# prints the recipe's hash.
base_tarball() {
    # mmdebstrap writes a tarball because the target's name ends in .tar.
    local name=$1 suite=$2 include=$3 tar=$OUT/$1.tar tmp=$OUT/$1.tmp.tar spec start
    spec="v1 $suite minbase $include nodoc"
    if [[ -f $tar && -f $tar.spec && $(<"$tar.spec") == "$spec" ]]; then
        sha256sum <<<"$spec" | cut -c1-16
        return
    fi
    say "building the $name root from Debian $suite with mmdebstrap (about 30 s) ..." >&2
    start=$SECONDS
    rm -rf "$tar" "$tar.spec" "$tmp"
    # stdin from /dev/null: with no mirror argument mmdebstrap would read
    # sources from stdin; with it, it uses Debian's default mirror. The sid
    # snapshot's Release file may have expired: hence Check-Valid-Until.
    mmdebstrap --quiet --variant=minbase --include="$include" \
        --aptopt='Acquire::Check-Valid-Until "false"' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        "$suite" "$tmp" </dev/null >"$OUT/$name.mmdebstrap.log" 2>&1 || {
        tail -n 20 "$OUT/$name.mmdebstrap.log" >&2
        rm -rf "$tmp"
        die "mmdebstrap failed for $name (full log: $OUT/$name.mmdebstrap.log)"
    }
    mv "$tmp" "$tar"
    echo "$spec" >"$tar.spec"
    say "$name root: $(du -m "$tar" | cut -f1) MB in $((SECONDS - start)) s" >&2
    sha256sum <<<"$spec" | cut -c1-16
}

# import_base NAME SPEC_HASH: localhost/NAME:SPEC_HASH from the tarball; prints the name.
import_base() {
    local ref=localhost/$1:$2
    if ! podman image exists "$ref"; then
        say "importing $1.tar as $ref ..." >&2
        podman import --quiet "$OUT/$1.tar" "$ref" >/dev/null || die "podman import $OUT/$1.tar failed"
    fi
    echo "$ref"
}

# build IMAGE INPUTS CONTEXT CONTAINERFILE BASE: podman build, labelled with INPUTS.
build() {
    local image=$1 inputs=$2 ctx=$3 file=$4 base=$5 start=$SECONDS
    say "podman build $image ..."
    podman build --quiet=false --isolation=chroot --format=docker --layers=false \
        --build-arg "BASE=$base" --label "$LABEL=$inputs" \
        -f "$file" -t "$image" "$ctx" 2>&1 | sed -u 's/^/    /'
    ((PIPESTATUS[0] == 0)) || die "podman build $image failed"
    say "$image built in $((SECONDS - start)) s ($(podman image inspect --format '{{.Size}}' "$image" |
        awk '{printf "%d MB", $1 / 1e6}'))"
}

total=$SECONDS

# --- consentd ---------------------------------------------------------------------
base_hash=$(base_tarball consentd-base "$CONSENTD_BASE_SUITE" "$CONSENTD_BASE_INCLUDE")
inputs=$(printf '%s %s\n' "$base_hash" "$(hash_of Dockerfile pyproject.toml README.md consentd)" | sha256sum | cut -c1-64)
if [[ ${FORCE:-0} != 1 && $(image_label "$CONSENTD_IMAGE") == "$inputs" ]]; then
    say "$CONSENTD_IMAGE up to date"
else
    base=$(import_base consentd-base "$base_hash")
    ctx=$OUT/ctx-consentd
    rm -rf "$ctx"
    mkdir -p "$ctx/src"
    cp -r "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/consentd" "$ctx/src/"
    find "$ctx/src" -name __pycache__ -prune -exec rm -rf {} +
    cp "$REPO/Dockerfile" "$ctx/Dockerfile"
    say "building consentd's wheels (the daemon and its dependencies) ..."
    start=$SECONDS
    # The host's pip and its index configuration; the image build itself is offline.
    "$REPO/.venv/bin/pip" wheel --quiet --disable-pip-version-check --wheel-dir "$ctx/wheels" \
        "$ctx/src" >"$OUT/wheels.log" 2>&1 || {
        tail -n 20 "$OUT/wheels.log" >&2
        die "pip wheel failed (log: $OUT/wheels.log)"
    }
    rm -rf "$ctx/src"
    say "$(find "$ctx/wheels" -name '*.whl' | wc -l) wheels in $((SECONDS - start)) s"
    build "$CONSENTD_IMAGE" "$inputs" "$ctx" "$ctx/Dockerfile" "$base"
fi

# --- Asterisk ----------------------------------------------------------------------
base_hash=$(base_tarball consentd-asterisk-base "$ASTERISK_BASE_SUITE" "$ASTERISK_BASE_INCLUDE")
inputs=$(printf '%s %s\n' "$base_hash" "$(hash_of asterisk asterisk-conf dialplan .cache/sounds)" |
    sha256sum | cut -c1-64)
if [[ ${FORCE:-0} != 1 && $(image_label "$ASTERISK_IMAGE") == "$inputs" ]]; then
    say "$ASTERISK_IMAGE up to date"
else
    base=$(import_base consentd-asterisk-base "$base_hash")
    ctx=$OUT/ctx-asterisk
    rm -rf "$ctx"
    mkdir -p "$ctx/conf"
    cp "$REPO"/asterisk-conf/*.conf "$REPO"/dialplan/*.conf "$ctx/conf/"
    cp -r "$REPO/.cache/sounds" "$ctx/sounds"
    cp "$REPO"/asterisk/* "$ctx/"
    build "$ASTERISK_IMAGE" "$inputs" "$ctx" "$ctx/Containerfile" "$base"
fi

# Older builds' images and imported bases, no longer tagged.
podman image prune --force >/dev/null 2>&1 || true
say "images ready in $((SECONDS - total)) s: $CONSENTD_IMAGE, $ASTERISK_IMAGE"
