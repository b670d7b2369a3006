#!/usr/bin/env bash
# GetContact throughput of the release `custodian` binary under h2load, with
# SQLite in a fresh temporary data folder, on loopback only.
#
#   bash services/custodian/benches/h2load-get-contact.sh
#
# Needs h2load (Debian: nghttp2-client), grpcurl and jq. Builds the release
# binary, starts it on 127.0.0.1:$PORT (every service, development key file in
# the temporary data folder), signs a token with `custodian token`, creates a
# tenant and one contact with grpcurl, hand-builds the gRPC frame of
# GetContactRequest{name}, runs a bounded h2load warm-up and then the
# measured run (tokens, audit and encryption all in play), and stops the
# server it started. h2load counts HTTP statuses only (a gRPC error is still HTTP 200),
# so the script also checks the frame with one grpcurl call and checks that
# the responses carried a Contact's worth of data each.
#
# Environment: PORT (50099), REQUESTS (200000), CLIENTS (16), STREAMS (16),
# SKIP_BUILD=1 to use an existing target/release/custodian.
set -euo pipefail

PORT="${PORT:-50099}"
REQUESTS="${REQUESTS:-200000}"
CLIENTS="${CLIENTS:-16}"
STREAMS="${STREAMS:-16}"
ADDR="127.0.0.1:${PORT}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
BIN="${ROOT}/target/release/custodian"

for tool in h2load grpcurl jq; do
    command -v "$tool" >/dev/null || {
        echo "missing $tool (h2load: apt-get install nghttp2-client)" >&2
        exit 1
    }
done
if ((REQUESTS > 10000000)); then
    echo "REQUESTS=$REQUESTS is more than this script will send" >&2
    exit 1
fi

if [[ "${SKIP_BUILD:-}" != 1 ]]; then
    (cd "$ROOT" && cargo build --release -p custodian)
fi

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID"
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

CUSTODIAN_LOG=warn "$BIN" --data-dir "$WORK/data" --listen "$ADDR" \
    >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

serving=""
for _ in $(seq 1 100); do
    if grpcurl -plaintext "$ADDR" grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING; then
        serving=1
        break
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.2
done
if [[ -z "$serving" ]]; then
    echo "the server did not become ready; its log:" >&2
    cat "$WORK/server.log" >&2
    exit 1
fi

TOKEN="$("$BIN" token --data-dir "$WORK/data" --subject bench:h2load \
    --purpose service_delivery --purpose administration)"
AUTH="authorization: Bearer ${TOKEN}"

grpcurl -plaintext -H "$AUTH" -d '{"tenant": {"display_name": "Bench"}, "tenant_id": "bench"}' \
    "$ADDR" custodian.identity.v1.TenantService/CreateTenant >/dev/null
NAME="$(grpcurl -plaintext -H "$AUTH" -d '{
      "parent": "tenants/bench",
      "contact": {
        "person_name": {"given_name": "Bench", "family_name": "Contact"},
        "email": "c0@example.com",
        "phone": "+49 30 901820",
        "organization": "Example Supplies",
        "notes": "Met at the trade fair; prefers email over calls."
      }
    }' "$ADDR" custodian.identity.v1.ContactService/CreateContact | jq -r .name)"
echo "contact: $NAME"
# The frame below is right only if GetContact answers for this name.
grpcurl -plaintext -H "$AUTH" -d "{\"name\": \"$NAME\"}" "$ADDR" \
    custodian.identity.v1.ContactService/GetContact | jq -e --arg n "$NAME" '.name == $n' >/dev/null

# One gRPC frame: flag 0 (not compressed), big-endian u32 length, then the
# protobuf message GetContactRequest{name = 1}: tag 0x0a, varint length, bytes.
byte() { printf "\\$(printf '%03o' "$1")"; }
varint() {
    local n=$1
    while ((n >= 128)); do
        byte $(((n & 127) | 128))
        n=$((n >> 7))
    done
    byte "$n"
}
{
    byte 10
    varint "${#NAME}"
    printf '%s' "$NAME"
} >"$WORK/message.bin"
LEN=$(stat -c %s "$WORK/message.bin")
{
    byte 0
    byte $(((LEN >> 24) & 255))
    byte $(((LEN >> 16) & 255))
    byte $(((LEN >> 8) & 255))
    byte $((LEN & 255))
    cat "$WORK/message.bin"
} >"$WORK/frame.bin"

URL="http://${ADDR}/custodian.identity.v1.ContactService/GetContact"
run_h2load() {
    h2load -n "$1" -c "$CLIENTS" -m "$STREAMS" \
        -H 'content-type: application/grpc' -H 'te: trailers' -H "$AUTH" \
        -d "$WORK/frame.bin" "$URL"
}

echo "warm-up: 10000 requests"
run_h2load 10000 >/dev/null
echo "measured: $REQUESTS requests, $CLIENTS connections x $STREAMS streams"
run_h2load "$REQUESTS" | tee "$WORK/h2load.out"

# A Contact answer is a DATA frame of well over 100 bytes; an error is
# trailers only. Less data than that per request means calls failed.
data=$(sed -nE 's/^traffic:.* \(([0-9]+)\) data$/\1/p' "$WORK/h2load.out")
ok=$(sed -nE 's/^requests:.* ([0-9]+) succeeded.*/\1/p' "$WORK/h2load.out")
if [[ -z "$data" || -z "$ok" || "$ok" -ne "$REQUESTS" ]]; then
    echo "FAILED: not every request succeeded at the HTTP level" >&2
    exit 1
fi
per_request=$((data / REQUESTS))
echo "response data per request: ${per_request} bytes"
if ((per_request < 100)); then
    echo "FAILED: responses carry no Contact; the calls returned gRPC errors" >&2
    exit 1
fi
grep -E '^finished in' "$WORK/h2load.out"
