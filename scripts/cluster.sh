#!/usr/bin/env bash
# Several PBX nodes: Kamailio dispatches inbound SIP over two Asterisk nodes,
# each with its own consentd, all on 127.0.0.1, beside the dev stack.
#
#   scripts/cluster.sh up [POLICIES_FILE]   start what is not running yet
#   scripts/cluster.sh down                 stop everything this script started
#   scripts/cluster.sh stop-node NODE       kill NODE's Asterisk (SIGKILL: a crash)
#   scripts/cluster.sh start-node NODE      start NODE's Asterisk again
#   scripts/cluster.sh status               show what runs
#
#              callers ──► Kamailio udp 127.0.0.1:5090 (dispatcher, OPTIONS probes)
#                            │                          │
#           pbx-a: Asterisk sip 5160            pbx-b: Asterisk sip 5260
#                  ARI 8188, AMI 5138                  ARI 8288, AMI 5238
#                  consentd 8190                       consentd 8290
#                            └──────► PostgreSQL 55432 ◄┘ (the dev stack's, one ledger)
#
# Both Asterisks run from the dev stack's root (.cache/asterisk-root), seen
# through a bind mount at /run/consentd-cluster-<id>/root with a procfs of its
# own, so that scripts/stack.sh neither counts nor stops them. Each node has
# its own config, spool, log, run and db directories inside the root
# (/etc/asterisk-nodes/NODE, /var/{spool,log,run,lib,cache}/asterisk-nodes/NODE),
# generated from asterisk-conf/ and dialplan/ with the node's ports. Each
# consentd runs with CONSENTD_NODE=NODE, its own HTTP port and journal, and the
# dev stack's database: either one's API shows the calls of both.
# PostgreSQL is started (scripts/stack.sh's start_postgres) when it is not
# running, and then stopped again by "down".
# Kamailio (Debian's package; its system service is never used) runs as user
# kamailio with deploy/kamailio/kamailio.cfg. Endpoints: .state/cluster/cluster.json.
set -euo pipefail
# shellcheck source=scripts/stack.sh
source "$(dirname "${BASH_SOURCE[0]}")/stack.sh" # the stack's functions and paths

NODES=(pbx-a pbx-b)
CLUSTER_STATE=$STATE/cluster
CLUSTER_RUN=$CLUSTER_STATE/run
CLUSTER_ROOT=/run/consentd-cluster-$CHECKOUT_ID/root
KAM_RUN=/run/consentd-cluster-$CHECKOUT_ID/kamailio # user kamailio's: it may not reach $REPO
KAM_PORT=5090
KAM_CFG=$REPO/deploy/kamailio/kamailio.cfg
CLUSTER_JSON=$CLUSTER_STATE/cluster.json

# node_index NODE: 1, 2, ...; the node's ports are derived from it.
node_index() {
    local i
    for i in "${!NODES[@]}"; do
        [[ ${NODES[$i]} == "$1" ]] && { echo $((i + 1)); return; }
    done
    die "no node $1 (nodes: ${NODES[*]})"
}
sip_port() { echo $((5060 + 100 * $(node_index "$1"))); }   # 5160, 5260
ari_port() { echo $((8088 + 100 * $(node_index "$1"))); }   # 8188, 8288
ami_port() { echo $((5038 + 100 * $(node_index "$1"))); }   # 5138, 5238
http_port() { echo $((8090 + 100 * $(node_index "$1"))); }  # 8190, 8290
rtp_start() { echo $((36000 + 2000 * $(node_index "$1"))); } # 38000-39999, 40000-41999
node_conf() { echo "/etc/asterisk-nodes/$1"; } # inside the root

# --- the root, seen through the cluster's own mount --------------------------
mount_cluster_root() {
    mkdir -p "$CLUSTER_ROOT"
    if ! mountpoint -q "$CLUSTER_ROOT"; then
        mount --bind "$ROOT" "$CLUSTER_ROOT"
        mount --make-private "$CLUSTER_ROOT" # its /proc below stays its own
    fi
    if ! mountpoint -q "$CLUSTER_ROOT/proc"; then
        mount -t proc -o nosuid,nodev,noexec,hidepid=invisible,subset=pid proc "$CLUSTER_ROOT/proc"
    fi
}

unmount_cluster_root() {
    if mountpoint -q "$CLUSTER_ROOT/proc" 2>/dev/null; then
        umount "$CLUSTER_ROOT/proc" || umount -l "$CLUSTER_ROOT/proc"
    fi
    if mountpoint -q "$CLUSTER_ROOT" 2>/dev/null; then umount "$CLUSTER_ROOT" || umount -l "$CLUSTER_ROOT"; fi
    rmdir "$CLUSTER_ROOT" 2>/dev/null || true
}

cluster_root_pids() {
    local p
    for p in /proc/[0-9]*; do
        [[ $(readlink "$p/root" 2>/dev/null) == "$CLUSTER_ROOT" ]] && echo "${p#/proc/}"
    done
    return 0
}

# --- one node's Asterisk -------------------------------------------------------
# write_node_config NODE: asterisk-conf/ and dialplan/ with the node's
# directories and ports, and the stack's secrets.
write_node_config() {
    local node=$1 etc dir sip rtp
    etc=$ROOT$(node_conf "$node")
    sip=$(sip_port "$node") rtp=$(rtp_start "$node")
    rm -rf "$etc"
    mkdir -p "$etc"
    cp "$REPO"/asterisk-conf/*.conf "$REPO"/dialplan/*.conf "$etc/"
    # The node's own directories; the sounds (/var/lib/asterisk/sounds) are shared.
    # Without "(!)": a template's directories are ignored (the built-in ones apply).
    sed -i -E \
        -e 's#^\[directories\]\(!\)#[directories]#' \
        -e "s#^(astetcdir *=> *)/etc/asterisk#\1$(node_conf "$node")#" \
        -e "s#^(ast(db|cache)dir *=> *)/var/(lib|cache)/asterisk#\1/var/\3/asterisk-nodes/$node#" \
        -e "s#^(ast(spool|run|log)dir *=> *)/var/(spool|run|log)/asterisk#\1/var/\3/asterisk-nodes/$node#" \
        "$etc/asterisk.conf"
    sed -i -E "s#^bind = 127\.0\.0\.1:5060#bind = 127.0.0.1:$sip#" "$etc/pjsip.conf"
    sed -i -E "s#^bindport = 8088#bindport = $(ari_port "$node")#" "$etc/http.conf"
    sed -i -E "s#^port = 5038#port = $(ami_port "$node")#" "$etc/manager.conf"
    sed -i -E "s#^rtpstart = .*#rtpstart = $rtp#; s#^rtpend = .*#rtpend = $((rtp + 1999))#" "$etc/rtp.conf"
    sed -i -E "s#/var/(log|spool)/asterisk/#/var/\1/asterisk-nodes/$node/#g" "$etc/extensions.conf"
    [[ $(grep -c "asterisk-nodes/$node" "$etc/asterisk.conf") == 6 ]] && grep -q '^\[directories\]$' "$etc/asterisk.conf" ||
        die "$etc/asterisk.conf: the node's six directories were not set (asterisk-conf/asterisk.conf changed?)"
    for dir in spool run log lib cache; do mkdir -p "$ROOT/var/$dir/asterisk-nodes/$node"; done
    grep -q "bind = 127.0.0.1:$sip" "$etc/pjsip.conf" || die "pjsip.conf: transport not on port $sip"
    ASTERISK_ETC=$etc install_secret_confs || true
}

# The node's directories, as prepare_asterisk_dirs makes the stack's.
prepare_node_dirs() {
    local node=$1 uid gid rgid spool dir
    uid=$(root_id passwd asterisk) gid=$(root_id group asterisk) rgid=$(root_id group "$RECORDING_GROUP")
    [[ -n $rgid ]] || die "CONSENTD_RECORDING_GROUP=$RECORDING_GROUP: no such group in $ROOT/etc/group"
    for dir in run log lib cache; do
        chown -R "$uid:$gid" "$ROOT/var/$dir/asterisk-nodes/$node"
    done
    spool=$ROOT/var/spool/asterisk-nodes/$node
    chown "$uid:$rgid" "$ROOT/var/spool/asterisk-nodes" "$spool"
    chmod 750 "$ROOT/var/spool/asterisk-nodes" "$spool"
    for dir in "$spool/monitor" "$spool/recording"; do
        mkdir -p "$dir"
        chown "$uid:$rgid" "$dir"
        chmod 2750 "$dir"
    done
    : >"$ROOT/var/log/asterisk-nodes/$node/messages"
    chown "$uid:$gid" "$ROOT/var/log/asterisk-nodes/$node/messages"
}

node_ami_answers() ( # subshell: the descriptor and a failed connect stay in here
    exec 3<>"/dev/tcp/127.0.0.1/$(ami_port "$1")" || exit 1
    read -r -t 2 banner <&3 || true
    [[ $banner == "Asterisk Call Manager"* ]]
)

node_ari_answers() {
    [[ $(printf 'user = "consentd:%s"\n' "$(secret ari_password)" |
        curl -s -K - -o /dev/null -w '%{http_code}' -m 2 \
            "http://127.0.0.1:$(ari_port "$1")/ari/asterisk/info") == 200 ]]
}

start_node_asterisk() {
    local node=$1 pid_file=$CLUSTER_RUN/$1.asterisk.pid i
    if alive "$pid_file"; then
        say "$node: Asterisk already running (pid $(<"$pid_file"))"
        return
    fi
    write_node_config "$node"
    prepare_node_dirs "$node"
    say "$node: starting Asterisk (SIP udp 127.0.0.1:$(sip_port "$node")) ..."
    (umask 027 && exec setsid chroot "$CLUSTER_ROOT" /usr/sbin/asterisk \
        -C "$(node_conf "$node")/asterisk.conf" -f -n -U asterisk -G asterisk) \
        >"$CLUSTER_STATE/$node.asterisk.console.log" 2>&1 </dev/null &
    echo $! >"$pid_file"
    for ((i = 0; i < 120; i++)); do
        if ! alive "$pid_file"; then
            tail_logs "$CLUSTER_STATE/$node.asterisk.console.log" "$ROOT/var/log/asterisk-nodes/$node/messages"
            die "$node: Asterisk exited during start-up"
        fi
        if node_ami_answers "$node" 2>/dev/null && node_ari_answers "$node"; then
            say "$node: Asterisk ready (pid $(<"$pid_file"), $((i / 2)) s)"
            return
        fi
        sleep 0.5
    done
    tail_logs "$CLUSTER_STATE/$node.asterisk.console.log" "$ROOT/var/log/asterisk-nodes/$node/messages"
    die "$node: Asterisk did not answer on AMI and ARI within 60 s"
}

# stop_node_asterisk NODE [kill]: "core stop now", or SIGKILL (a crash).
stop_node_asterisk() {
    local node=$1 how=${2:-stop} pid_file=$CLUSTER_RUN/$1.asterisk.pid pid
    if alive "$pid_file"; then
        pid=$(<"$pid_file")
        if [[ $how == kill ]]; then
            say "$node: killing Asterisk (pid $pid, SIGKILL)"
            kill -KILL "$pid" 2>/dev/null || true
            while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
        else
            say "$node: stopping Asterisk"
            timeout 10 chroot "$CLUSTER_ROOT" /usr/sbin/asterisk -C "$(node_conf "$node")/asterisk.conf" \
                -rx "core stop now" >/dev/null 2>&1 || true
            stop_pid "$pid" 5
        fi
    fi
    rm -f "$pid_file"
}

# --- one node's consentd -------------------------------------------------------
start_node_consentd() {
    local node=$1 policies=$2 pid_file=$CLUSTER_RUN/$1.consentd.pid journal i url
    url=http://127.0.0.1:$(http_port "$node")/healthz
    if alive "$pid_file"; then
        say "$node: restarting consentd with $policies"
        stop_pid "$(<"$pid_file")" 15
    fi
    journal=$CLUSTER_STATE/$node/journal
    mkdir -p "$journal"
    chmod 700 "$CLUSTER_STATE/$node" "$journal"
    say "$node: starting consentd (CONSENTD_NODE=$node, http 127.0.0.1:$(http_port "$node"))"
    (
        unset CONSENTD_ARI_PASSWORD CONSENTD_AMI_SECRET CONSENTD_API_TOKEN CONSENTD_DATABASE_URL_FILE \
            CONSENTD_DATABASE_PASSWORD CONSENTD_MIGRATION_DATABASE_URL CONSENTD_MIGRATION_DATABASE_URL_FILE \
            CONSENTD_MIGRATION_DATABASE_PASSWORD CONSENTD_MIGRATION_DATABASE_PASSWORD_FILE
        export CONSENTD_NODE=$node \
            CONSENTD_ASTERISK_ROOT=$ROOT \
            CONSENTD_ASTERISK_CONFIG_DIR=$(node_conf "$node") \
            CONSENTD_RECORDING_DIR=/var/spool/asterisk-nodes/$node/monitor \
            CONSENTD_FALLBACK_LOG=/var/log/asterisk-nodes/$node/consentd-fallback.log \
            CONSENTD_ARI_URL=http://127.0.0.1:$(ari_port "$node")/ari \
            CONSENTD_AMI_PORT=$(ami_port "$node") \
            CONSENTD_HTTP_PORT=$(http_port "$node") \
            CONSENTD_JOURNAL_DIR=$journal \
            CONSENTD_DATABASE_URL=$DEFAULT_DB_URL \
            CONSENTD_DATABASE_PASSWORD_FILE=$SECRETS/database_password \
            CONSENTD_ARI_PASSWORD_FILE=$SECRETS/ari_password \
            CONSENTD_AMI_SECRET_FILE=$SECRETS/ami_secret \
            CONSENTD_API_TOKEN_FILE=$SECRETS/api_token
        exec setsid "$REPO/.venv/bin/consentd" run --policies "$policies" \
            >>"$CLUSTER_STATE/$node.consentd.log" 2>&1 </dev/null
    ) &
    echo $! >"$pid_file"
    for ((i = 0; i < 60; i++)); do
        if ! alive "$pid_file"; then
            tail_logs "$CLUSTER_STATE/$node.consentd.log"
            die "$node: consentd exited during start-up"
        fi
        if [[ $(curl -s -o /dev/null -w '%{http_code}' -m 2 "$url") == 200 ]]; then
            say "$node: consentd ready (pid $(<"$pid_file"))"
            return
        fi
        sleep 0.5
    done
    tail_logs "$CLUSTER_STATE/$node.consentd.log"
    die "$node: consentd did not answer $url within 30 s"
}

stop_node_consentd() {
    local pid_file=$CLUSTER_RUN/$1.consentd.pid
    if alive "$pid_file"; then
        say "$1: stopping consentd"
        stop_pid "$(<"$pid_file")" 15
    fi
    rm -f "$pid_file"
}

# --- Kamailio ----------------------------------------------------------------
start_kamailio() {
    local pid_file=$CLUSTER_RUN/kamailio.pid node i
    if alive "$pid_file"; then
        say "Kamailio already running (pid $(<"$pid_file"))"
        return
    fi
    command -v kamailio >/dev/null || die "kamailio is not installed: run scripts/setup.sh"
    mkdir -p "$KAM_RUN"
    for node in "${NODES[@]}"; do
        printf '1 sip:127.0.0.1:%s 0 0 node=%s\n' "$(sip_port "$node")" "$node"
    done >"$KAM_RUN/dispatcher.list"
    cp "$KAM_CFG" "$KAM_RUN/kamailio.cfg"
    chown -R kamailio:kamailio "$KAM_RUN"
    chmod 750 "$KAM_RUN"
    say "starting Kamailio on udp 127.0.0.1:$KAM_PORT (user kamailio)"
    # Foreground (-DD), logging to stderr (-E), as user kamailio from the start.
    # setpriv execs (runuser would stay as Kamailio's parent): $! is Kamailio.
    (exec setsid setpriv --reuid=kamailio --regid=kamailio --init-groups -- /usr/sbin/kamailio -DD -E \
        -f "$KAM_RUN/kamailio.cfg" -Y "$KAM_RUN" -m 64 -M 8 \
        -A "LISTEN=udp:127.0.0.1:$KAM_PORT" -A "DS_LIST=\"$KAM_RUN/dispatcher.list\"" \
        -A "CTL_SOCK=\"unix:$KAM_RUN/kamailio_ctl\"") \
        >>"$CLUSTER_STATE/kamailio.log" 2>&1 </dev/null &
    echo $! >"$pid_file"
    for ((i = 0; i < 40; i++)); do
        if ! alive "$pid_file"; then
            tail_logs "$CLUSTER_STATE/kamailio.log"
            die "Kamailio exited during start-up"
        fi
        if kamailio_answers; then
            say "Kamailio ready (pid $(<"$pid_file"))"
            return
        fi
        sleep 0.25
    done
    tail_logs "$CLUSTER_STATE/kamailio.log"
    die "Kamailio did not answer its control socket within 10 s"
}

kamailio_answers() { kamcmd -s "unix:$KAM_RUN/kamailio_ctl" core.version >/dev/null 2>&1; }

stop_kamailio() {
    local pid_file=$CLUSTER_RUN/kamailio.pid
    if alive "$pid_file"; then
        say "stopping Kamailio"
        stop_pid "$(<"$pid_file")" 5
    fi
    rm -f "$pid_file"
    rm -rf "$KAM_RUN"
}

# --- .state/cluster/cluster.json -----------------------------------------------
write_cluster_json() {
    local node sep='' nodes=''
    for node in "${NODES[@]}"; do
        nodes+=$sep$(printf '"%s": {"sip": "127.0.0.1:%s", "ari": "http://127.0.0.1:%s/ari", "ami_port": %s, "http": "http://127.0.0.1:%s", "spool": "%s", "log": "%s"}' \
            "$node" "$(sip_port "$node")" "$(ari_port "$node")" "$(ami_port "$node")" "$(http_port "$node")" \
            "$ROOT/var/spool/asterisk-nodes/$node" "$ROOT/var/log/asterisk-nodes/$node")
        sep=', '
    done
    printf '{"proxy": "127.0.0.1:%s", "kamailio_log": "%s", "kamailio_ctl": "unix:%s", "nodes": {%s}}\n' \
        "$KAM_PORT" "$CLUSTER_STATE/kamailio.log" "$KAM_RUN/kamailio_ctl" "$nodes" >"$CLUSTER_JSON"
}

# --- commands -----------------------------------------------------------------
cluster_up() {
    local policies=${1:-$REPO/examples/policies.yaml} node started=$SECONDS
    [[ -f $policies ]] || die "policies file not found: $policies"
    policies=$(realpath "$policies")
    [[ $EUID -eq 0 ]] || die "must run as root (chroot, mount, runuser)"
    if [[ ! -f $ROOT/.consentd-root-stamp || ! -x $REPO/.venv/bin/python ]] || ! command -v kamailio >/dev/null; then
        "$REPO/scripts/setup.sh"
    fi
    mkdir -p "$CLUSTER_RUN" "$RUN"
    chmod 700 "$CLUSTER_STATE"
    ensure_secrets
    if ! pg_running; then
        touch "$CLUSTER_STATE/postgres-ours" # "down" stops it again
    fi
    start_postgres
    migrate_ledger
    prepare_asterisk_user
    alive "$RUN/asterisk.pid" || install_sounds # the running stack's Asterisk installed them
    printf '127.0.0.1 localhost %s\n' "$(hostname)" >"$ROOT/etc/hosts"
    mount_cluster_root
    for node in "${NODES[@]}"; do start_node_asterisk "$node"; done
    for node in "${NODES[@]}"; do start_node_consentd "$node" "$policies"; done
    start_kamailio
    write_cluster_json
    say "cluster up in $((SECONDS - started)) s: callers to udp 127.0.0.1:$KAM_PORT; nodes ${NODES[*]}"
    say "endpoints: $CLUSTER_JSON (credentials: $STACK_JSON's)"
}

cluster_down() {
    local node pid
    stop_kamailio
    for node in "${NODES[@]}"; do stop_node_consentd "$node"; done
    for node in "${NODES[@]}"; do stop_node_asterisk "$node"; done
    for pid in $(cluster_root_pids); do
        say "stopping leftover process $pid in the cluster's root"
        stop_pid "$pid" 3
    done
    unmount_cluster_root
    if [[ -f $CLUSTER_STATE/postgres-ours ]]; then
        rm -f "$CLUSTER_STATE/postgres-ours"
        if alive "$RUN/asterisk.pid" || alive "$RUN/consentd.pid"; then
            say "PostgreSQL stays: the dev stack uses it now"
        else
            stop_postgres
        fi
    fi
    say "cluster down"
}

cluster_status() {
    local node
    if alive "$CLUSTER_RUN/kamailio.pid"; then
        echo "kamailio        running (pid $(<"$CLUSTER_RUN/kamailio.pid")), udp 127.0.0.1:$KAM_PORT"
        kamcmd -s "unix:$KAM_RUN/kamailio_ctl" dispatcher.list 2>/dev/null |
            awk '/URI:/ { uri = $2 } /FLAGS:/ { printf "  dispatcher    %s %s\n", uri, $2 }'
    else
        echo "kamailio        stopped"
    fi
    for node in "${NODES[@]}"; do
        if alive "$CLUSTER_RUN/$node.asterisk.pid"; then
            echo "$node asterisk  running (pid $(<"$CLUSTER_RUN/$node.asterisk.pid")), sip 127.0.0.1:$(sip_port "$node")"
        else
            echo "$node asterisk  stopped"
        fi
        if alive "$CLUSTER_RUN/$node.consentd.pid"; then
            echo "$node consentd  running (pid $(<"$CLUSTER_RUN/$node.consentd.pid")), http 127.0.0.1:$(http_port "$node")"
        else
            echo "$node consentd  stopped"
        fi
    done
    if pg_running; then echo "postgres        running (127.0.0.1:$PG_PORT)"; else echo "postgres        stopped"; fi
}

case ${1:-} in
up) shift; cluster_up "$@" ;;
down) cluster_down ;;
status) cluster_status ;;
stop-node) node_index "${2:?usage: $0 stop-node NODE}" >/dev/null; stop_node_asterisk "$2" kill ;;
start-node) node_index "${2:?usage: $0 start-node NODE}" >/dev/null; start_node_asterisk "$2" ;;
*) echo "usage: $0 up [POLICIES_FILE] | down | status | stop-node NODE | start-node NODE" >&2; exit 2 ;;
esac
