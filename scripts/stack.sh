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
set -euo pipefail
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
# Unix socket paths are limited to ~107 bytes: keep the socket out of the repo.
PG_SOCK=/tmp/consentd-pg-$(printf '%s' "$REPO" | sha256sum | cut -c1-12)
DEFAULT_DB_URL=postgresql://consentd@127.0.0.1:$PG_PORT/consentd # the password comes apart
ARI_URL=http://127.0.0.1:8088/ari
HTTP_URL=http://127.0.0.1:8090
HEALTH_URL=$HTTP_URL/healthz
SECRETS=$STATE/secrets
STACK_JSON=$STATE/stack.json
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
    local file=$ROOT/etc/asterisk/$1 text
    text=$(cat)
    if [[ -f $file && $(<"$file") == "$text" ]]; then return 1; fi
    (umask 077 && printf '%s\n' "$text" >"$file.tmp") && mv "$file.tmp" "$file"
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

install_asterisk_files() {
    rm -rf "${ROOT:?}"/etc/asterisk/*
    cp "$REPO"/asterisk-conf/*.conf "$REPO"/dialplan/*.conf "$ROOT/etc/asterisk/"
    install_secret_confs || true
    mkdir -p "$ROOT/var/lib/asterisk/sounds" "$ROOT/var/spool/asterisk/monitor" \
        "$ROOT/var/spool/asterisk/recording"
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
    printf '127.0.0.1 localhost %s\n' "$(hostname)" >"$ROOT/etc/hosts"
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
    install_asterisk_files
    mountpoint -q "$ROOT/proc" || mount --bind /proc "$ROOT/proc"
    : >"$ROOT/var/log/asterisk/messages"
    say "starting Asterisk ..."
    # chroot execs asterisk, so $! is Asterisk's own pid.
    setsid chroot "$ROOT" /usr/sbin/asterisk -f -n >"$STATE/asterisk.console.log" 2>&1 </dev/null &
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
as_pg() { runuser -u postgres -- "$@"; }

# The postgres user needs search (x) permission on every directory above its
# data directory; a checkout under a private directory lacks it.
open_path_for_postgres() {
    local dir=$1
    while [[ $dir != / ]]; do
        if ! as_pg test -x "$dir" 2>/dev/null; then
            say "chmod o+x $dir (so the postgres user can reach $PG_DATA)"
            chmod o+x "$dir"
        fi
        dir=$(dirname "$dir")
    done
}

pg_running() { [[ -f $PG_DATA/postmaster.pid ]] && as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; }

start_postgres() {
    if [[ -n ${CONSENTD_DATABASE_URL:-} ]]; then
        say "using CONSENTD_DATABASE_URL; not starting PostgreSQL"
        return
    fi
    mkdir -p "$PG_DATA"
    open_path_for_postgres "$STATE"
    chown postgres: "$PG_DATA"
    chmod 700 "$PG_DATA"
    if [[ -f $PG_DATA/PG_VERSION && ! -f $PG_AUTH_STAMP ]]; then
        # Made before password authentication (initdb -A trust): throwaway
        # data, so it is made again rather than converted.
        say "re-creating $PG_DATA with password authentication (it trusted every connection; its ledger rows go)"
        stop_postgres
        find "$PG_DATA" -mindepth 1 -delete
    fi
    if pg_running; then
        say "PostgreSQL already running ($PG_DATA)"
    else
        if [[ ! -f $PG_DATA/PG_VERSION ]]; then
            say "initdb $PG_DATA"
            # Superuser postgres over the unix socket (peer: the postgres OS user
            # only, for this script); everything over TCP needs a password.
            as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth-local=peer \
                --auth-host=scram-sha-256 >"$STATE/pg-initdb.log" 2>&1 || {
                tail_logs "$STATE/pg-initdb.log"
                die "initdb failed"
            }
            echo scram-sha-256 >"$PG_AUTH_STAMP"
        fi
        mkdir -p "$PG_SOCK"
        chown postgres: "$PG_SOCK"
        say "starting PostgreSQL on 127.0.0.1:$PG_PORT"
        as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w -t 30 \
            -o "-k $PG_SOCK -p $PG_PORT -c listen_addresses=127.0.0.1" start >/dev/null || {
            tail_logs "$PG_DATA/server.log"
            die "PostgreSQL did not start (is port $PG_PORT taken by another checkout?)"
        }
    fi
    set_role_password
    if [[ -z $(psql_q postgres "SELECT 1 FROM pg_database WHERE datname = 'consentd'") ]]; then
        psql_q postgres "CREATE DATABASE consentd OWNER consentd" >/dev/null
        say "created database consentd"
    fi
}

# Administration as the superuser postgres, over the unix socket.
psql_q() { as_pg "$PG_BIN/psql" -X -q -t -A -h "$PG_SOCK" -p "$PG_PORT" -U postgres -d "$1" -c "$2"; }

# Role consentd logs in with this checkout's database password. The server
# only ever sees its SCRAM verifier (computed here, sent on psql's stdin), so
# the password reaches no command line, no statement and no server log.
set_role_password() {
    local verifier
    verifier=$(python3 -c '
import base64, hashlib, hmac, os, sys
password = open(sys.argv[1], encoding="utf-8").read().strip().encode()
salt, rounds = os.urandom(16), 4096
salted = hashlib.pbkdf2_hmac("sha256", password, salt, rounds)
client = hmac.new(salted, b"Client Key", "sha256").digest()
server = hmac.new(salted, b"Server Key", "sha256").digest()
b64 = lambda b: base64.b64encode(b).decode()
print(f"SCRAM-SHA-256${rounds}:{b64(salt)}${b64(hashlib.sha256(client).digest())}:{b64(server)}")
' "$SECRETS/database_password")
    printf '%s\n' \
        "SELECT 'CREATE ROLE consentd LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'consentd') \\gexec" \
        "ALTER ROLE consentd LOGIN PASSWORD '$verifier';" |
        as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCK" -p "$PG_PORT" -U postgres -d postgres >/dev/null ||
        die "could not set role consentd's password"
}

stop_postgres() {
    if pg_running; then
        say "stopping PostgreSQL"
        as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop >/dev/null
    fi
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
    say "starting consentd --policies $policies"
    # The secrets go by file (CONSENTD_*_FILE), never on the command line; a
    # caller's own values for them would not fit this stack's Asterisk.
    (
        unset CONSENTD_ARI_PASSWORD CONSENTD_AMI_SECRET CONSENTD_API_TOKEN \
            CONSENTD_DATABASE_PASSWORD CONSENTD_DATABASE_PASSWORD_FILE CONSENTD_DATABASE_URL_FILE
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
    (umask 077 && STACK_DB_URL=$db_url python3 -c '
import json, os, pathlib, sys, urllib.parse
secrets_dir, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
db_url = os.environ["STACK_DB_URL"]  # not an argument: an external URL may hold a password
def secret(name):
    return (secrets_dir / name).read_text(encoding="utf-8").strip()
if sys.argv[3] == "local":  # our cluster: the URL gets the generated password
    scheme, rest = db_url.split("://", 1)
    user, host = rest.split("@", 1)
    password = urllib.parse.quote(secret("database_password"), safe="")
    db_url = f"{scheme}://{user}:{password}@{host}"
stack = {
    "sip": "127.0.0.1:5060",
    "ari": {"url": sys.argv[4], "user": "consentd", "password": secret("ari_password")},
    "ami": {"host": "127.0.0.1", "port": 5038, "user": "consentd", "password": secret("ami_secret")},
    "ami_tests": {"user": "consentd-tests", "password": secret("ami_tests_secret")},
    "database_url": db_url,
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
    if [[ -f $STACK_JSON ]]; then echo "stack.json $STACK_JSON"; fi
}

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
