#!/usr/bin/env bash
# This checkout's secrets, generated once and kept on re-runs (idempotent).
#
#   scripts/secrets.sh [DIR]     default DIR: .state/secrets
#
# One file per secret, 48 hex characters from Python's `secrets` module
# (safe in URLs, Asterisk's config files and pg's SCRAM). DIR is mode 0700 and
# every file 0600. scripts/stack.sh up writes them into Asterisk's config and
# lists them in .state/stack.json; nothing in the repository holds a secret.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${1:-$REPO/.state/secrets}
NAMES=(
    ari_password      # ARI user "consentd" (ari.conf)
    ami_secret        # AMI user "consentd" (manager.conf), the daemon's
    ami_tests_secret  # AMI user "consentd-tests" (manager.conf), the e2e tests'
    database_password # PostgreSQL role "consentd", the daemon's: append and read the ledger
    database_owner_password # role "consentd_owner": owns the schema, runs the migrations
    api_token         # consentd's HTTP API
    agent1_password agent2_password agent3_password # pjsip auth agentN-auth
)

umask 077
mkdir -p "$DIR"
chmod 700 "$DIR"
made=()
for name in "${NAMES[@]}"; do
    file=$DIR/$name
    if [[ -s $file ]]; then
        chmod 600 "$file"
        continue
    fi
    python3 -c 'import secrets; print(secrets.token_hex(24))' >"$file.tmp"
    mv "$file.tmp" "$file"
    made+=("$name")
done
if ((${#made[@]})); then
    printf '==> generated secrets in %s: %s\n' "$DIR" "${made[*]}"
fi
