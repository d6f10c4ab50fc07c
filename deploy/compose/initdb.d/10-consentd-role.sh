#!/bin/sh
# compose.yaml: the daemon's role on a new cluster (the image's entrypoint runs
# this once, as the database's owner). The daemon's rights on each table come
# from consentd's migrations; this role owns nothing and may only connect.
set -eu
password=$(cat /run/secrets/database_password)
psql -v ON_ERROR_STOP=1 -v password="$password" --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE consentd LOGIN PASSWORD :'password';
REVOKE ALL ON DATABASE consentd FROM PUBLIC;
GRANT CONNECT ON DATABASE consentd TO consentd;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
SQL
