#!/usr/bin/env bash
# The files Asterisk's container includes for its secrets, from this
# checkout's secrets (scripts/secrets.sh), into DIR:
#
#   scripts/container-secrets.sh DIR [SECRETS_DIR]
#
#   consentd-secrets-ami.conf        secret of AMI user consentd       (manager.conf)
#   consentd-secrets-ami-tests.conf  secret of AMI user consentd-tests (manager.conf)
#   consentd-secrets-ari.conf        password of ARI user consentd     (ari.conf)
#   consentd-secrets-pjsip.conf      auth sections agent1-auth..agent3-auth (pjsip.conf)
#
# Mount DIR at /run/secrets in the Asterisk container (asterisk/Containerfile
# links /etc/asterisk/consentd-secrets-*.conf there). DIR is 0750 and each
# file 0640, group 10002 (the image's asterisk): Asterisk reads them, nobody else.
# The same text scripts/stack.sh writes into the chroot's /etc/asterisk.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${1:?usage: $0 DIR [SECRETS_DIR]}
SECRETS=${2:-$REPO/.state/secrets}
ASTERISK_GID=10002

[[ -d $SECRETS ]] || "$REPO/scripts/secrets.sh" "$SECRETS"
secret() { printf '%s' "$(<"$SECRETS/$1")"; }

umask 077
mkdir -p "$DIR"
write() { # write NAME: the text on stdin
    cat >"$DIR/$1.tmp"
    chgrp "$ASTERISK_GID" "$DIR/$1.tmp"
    chmod 0640 "$DIR/$1.tmp"
    mv "$DIR/$1.tmp" "$DIR/$1"
}
printf 'secret = %s\n' "$(secret ami_secret)" | write consentd-secrets-ami.conf
printf 'secret = %s\n' "$(secret ami_tests_secret)" | write consentd-secrets-ami-tests.conf
printf 'password = %s\n' "$(secret ari_password)" | write consentd-secrets-ari.conf
for n in 1 2 3; do
    printf '[agent%s-auth]\ntype = auth\nauth_type = userpass\nusername = agent%s\npassword = %s\n\n' \
        "$n" "$n" "$(secret "agent${n}_password")"
done | write consentd-secrets-pjsip.conf
chgrp "$ASTERISK_GID" "$DIR"
chmod 0750 "$DIR"
