#!/usr/bin/env bash
# Prepare everything the local stack needs. Idempotent: a second run only
# checks stamps and takes a few seconds.
#
#   1. Debian packages on the host (installed only when missing).
#   2. An Asterisk 22 root from Debian sid in .cache/asterisk-root.
#   3. Greetings and music on hold in .cache/sounds (espeak-ng + sox).
#   4. The Python venv in .venv with consentd installed editable.
#   5. /usr/local/bin/consentd pointing at this checkout's venv.
#   6. This checkout's secrets in .state/secrets (scripts/secrets.sh).
# (The container images are `make images`: scripts/images.sh.)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=$REPO/.cache
ROOT=$CACHE/asterisk-root
ROOT_STAMP=$ROOT/.consentd-root-stamp
SOUNDS=$CACHE/sounds
VENV=$REPO/.venv

# Changing this list (or the options below) rebuilds the root on the next run.
# asterisk pulls asterisk-modules (app_queue, app_mixmonitor, res_ari*, ...)
# and the English GSM core prompts that app_voicemail needs.
ROOT_INCLUDE=asterisk,asterisk-core-sounds-en-gsm
ROOT_SPEC="v1 sid minbase $ROOT_INCLUDE nodoc"

# libsox-fmt-mp3: operators' MP3 greetings are converted with sox.
# chromium: the dashboard's browser test (Playwright drives it; no browser download).
# podman, runc: make images and the container suite; systemd: systemd-analyze
# verify of deploy/systemd in make test.
# kamailio: the SIP proxy of the two-node cluster (scripts/cluster.sh); its
# system service is never started (see the install below).
HOST_PACKAGES=(mmdebstrap sip-tester sox libsox-fmt-mp3 espeak-ng postgresql python3-venv curl util-linux
    chromium podman runc systemd kamailio)

say() { printf '==> %s\n' "$*"; }
die() { printf 'setup.sh: error: %s\n' "$*" >&2; exit 1; }

need_free_disk() {
    local avail_kb
    avail_kb=$(df --output=avail -k "$REPO" | tail -n 1 | tr -d ' ')
    ((avail_kb >= 2 * 1024 * 1024)) ||
        die "less than 2 GB free on $(df --output=target "$REPO" | tail -n 1) ($((avail_kb / 1024)) MB); free some space and re-run"
}

[[ $EUID -eq 0 ]] || die "must run as root (apt-get, mmdebstrap and chroot need it); try: sudo $0"
if ! command -v apt-get >/dev/null || ! command -v dpkg-query >/dev/null; then
    die "apt-get not found: this script supports Debian 12 only"
fi

# --- 1. host packages -------------------------------------------------------
missing=()
for pkg in "${HOST_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
        missing+=("$pkg")
done
if ((${#missing[@]})); then
    need_free_disk
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    # No package may start its service: a system Kamailio would take port 5060
    # from the stack's Asterisk (scripts/cluster.sh runs its own Kamailio).
    # policy-rc.d answering 101 ("action forbidden") stops invoke-rc.d and
    # deb-systemd-invoke; one that was already there is left alone.
    policy_rc_d=/usr/sbin/policy-rc.d
    own_policy=0
    if [[ ! -e $policy_rc_d ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy_rc_d"
        chmod 755 "$policy_rc_d"
        own_policy=1
    fi
    status=0
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?
    if ((own_policy)); then rm -f "$policy_rc_d"; fi
    ((status == 0)) || die "apt-get install ${missing[*]} failed"
else
    say "host packages present"
fi

# --- 2. Asterisk root -------------------------------------------------------
# Anything mounted below DIR (an interrupted mmdebstrap, a stale /proc bind).
umount_below() {
    local target
    findmnt -rn -o TARGET | awk -v d="$1" '$0 == d || index($0, d "/") == 1' | sort -r |
        while read -r target; do umount -l "$target" || true; done
}

mkdir -p "$CACHE"
# One setup at a time (make test and make up may race); a later run then
# may safely remove what an interrupted one left behind.
exec 9>"$CACHE/.setup.lock"
flock -w 900 9 || die "another scripts/setup.sh still holds $CACHE/.setup.lock"
for stale in "$CACHE"/asterisk-root.tmp.*; do
    [[ -e $stale ]] || continue
    say "removing interrupted build $stale"
    umount_below "$stale"
    rm -rf --one-file-system "$stale"
done

if [[ -f $ROOT_STAMP && $(<"$ROOT_STAMP") == "$ROOT_SPEC" ]]; then
    say "Asterisk root up to date ($ROOT)"
else
    if mountpoint -q "$ROOT/proc" 2>/dev/null; then
        die "$ROOT/proc is mounted: run 'scripts/stack.sh down' before rebuilding the root"
    fi
    need_free_disk
    tmp=$CACHE/asterisk-root.tmp.$$
    say "building Asterisk root from Debian sid (about 20 s, ~350 MB) ..."
    start=$SECONDS
    # stdin from /dev/null: without a mirror argument mmdebstrap would read
    # sources from stdin; with it, it uses Debian's default mirror.
    # The sid snapshot's Release file may have expired: hence Check-Valid-Until.
    mmdebstrap --quiet --variant=minbase --include="$ROOT_INCLUDE" \
        --aptopt='Acquire::Check-Valid-Until "false"' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        sid "$tmp" </dev/null >"$CACHE/mmdebstrap.log" 2>&1 || {
        tail -n 20 "$CACHE/mmdebstrap.log" >&2
        umount_below "$tmp"
        rm -rf --one-file-system "$tmp"
        die "mmdebstrap failed (full log: $CACHE/mmdebstrap.log)"
    }
    [[ -x $tmp/usr/sbin/asterisk ]] || die "mmdebstrap finished but $tmp has no /usr/sbin/asterisk"
    # ARI recording into a missing directory answers 500.
    mkdir -p "$tmp/var/spool/asterisk/monitor" "$tmp/var/spool/asterisk/recording"
    printf '127.0.0.1 localhost %s\n' "$(hostname)" >"$tmp/etc/hosts"
    echo "$ROOT_SPEC" >"$tmp/.consentd-root-stamp"
    if [[ -e $ROOT ]]; then
        umount_below "$ROOT"
        mv "$ROOT" "$CACHE/asterisk-root.tmp.old.$$"
    fi
    mv "$tmp" "$ROOT" # the stamp only appears together with a complete root
    rm -rf --one-file-system "$CACHE/asterisk-root.tmp.old.$$"
    # shellcheck disable=SC2016 # ${Version} is dpkg-query's field, not ours
    say "Asterisk root built in $((SECONDS - start)) s: $(chroot "$ROOT" dpkg-query -W -f='${Version}' asterisk)"
fi
# Hostname may change between runs; without this entry Asterisk does DNS
# look-ups that hang on a closed network (stack.sh up rewrites it too).
printf '127.0.0.1 localhost %s\n' "$(hostname)" >"$ROOT/etc/hosts"

# --- 3. greetings and music on hold -----------------------------------------
# Each file is regenerated only when its cache key (text + recipe) changes.
RECIPE="espeak-ng -s 150 | sox rate 8000 mono s16 norm -3 v1"
KEYS=$CACHE/sound-keys
mkdir -p "$KEYS"

regen() { # regen KEYFILE KEY -> true when the output must be rebuilt
    [[ -f $1 && $(<"$1") == "$2" ]] && return 1
    return 0
}

TEXTS=$REPO/greetings/texts.tsv
# Every language gets every category (consentd/greeting_files.py, GreetingCategory).
CATEGORIES=(available wait hold voicemail ivr ivr_invalid call_recording_opt_in call_recording_opt_out)
# Old names still played by the running code: copies of the new ones.
declare -A ALIASES=([opt_in]=call_recording_opt_in [opt_out]=call_recording_opt_out)
langs=$(awk -F'\t' 'NF && !/^#/ && $1 != "lang" {print $1}' "$TEXTS" | sort -u)
for lang in $langs; do
    for name in "${CATEGORIES[@]}"; do
        awk -F'\t' -v l="$lang" -v n="$name" '$1 == l && $2 == n && $3 != "" {f = 1} END {exit !f}' "$TEXTS" ||
            die "greetings/texts.tsv has no text for $lang/$name"
    done
done

generated=0
while IFS=$'\t' read -r lang name text; do
    [[ -z $lang || $lang == \#* || $lang == lang ]] && continue
    out=$SOUNDS/$lang/consentd/$name.wav
    key="$RECIPE|$lang|$name|$text"
    if [[ -f $out ]] && ! regen "$KEYS/$lang.$name" "$key"; then continue; fi
    mkdir -p "$(dirname "$out")"
    tmpwav=$(mktemp --suffix=.wav)
    espeak-ng -b 1 -v "$lang" -s 150 -w "$tmpwav" "$text" || die "espeak-ng failed for $lang/$name"
    sox "$tmpwav" -r 8000 -c 1 -b 16 -e signed-integer "$out.tmp.wav" norm -3 || die "sox failed for $lang/$name"
    mv "$out.tmp.wav" "$out"
    rm -f "$tmpwav"
    echo "$key" >"$KEYS/$lang.$name"
    generated=$((generated + 1))
    printf '    %s/%s.wav (%s s)\n' "$lang" "$name" "$(soxi -D "$out" | xargs printf '%.1f')"
done <"$TEXTS"
for lang in $langs; do
    for alias in "${!ALIASES[@]}"; do
        src=$SOUNDS/$lang/consentd/${ALIASES[$alias]}.wav
        dst=$SOUNDS/$lang/consentd/$alias.wav
        cmp -s "$src" "$dst" && continue
        cp "$src" "$dst.tmp" && mv "$dst.tmp" "$dst"
        printf '    %s/%s.wav (copy of %s.wav)\n' "$lang" "$alias" "${ALIASES[$alias]}"
    done
done

# Tones: language-independent, but copied into each language's directory so
# that sound:consentd/beep resolves whatever the channel language is.
BEEP="sox synth 0.25 sine 1000 vol 0.5 r8000 v1"
MOH="sox synth 10 sine 440 tremolo 0.5 40 fade 1 10 1 vol 0.12 r8000 v1"
for lang in $langs; do
    out=$SOUNDS/$lang/consentd/beep.wav
    if [[ ! -f $out ]] || regen "$KEYS/$lang.beep" "$BEEP"; then
        mkdir -p "$(dirname "$out")"
        sox -n -r 8000 -c 1 -b 16 -e signed-integer "$out" synth 0.25 sine 1000 vol 0.5
        echo "$BEEP" >"$KEYS/$lang.beep"
        generated=$((generated + 1))
    fi
done
if [[ ! -f $SOUNDS/moh/tone.wav ]] || regen "$KEYS/moh.tone" "$MOH"; then
    mkdir -p "$SOUNDS/moh"
    sox -n -r 8000 -c 1 -b 16 -e signed-integer "$SOUNDS/moh/tone.wav" \
        synth 10 sine 440 tremolo 0.5 40 fade 1 10 1 vol 0.12
    echo "$MOH" >"$KEYS/moh.tone"
    generated=$((generated + 1))
fi
say "sounds ready in $SOUNDS: $(paste -sd, <<<"$langs"), ${#CATEGORIES[@]} greetings each ($generated regenerated)"

# --- 4. Python venv -----------------------------------------------------------
if [[ ! -x $VENV/bin/python ]]; then
    say "creating $VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed (is python3-venv installed?)"
fi
PIP_STAMP=$VENV/.consentd-pyproject.sha256
want=$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)
if [[ -f $PIP_STAMP && $(<"$PIP_STAMP") == "$want" && -x $VENV/bin/consentd ]]; then
    say "venv up to date"
else
    say "pip install -e '.[test]' into $VENV ..."
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "${REPO}[test]" ||
        die "pip install failed"
    echo "$want" >"$PIP_STAMP"
fi

# --- 5. consentd on PATH ------------------------------------------------------
LINK=/usr/local/bin/consentd
if [[ ! -e $LINK && ! -L $LINK ]] || [[ -L $LINK && $(readlink "$LINK") == */.venv/bin/consentd ]]; then
    if [[ $(readlink "$LINK" 2>/dev/null) != "$VENV/bin/consentd" ]]; then
        ln -sfn "$VENV/bin/consentd" "$LINK"
        say "$LINK -> $VENV/bin/consentd"
    fi
else
    say "leaving $LINK alone (not a symlink into a .venv)"
fi
# --- 6. secrets ---------------------------------------------------------------
# Generated once per checkout (ARI, AMI, database, API token, agents' SIP
# passwords), never fixed in the repository; kept on every later run.
"$REPO/scripts/secrets.sh"
say "secrets in $REPO/.state/secrets"
say "setup done"
