#!/bin/sh
# Prints the Secrets that give each service only its own keys and its own
# service credential, for `kubectl apply`:
#
#   NAME-keys         keys.toml  NAME's key file: its master keys, the shared
#                                blind-index key, the token public keys; never
#                                the signing key
#   NAME-credential   token      NAME's service credential, which may make only
#                                the calls NAME makes (identity makes none, so
#                                it has none)
#
# DIR is a folder made by `custodian keys init --out DIR` (or `custodian keys
# split`): its signing.toml issues the credentials and stays there, off the
# cluster. Run this where that folder is kept:
#
#   deploy/make-secrets.sh DIR | kubectl -n custodian apply -f -
#
# Again before the credentials expire (TTL, default 30 days, the longest a
# token may live): pods read the renewed file without a restart.
# Environment: CUSTODIAN (the binary, default `custodian`), TTL.
set -eu
dir=${1:?usage: make-secrets.sh DIR}
custodian=${CUSTODIAN:-custodian}
ttl=${TTL:-720h}
# The credentials pass through files only this user can read, never argv.
umask 077
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for service in identity tickets analytics feedback dsr; do
  kubectl create secret generic "$service-keys" \
    --from-file=keys.toml="$dir/$service.toml" --dry-run=client -o yaml
  echo ---
  [ "$service" = identity ] && continue
  "$custodian" token --key-file "$dir/signing.toml" --service "$service" --ttl "$ttl" \
    > "$work/token"
  kubectl create secret generic "$service-credential" \
    --from-file=token="$work/token" --dry-run=client -o yaml
  echo ---
done
