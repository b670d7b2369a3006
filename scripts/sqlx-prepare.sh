#!/usr/bin/env bash
# Checks every query! against a live PostgreSQL with the kernel's schema and
# refreshes the offline data the builds use (shared/privacy/.sqlx). Run it
# after changing a checked query or the kernel's migrations, and commit the
# result. Needs PostgreSQL on 127.0.0.1:5432 (PGURL to change it).
set -euo pipefail
cd "$(dirname "$0")/.."
PGURL="${PGURL:-postgres://postgres@127.0.0.1:5432}"
DB=custodian_sqlx_prepare
psql "$PGURL/postgres" -qc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
trap 'psql "$PGURL/postgres" -qc "DROP DATABASE IF EXISTS $DB"' EXIT
for migration in shared/privacy/migrations/*.sql; do
    psql "$PGURL/$DB" -q -v ON_ERROR_STOP=1 -f "$migration"
done
rm -rf shared/privacy/.sqlx
mkdir -p shared/privacy/.sqlx
# A clean build of the crate, so every macro runs against the live schema.
touch shared/privacy/src/sealer.rs
SQLX_OFFLINE=false DATABASE_URL="$PGURL/$DB" SQLX_OFFLINE_DIR="$PWD/shared/privacy/.sqlx" \
    cargo build -p custodian-privacy
ls shared/privacy/.sqlx
