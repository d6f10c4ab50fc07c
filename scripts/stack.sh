#!/usr/bin/env bash
# Local development stack: Asterisk (chroot), PostgreSQL (throwaway cluster)
# and the consentd daemon, all on 127.0.0.1.
#
#   scripts/stack.sh up [POLICIES_FILE]   start what is not running yet
#   scripts/stack.sh down                 stop everything this checkout started
#   scripts/stack.sh status               show what runs
#   scripts/stack.sh db-stop | db-start   stop or start only PostgreSQL (fault tests)
#   scripts/stack.sh asterisk-restart     stop and start only Asterisk (fault tests)
#
# Environment:
#   CONSENTD_DATABASE_URL=...     use this database; no cluster is started
#                                 (passed to consentd in its environment)
#   CONSENTD_STACK_NO_DAEMON=1    start Asterisk and PostgreSQL only, and stop a
#                                 daemon left running (for tests that start
#                                 the daemon themselves)
#
# "up" when already up leaves Asterisk and PostgreSQL running and restarts
# the daemon, so that a new POLICIES_FILE takes effect.
#
# Secrets: generated once per checkout into .state/secrets (scripts/secrets.sh),
# written into Asterisk's config (consentd-secrets-*.conf, included by
# manager.conf, ari.conf and pjsip.conf) and set as role consentd's password;
# consentd gets them through CONSENTD_*_FILE variables. "up" lists every
# endpoint and credential in .state/stack.json (mode 0600). No secret is ever
# put on a command line or into a log.
#
# Least privilege:
#   PostgreSQL  role consentd_owner owns database consentd and its tables and
#               runs the migrations (`consentd migrate`, before the daemon
#               starts); role consentd, the daemon's, owns nothing and may only
#               append to the ledger and read it (grants in the migrations).
#               The postgres user reaches .state/pg through a bind mount under
#               /run: no directory above the checkout is opened to it.
#   Asterisk    runs as user asterisk (-U/-G) in its chroot, with umask 027 and
#               a fresh procfs (hidepid=invisible, subset=pid) instead of the
#               host's /proc. The root's asterisk ids are renumbered when the
#               host uses them (its uid 101 was the host's postgres).
#   Recordings  /var/spool/asterisk/{monitor,recording}: 2750 asterisk:GROUP,
#               files 0640 (Asterisk's umask; setgid gives them GROUP).
#               GROUP is $CONSENTD_RECORDING_GROUP (default asterisk), a group
#               of the Asterisk root: give the PBX's playback tools that group.
#   Journal     .state/journal 0700, the journal 0600 (consentd/journal.py).
set -euo pipefail
# scripts/cluster.sh sources this file for its functions (the commands at the
# end run only when it is executed).
# The daemons started here live on after this script: they must not inherit
# its open descriptors beyond 0-2. A lock taken around this script (e.g.
# `flock LOCK scripts/stack.sh up`) would otherwise be held by Asterisk and
# PostgreSQL until they stop, and every other user of the lock would wait.
for fd_path in /proc/$$/fd/*; do
    fd=${fd_path##*/}
    if ((fd > 2)); then eval "exec $fd>&-"; fi
done
unset fd_path fd

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=$REPO/.cache/asterisk-root
STATE=$REPO/.state
RUN=$STATE/run
PG_BIN=/usr/lib/postgresql/15/bin # not PATH: /usr/local/bin may hold other binaries
PG_DATA=$STATE/pg
PG_PORT=55432
CHECKOUT_ID=$(printf '%s' "$REPO" | sha256sum | cut -c1-12)
# Unix socket paths are limited to ~107 bytes: keep the socket out of the repo.
PG_SOCK=/tmp/consentd-pg-$CHECKOUT_ID
# $PG_DATA as the postgres user reaches it (a bind mount): a checkout below a
# directory closed to other users (/root) needs no chmod up the tree.
PG_MOUNT=/run/consentd-pg-$CHECKOUT_ID
DEFAULT_DB_URL=postgresql://consentd@127.0.0.1:$PG_PORT/consentd # the password comes apart
OWNER_DB_URL=postgresql://consentd_owner@127.0.0.1:$PG_PORT/consentd
RECORDING_GROUP=${CONSENTD_RECORDING_GROUP:-asterisk}
ARI_URL=http://127.0.0.1:8088/ari
HTTP_URL=http://127.0.0.1:8090
HEALTH_URL=$HTTP_URL/healthz
SECRETS=$STATE/secrets
STACK_JSON=$STATE/stack.json
# Where the secrets' config files go (scripts/cluster.sh: each node's own).
ASTERISK_ETC=$ROOT/etc/asterisk
PG_AUTH_STAMP=$PG_DATA/consentd-auth # clusters older than it trusted every connection

say() { printf '==> %s\n' "$*"; }
die() { printf 'stack.sh: error: %s\n' "$*" >&2; exit 1; }

alive() { [[ -f $1 ]] && kill -0 "$(<"$1")" 2>/dev/null; }

secret() { printf '%s' "$(<"$SECRETS/$1")"; }

ensure_secrets() { "$REPO/scripts/secrets.sh" "$SECRETS"; }

# A URL with its password replaced by *** (for what this script prints).
redact_url() { sed -E 's#^([a-z][a-z0-9+.-]*://[^:/@]*):[^@]*@#\1:***@#; s#([?&]password=)[^&]*#\1***#g' <<<"$1"; }

# Processes whose root directory is our Asterisk root (also catches an
# Asterisk whose pid file was lost).
root_pids() {
    local p
    for p in /proc/[0-9]*; do
        [[ $(readlink "$p/root" 2>/dev/null) == "$ROOT" ]] && echo "${p#/proc/}"
    done
    return 0
}

# stop_pid PID SECONDS: SIGTERM, wait, then SIGKILL.
stop_pid() {
    local pid=$1 wait=$2 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < wait * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

tail_logs() {
    local f
    for f in "$@"; do
        [[ -s $f ]] || continue
        printf -- '--- last lines of %s ---\n' "$f" >&2
        tail -n 25 "$f" >&2
    done
}

# --- Asterisk ---------------------------------------------------------------
# The files manager.conf, ari.conf and pjsip.conf include: this checkout's
# secrets. write_secret_conf NAME: the text on stdin; returns 0 if it changed.
write_secret_conf() {
    local file=$ASTERISK_ETC/$1 text
    text=$(cat)
    if [[ -f $file && $(<"$file") == "$text" ]]; then return 1; fi
    # root:asterisk 0640: Asterisk (user asterisk) reads it, nobody else.
    (umask 077 && printf '%s\n' "$text" >"$file.tmp") &&
        chgrp "$(root_id group asterisk)" "$file.tmp" && chmod 640 "$file.tmp" && mv "$file.tmp" "$file"
}

install_secret_confs() { # returns 0 if any of them changed
    local changed=1 n
    printf 'secret = %s\n' "$(secret ami_secret)" | write_secret_conf consentd-secrets-ami.conf && changed=0
    printf 'secret = %s\n' "$(secret ami_tests_secret)" |
        write_secret_conf consentd-secrets-ami-tests.conf && changed=0
    printf 'password = %s\n' "$(secret ari_password)" | write_secret_conf consentd-secrets-ari.conf && changed=0
    for n in 1 2 3; do
        printf '[agent%s-auth]\ntype = auth\nauth_type = userpass\nusername = agent%s\npassword = %s\n\n' \
            "$n" "$n" "$(secret "agent${n}_password")"
    done | write_secret_conf consentd-secrets-pjsip.conf && changed=0
    return $changed
}

# root_id passwd|group NAME: NAME's id in the Asterisk root (empty if none).
root_id() { awk -F: -v n="$2" '$1 == n { print $3 }' "$ROOT/etc/$1"; }

# An id neither the host nor the root uses, as a user or as a group.
free_id() {
    local id
    for ((id = 64000; id < 65000; id++)); do
        getent passwd "$id" >/dev/null || getent group "$id" >/dev/null ||
            awk -F: -v i="$id" '$3 == i { found = 1 } END { exit !found }' \
                "$ROOT/etc/passwd" "$ROOT/etc/group" || { echo "$id"; return; }
    done
    die "no free id in 64000-64999 for the Asterisk root's user asterisk"
}

# Debian's asterisk package made user and group asterisk in the root. Their ids
# must be none of the host's: Asterisk's processes and files would be that host
# user's (its signals, its /proc entries, its files). Renumbered once.
prepare_asterisk_user() {
    local uid gid new
    uid=$(root_id passwd asterisk)
    gid=$(root_id group asterisk)
    [[ -n $uid && -n $gid ]] || die "$ROOT has no user or group asterisk: run scripts/setup.sh"
    if getent passwd "$uid" >/dev/null || getent group "$uid" >/dev/null ||
        getent passwd "$gid" >/dev/null || getent group "$gid" >/dev/null; then
        new=$(free_id)
        say "Asterisk root: user and group asterisk $uid:$gid -> $new:$new (the host uses $uid/$gid)"
        chroot "$ROOT" groupmod -g "$new" asterisk
        chroot "$ROOT" usermod -u "$new" -g "$new" asterisk
        find "$ROOT" -xdev -uid "$uid" -exec chown -h "$new" {} +
        find "$ROOT" -xdev -gid "$gid" -exec chgrp -h "$new" {} +
    fi
}

# What Asterisk (user asterisk) writes is its own; the recordings' directories are
# 2750 asterisk:$RECORDING_GROUP and their files 0640 (older ones are fixed here).
prepare_asterisk_dirs() {
    local uid gid rgid dir
    uid=$(root_id passwd asterisk)
    gid=$(root_id group asterisk)
    rgid=$(root_id group "$RECORDING_GROUP")
    [[ -n $rgid ]] || die "CONSENTD_RECORDING_GROUP=$RECORDING_GROUP: no such group in $ROOT/etc/group"
    mkdir -p "$ROOT/var/run/asterisk" "$ROOT/var/cache/asterisk" "$ROOT/var/log/asterisk" \
        "$ROOT/var/lib/asterisk"
    # The greetings (sounds/) stay root's: Asterisk reads them, consentd writes them.
    find "$ROOT/var/run/asterisk" "$ROOT/var/cache/asterisk" "$ROOT/var/log/asterisk" \
        "$ROOT/var/lib/asterisk" "$ROOT/var/spool/asterisk" \
        \( -path "$ROOT/var/lib/asterisk/sounds" -o -path "$ROOT/var/spool/asterisk/monitor" \
        -o -path "$ROOT/var/spool/asterisk/recording" \) -prune \
        -o \( ! -uid "$uid" -o ! -gid "$gid" \) -exec chown -h "$uid:$gid" {} +
    # Members of the recordings' group reach monitor/ and recording/ (and see
    # the names of the spool's directories, nothing in them).
    chgrp "$rgid" "$ROOT/var/spool/asterisk"
    chmod 750 "$ROOT/var/spool/asterisk"
    for dir in "$ROOT/var/spool/asterisk/monitor" "$ROOT/var/spool/asterisk/recording"; do
        mkdir -p "$dir"
        chown "$uid:$rgid" "$dir"
        chmod 2750 "$dir"
        find "$dir" -mindepth 1 \( ! -uid "$uid" -o ! -gid "$rgid" -o -perm /0137 \) \
            -exec chown -h "$uid:$rgid" {} + -exec chmod 0640 {} +
    done
}

install_asterisk_files() {
    rm -rf "${ROOT:?}"/etc/asterisk/*
    cp "$REPO"/asterisk-conf/*.conf "$REPO"/dialplan/*.conf "$ROOT/etc/asterisk/"
    install_secret_confs || true
    mkdir -p "$ROOT/var/spool/asterisk/monitor" "$ROOT/var/spool/asterisk/recording"
    install_sounds
    printf '127.0.0.1 localhost %s\n' "$(hostname)" >"$ROOT/etc/hosts"
}

# The greetings and music on hold, shared by every Asterisk of the root.
install_sounds() {
    mkdir -p "$ROOT/var/lib/asterisk/sounds"
    cp -r "$REPO"/.cache/sounds/* "$ROOT/var/lib/asterisk/sounds/"
    # Asterisk looks sounds up in astdatadir (/usr/share/asterisk/sounds/<lang>):
    # link our greetings there, so both sound:consentd/opt_in (channel
    # language) and sound:/var/lib/asterisk/sounds/de/consentd/opt_in work.
    # Done inside the root: sounds/en is an absolute symlink (alternatives).
    local dir lang
    for dir in "$ROOT"/var/lib/asterisk/sounds/*/consentd; do
        lang=$(basename "$(dirname "$dir")")
        chroot "$ROOT" /bin/sh -c "mkdir -p /usr/share/asterisk/sounds/$lang &&
            ln -sfn /var/lib/asterisk/sounds/$lang/consentd /usr/share/asterisk/sounds/$lang/consentd"
    done
}

ami_answers() ( # subshell: the descriptor and a failed connect stay in here
    exec 3<>/dev/tcp/127.0.0.1/5038 || exit 1
    read -r -t 2 banner <&3 || true
    [[ $banner == "Asterisk Call Manager"* ]]
)

ari_answers() { # the credentials reach curl on stdin (-K -), not on its command line
    [[ $(printf 'user = "consentd:%s"\n' "$(secret ari_password)" |
        curl -s -K - -o /dev/null -w '%{http_code}' -m 2 "$ARI_URL/asterisk/info") == 200 ]]
}

start_asterisk() {
    if alive "$RUN/asterisk.pid"; then
        say "Asterisk already running (pid $(<"$RUN/asterisk.pid"))"
        if install_secret_confs; then
            # The secrets changed (new checkout state): make Asterisk read them.
            say "secrets changed: reloading Asterisk's manager, ARI and PJSIP"
            local command
            for command in "manager reload" "module reload res_ari.so" "module reload res_pjsip.so"; do
                timeout 10 chroot "$ROOT" /usr/sbin/asterisk -rx "$command" >/dev/null 2>&1 || true
            done
        fi
        return
    fi
    local stray
    stray=$(root_pids)
    [[ -z $stray ]] || die "processes already run inside $ROOT (pids: ${stray//$'\n'/ }); run 'scripts/stack.sh down' first"
    if mountpoint -q "$ROOT/proc"; then umount "$ROOT/proc" || umount -l "$ROOT/proc"; fi
    prepare_asterisk_user
    install_asterisk_files
    : >"$ROOT/var/log/asterisk/messages"
    prepare_asterisk_dirs
    # Not the host's /proc: a procfs of its own, where user asterisk sees only
    # its own processes (hidepid=invisible) and no kernel files (subset=pid).
    mount -t proc -o nosuid,nodev,noexec,hidepid=invisible,subset=pid proc "$ROOT/proc"
    say "starting Asterisk (user asterisk) ..."
    # The subshell, setsid and chroot each exec the next, so $! is Asterisk's
    # own pid. umask 027: recordings come out 0640 (MixMonitor creates them 0666
    # less the umask), in directories whose setgid bit gives them their group.
    (umask 027 && exec setsid chroot "$ROOT" /usr/sbin/asterisk -f -n -U asterisk -G asterisk) \
        >"$STATE/asterisk.console.log" 2>&1 </dev/null &
    echo $! >"$RUN/asterisk.pid"
    local i
    for ((i = 0; i < 120; i++)); do
        if ! alive "$RUN/asterisk.pid"; then
            tail_logs "$STATE/asterisk.console.log" "$ROOT/var/log/asterisk/messages"
            die "Asterisk exited during start-up"
        fi
        if ami_answers 2>/dev/null && ari_answers; then
            say "Asterisk ready (pid $(<"$RUN/asterisk.pid"), $((i / 2)) s)"
            return
        fi
        sleep 0.5
    done
    tail_logs "$STATE/asterisk.console.log" "$ROOT/var/log/asterisk/messages"
    die "Asterisk did not answer on AMI 127.0.0.1:5038 and ARI $ARI_URL within 60 s"
}

stop_asterisk() {
    local pids pid
    if alive "$RUN/asterisk.pid"; then
        say "stopping Asterisk"
        timeout 10 chroot "$ROOT" /usr/sbin/asterisk -rx "core stop now" >/dev/null 2>&1 || true
        stop_pid "$(<"$RUN/asterisk.pid")" 5
    fi
    rm -f "$RUN/asterisk.pid"
    pids=$(root_pids)
    for pid in $pids; do
        say "stopping leftover process $pid in the Asterisk root"
        stop_pid "$pid" 3
    done
    if mountpoint -q "$ROOT/proc" 2>/dev/null; then
        umount "$ROOT/proc" || umount -l "$ROOT/proc"
    fi
}

# --- PostgreSQL -------------------------------------------------------------
# From /: the postgres user cannot enter a private checkout (mktemp -d is 0700),
# and every tool would say so ("could not change directory"). Paths are absolute.
as_pg() { (cd / && runuser -u postgres -- "$@"); }

# The postgres user would need search (x) permission on every directory above
# $PG_DATA, which a checkout under a private directory (/root) lacks. Instead of
# opening them, it gets the directory itself at $PG_MOUNT (a bind mount).
mount_pg_data() {
    mkdir -p "$PG_MOUNT"
    mountpoint -q "$PG_MOUNT" || mount --bind "$PG_DATA" "$PG_MOUNT"
}

unmount_pg_data() {
    if mountpoint -q "$PG_MOUNT" 2>/dev/null; then umount "$PG_MOUNT" || umount -l "$PG_MOUNT"; fi
    rmdir "$PG_MOUNT" 2>/dev/null || true
}

pg_running() {
    [[ -f $PG_DATA/postmaster.pid ]] && mountpoint -q "$PG_MOUNT" &&
        as_pg "$PG_BIN/pg_ctl" -D "$PG_MOUNT" status >/dev/null 2>&1
}

start_postgres() {
    if [[ -n ${CONSENTD_DATABASE_URL:-} ]]; then
        say "using CONSENTD_DATABASE_URL; not starting PostgreSQL"
        return
    fi
    mkdir -p "$PG_DATA"
    chown postgres: "$PG_DATA"
    chmod 700 "$PG_DATA"
    if [[ -f $PG_DATA/PG_VERSION && ! -f $PG_AUTH_STAMP ]]; then
        # Made before password authentication (initdb -A trust): throwaway
        # data, so it is made again rather than converted.
        say "re-creating $PG_DATA with password authentication (it trusted every connection; its ledger rows go)"
        stop_postgres
        find "$PG_DATA" -mindepth 1 -delete
    fi
    mount_pg_data
    if pg_running; then
        say "PostgreSQL already running ($PG_DATA)"
    else
        if [[ ! -f $PG_DATA/PG_VERSION ]]; then
            say "initdb $PG_DATA"
            # Superuser postgres over the unix socket (peer: the postgres OS user
            # only, for this script); everything over TCP needs a password.
            as_pg "$PG_BIN/initdb" -D "$PG_MOUNT" -U postgres --auth-local=peer \
                --auth-host=scram-sha-256 >"$STATE/pg-initdb.log" 2>&1 || {
                tail_logs "$STATE/pg-initdb.log"
                die "initdb failed"
            }
            echo scram-sha-256 >"$PG_AUTH_STAMP"
        fi
        mkdir -p "$PG_SOCK"
        chown postgres: "$PG_SOCK"
        say "starting PostgreSQL on 127.0.0.1:$PG_PORT"
        as_pg "$PG_BIN/pg_ctl" -D "$PG_MOUNT" -l "$PG_MOUNT/server.log" -w -t 30 \
            -o "-k $PG_SOCK -p $PG_PORT -c listen_addresses=127.0.0.1" start >/dev/null || {
            tail_logs "$PG_DATA/server.log"
            die "PostgreSQL did not start (is port $PG_PORT taken by another checkout?)"
        }
    fi
    set_role_passwords
    if [[ -z $(psql_q postgres "SELECT 1 FROM pg_database WHERE datname = 'consentd'") ]]; then
        psql_q postgres "CREATE DATABASE consentd OWNER consentd_owner" >/dev/null
        say "created database consentd"
    fi
    restrict_roles
}

# Role consentd_owner owns the database and everything in it; role consentd
# (the daemon's) owns nothing, may connect, and gets its rights on each table
# from the migration that creates it. Idempotent: objects an older checkout
# made as consentd pass to consentd_owner.
restrict_roles() {
    psql_script postgres <<'SQL' || die "could not set the database's owner and privileges"
ALTER DATABASE consentd OWNER TO consentd_owner;
REVOKE ALL ON DATABASE consentd FROM PUBLIC;
GRANT CONNECT ON DATABASE consentd TO consentd;
SQL
    psql_script consentd <<'SQL' || die "could not pass role consentd's objects to consentd_owner"
REASSIGN OWNED BY consentd TO consentd_owner;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
SQL
}

psql_script() { as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCK" -p "$PG_PORT" -U postgres -d "$1" >/dev/null; }

# The migrations run as the schema's owner (consentd migrate), never as the
# daemon; the daemon refuses to start on a schema behind them.
migrate_ledger() {
    local out
    if [[ -n ${CONSENTD_DATABASE_URL:-} ]]; then
        if [[ -z ${CONSENTD_MIGRATION_DATABASE_URL:-}${CONSENTD_MIGRATION_DATABASE_URL_FILE:-} ]]; then
            say "no CONSENTD_MIGRATION_DATABASE_URL: not migrating $(redact_url "$CONSENTD_DATABASE_URL")"
            return
        fi
        out=$("$REPO/.venv/bin/consentd" migrate </dev/null) || die "consentd migrate failed"
    else
        out=$(
            unset CONSENTD_MIGRATION_DATABASE_URL_FILE CONSENTD_MIGRATION_DATABASE_PASSWORD
            export CONSENTD_MIGRATION_DATABASE_URL=$OWNER_DB_URL \
                CONSENTD_MIGRATION_DATABASE_PASSWORD_FILE=$SECRETS/database_owner_password
            exec "$REPO/.venv/bin/consentd" migrate </dev/null
        ) || die "consentd migrate (as role consentd_owner) failed"
    fi
    say "$out"
}

# Administration as the superuser postgres, over the unix socket.
psql_q() { as_pg "$PG_BIN/psql" -X -q -t -A -h "$PG_SOCK" -p "$PG_PORT" -U postgres -d "$1" -c "$2"; }

# Roles consentd and consentd_owner log in with this checkout's passwords. The
# server only ever sees their SCRAM verifiers (computed here, sent on psql's
# stdin), so a password reaches no command line, no statement and no server log.
scram_verifier() {
    python3 -c '
import base64, hashlib, hmac, os, sys
password = open(sys.argv[1], encoding="utf-8").read().strip().encode()
salt, rounds = os.urandom(16), 4096
salted = hashlib.pbkdf2_hmac("sha256", password, salt, rounds)
client = hmac.new(salted, b"Client Key", "sha256").digest()
server = hmac.new(salted, b"Server Key", "sha256").digest()
b64 = lambda b: base64.b64encode(b).decode()
print(f"SCRAM-SHA-256${rounds}:{b64(salt)}${b64(hashlib.sha256(client).digest())}:{b64(server)}")
' "$SECRETS/$1"
}

set_role_passwords() {
    local role secret
    for role in consentd_owner:database_owner_password consentd:database_password; do
        secret=${role#*:} role=${role%%:*}
        printf '%s\n' \
            "SELECT 'CREATE ROLE $role' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$role') \\gexec" \
            "ALTER ROLE $role LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD '$(scram_verifier "$secret")';"
    done | psql_script postgres || die "could not set the passwords of roles consentd and consentd_owner"
}

stop_postgres() {
    if pg_running; then
        say "stopping PostgreSQL"
        as_pg "$PG_BIN/pg_ctl" -D "$PG_MOUNT" -m fast -w -t 30 stop >/dev/null
    fi
    unmount_pg_data
    rm -rf "$PG_SOCK"
}

# --- consentd daemon ----------------------------------------------------------
health_ok() { [[ $(curl -s -o /dev/null -w '%{http_code}' -m 2 "$HEALTH_URL") == 200 ]]; }

start_consentd() {
    local policies=$1 db_url=$2 i
    if [[ ${CONSENTD_STACK_NO_DAEMON:-0} == 1 ]]; then
        # A daemon left from an earlier "up" would take the calls (and port
        # 8090) from the test's own daemon.
        stop_consentd
        say "CONSENTD_STACK_NO_DAEMON=1: not starting consentd"
        return
    fi
    [[ -x $REPO/.venv/bin/consentd ]] || die "$REPO/.venv/bin/consentd missing: run scripts/setup.sh"
    if alive "$RUN/consentd.pid"; then
        say "restarting consentd with $policies"
        stop_consentd
    fi
    mkdir -p "${CONSENTD_JOURNAL_DIR:-$STATE/journal}"
    chmod 700 "${CONSENTD_JOURNAL_DIR:-$STATE/journal}" # callers' numbers: the daemon's alone
    say "starting consentd --policies $policies"
    # The secrets go by file (CONSENTD_*_FILE), never on the command line; a
    # caller's own values for them would not fit this stack's Asterisk.
    (
        unset CONSENTD_ARI_PASSWORD CONSENTD_AMI_SECRET CONSENTD_API_TOKEN \
            CONSENTD_DATABASE_PASSWORD CONSENTD_DATABASE_PASSWORD_FILE CONSENTD_DATABASE_URL_FILE
        # Nor the schema owner's credentials: the daemon's role is enough for it.
        unset CONSENTD_MIGRATION_DATABASE_URL CONSENTD_MIGRATION_DATABASE_URL_FILE \
            CONSENTD_MIGRATION_DATABASE_PASSWORD CONSENTD_MIGRATION_DATABASE_PASSWORD_FILE
        export CONSENTD_ASTERISK_ROOT=$ROOT CONSENTD_DATABASE_URL=$db_url \
            CONSENTD_JOURNAL_DIR=${CONSENTD_JOURNAL_DIR:-$STATE/journal} \
            CONSENTD_ARI_PASSWORD_FILE=$SECRETS/ari_password \
            CONSENTD_AMI_SECRET_FILE=$SECRETS/ami_secret \
            CONSENTD_API_TOKEN_FILE=$SECRETS/api_token
        if [[ $db_url == "$DEFAULT_DB_URL" ]]; then
            export CONSENTD_DATABASE_PASSWORD_FILE=$SECRETS/database_password
        fi
        exec setsid "$REPO/.venv/bin/consentd" run --policies "$policies" \
            >>"$STATE/consentd.log" 2>&1 </dev/null
    ) &
    echo $! >"$RUN/consentd.pid"
    for ((i = 0; i < 60; i++)); do
        if ! alive "$RUN/consentd.pid"; then
            tail_logs "$STATE/consentd.log"
            die "consentd exited during start-up (log: $STATE/consentd.log)"
        fi
        if health_ok; then
            say "consentd ready (pid $(<"$RUN/consentd.pid"))"
            return
        fi
        sleep 0.5
    done
    tail_logs "$STATE/consentd.log"
    die "consentd did not answer $HEALTH_URL within 30 s (still running, pid $(<"$RUN/consentd.pid"); 'scripts/stack.sh down' stops it)"
}

stop_consentd() {
    if alive "$RUN/consentd.pid"; then
        say "stopping consentd"
        stop_pid "$(<"$RUN/consentd.pid")" 15 # SIGTERM lets calls finish their ledger writes
    fi
    rm -f "$RUN/consentd.pid"
}

# --- .state/stack.json -----------------------------------------------------------
# Every endpoint and credential of this stack, for tests and tools (mode 0600).
write_stack_json() {
    local db_url=$1
    (umask 077 && STACK_DB_URL=$db_url STACK_OWNER_URL=$([[ $db_url == "$DEFAULT_DB_URL" ]] && echo "$OWNER_DB_URL" || echo "${CONSENTD_MIGRATION_DATABASE_URL:-}") python3 -c '
import json, os, pathlib, sys, urllib.parse
secrets_dir, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
db_url = os.environ["STACK_DB_URL"]  # not an argument: an external URL may hold a password
owner_url = os.environ["STACK_OWNER_URL"] or None  # external: only when given
def secret(name):
    return (secrets_dir / name).read_text(encoding="utf-8").strip()
def with_password(url, name):
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    password = urllib.parse.quote(secret(name), safe="")
    return f"{scheme}://{user}:{password}@{host}"
if sys.argv[3] == "local":  # our cluster: the URLs get the generated passwords
    db_url = with_password(db_url, "database_password")
    owner_url = with_password(owner_url, "database_owner_password")
stack = {
    "sip": "127.0.0.1:5060",
    "ari": {"url": sys.argv[4], "user": "consentd", "password": secret("ari_password")},
    "ami": {"host": "127.0.0.1", "port": 5038, "user": "consentd", "password": secret("ami_secret")},
    "ami_tests": {"user": "consentd-tests", "password": secret("ami_tests_secret")},
    "database_url": db_url,  # role consentd: append to the ledger, read it
    "migration_database_url": owner_url,  # role consentd_owner: owns the schema
    "http": sys.argv[5],
    "api_token": secret("api_token"),
    "agents": {
        f"agent{n}": {"user": f"agent{n}", "password": secret(f"agent{n}_password"), "port": 5070 + n}
        for n in (1, 2, 3)
    },
    "trunk": "127.0.0.1:5062",
    "secrets_dir": str(secrets_dir),
}
tmp = out.with_name(out.name + ".tmp")
tmp.write_text(json.dumps(stack, indent=2) + "\n", encoding="utf-8")
tmp.chmod(0o600)
tmp.replace(out)
' "$SECRETS" "$STACK_JSON" "$([[ $db_url == "$DEFAULT_DB_URL" ]] && echo local || echo external)" \
        "$ARI_URL" "$HTTP_URL")
}

# --- commands -----------------------------------------------------------------
cmd_up() {
    local policies=${1:-$REPO/examples/policies.yaml}
    [[ -f $policies ]] || die "policies file not found: $policies"
    policies=$(realpath "$policies")
    [[ $EUID -eq 0 ]] || die "must run as root (chroot, mount, runuser)"
    if [[ ! -f $ROOT/.consentd-root-stamp || ! -x $REPO/.venv/bin/python || ! -d $REPO/.cache/sounds ]]; then
        "$REPO/scripts/setup.sh"
    fi
    mkdir -p "$RUN"
    ensure_secrets # normally done by setup.sh already; cheap
    local started=$SECONDS
    local db_url=${CONSENTD_DATABASE_URL:-$DEFAULT_DB_URL}
    start_asterisk
    start_postgres
    migrate_ledger
    write_stack_json "$db_url"
    start_consentd "$policies" "$db_url"
    cat <<EOF
==> stack up in $((SECONDS - started)) s
    SIP        udp 127.0.0.1:5060 (callers: context inbound; agents: 127.0.0.1:5071-5073)
    ARI        $ARI_URL (app consentd, user consentd)
    AMI        127.0.0.1:5038 (user consentd)
    database   $(redact_url "$db_url")
    consentd   $HTTP_URL$([[ ${CONSENTD_STACK_NO_DAEMON:-0} == 1 ]] && echo " (not started)")
    recordings $ROOT/var/spool/asterisk/monitor
    logs       $STATE/consentd.log, $ROOT/var/log/asterisk/messages
    secrets    $SECRETS (generated for this checkout)
==> endpoints and credentials: $STACK_JSON
EOF
}

cmd_down() {
    stop_consentd
    stop_asterisk
    stop_postgres
    say "stack down"
}

cmd_status() {
    if alive "$RUN/asterisk.pid"; then
        echo "asterisk   running (pid $(<"$RUN/asterisk.pid"))$(ari_answers && echo ", ARI answers")"
    else
        echo "asterisk   stopped"
    fi
    if [[ -n ${CONSENTD_DATABASE_URL:-} ]]; then
        echo "postgres   external: $(redact_url "$CONSENTD_DATABASE_URL")"
    elif pg_running; then
        echo "postgres   running ($DEFAULT_DB_URL)"
    else
        echo "postgres   stopped"
    fi
    if alive "$RUN/consentd.pid"; then
        echo "consentd   running (pid $(<"$RUN/consentd.pid"))$(health_ok && echo ", healthz 200")"
    else
        echo "consentd   stopped"
    fi
    if mountpoint -q "$ROOT/proc" 2>/dev/null; then echo "mount      $ROOT/proc"; fi
    if mountpoint -q "$PG_MOUNT" 2>/dev/null; then echo "mount      $PG_MOUNT ($PG_DATA)"; fi
    if [[ -f $STACK_JSON ]]; then echo "stack.json $STACK_JSON"; fi
}

[[ ${BASH_SOURCE[0]} == "$0" ]] || return 0 # sourced: the functions only

case ${1:-} in
up) shift; cmd_up "$@" ;;
down) cmd_down ;;
status) cmd_status ;;
# Fault injection: take the throwaway PostgreSQL away and bring it back while
# Asterisk and consentd keep running (consentd journals meanwhile).
db-stop) stop_postgres ;;
db-start) start_postgres ;;
# Fault injection: Asterisk goes away and comes back (every call on it ends).
asterisk-restart) mkdir -p "$RUN"; stop_asterisk; start_asterisk ;;
*) echo "usage: $0 up [POLICIES_FILE] | down | status | db-stop | db-start | asterisk-restart" >&2; exit 2 ;;
esac
