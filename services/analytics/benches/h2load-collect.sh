#!/usr/bin/env bash
# Ingest throughput of the release `custodian` binary: the browser beacon
# (`POST /v1/collect`, 10 page views per request, the tracker's
# text/plain JSON) under h2load over HTTP/1.1 keep-alive (how browsers
# send) and over HTTP/2, on loopback only. Every request is answered only
# after its events are committed, so events per second here are events
# stored per second (the script checks the stored count at the end).
#
#   bash services/analytics/benches/h2load-collect.sh
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench \
#       bash services/analytics/benches/h2load-collect.sh
#
# Needs h2load (Debian: nghttp2-client), grpcurl and jq (and psql or
# sqlite3 for the final count). Environment: PORT (50097), REQUESTS
# (20000 per run), CLIENTS (64), DATABASE_URL (unset: SQLite in a
# temporary folder; a PostgreSQL database must exist and be empty),
# SKIP_BUILD=1 to use an existing target/release/custodian.
set -euo pipefail

PORT="${PORT:-50097}"
REQUESTS="${REQUESTS:-20000}"
CLIENTS="${CLIENTS:-64}"
ADDR="127.0.0.1:${PORT}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
BIN="${BIN:-${ROOT}/target/release/custodian}"

for tool in h2load grpcurl jq; do
    command -v "$tool" >/dev/null || {
        echo "missing $tool (h2load: apt-get install nghttp2-client)" >&2
        exit 1
    }
done
if [[ "${SKIP_BUILD:-}" != 1 ]]; then
    (cd "$ROOT" && cargo build --release -p custodian --bin custodian)
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

DB_ARGS=()
if [[ -n "${DATABASE_URL:-}" ]]; then
    DB_ARGS=(--database-url "$DATABASE_URL")
fi
CUSTODIAN_LOG=warn "$BIN" --data-dir "$WORK/data" --listen "$ADDR" "${DB_ARGS[@]}" \
    >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do
    grpcurl -plaintext "$ADDR" grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; exit 1; }
    sleep 0.2
done
TOKEN="$("$BIN" token --data-dir "$WORK/data" --subject bench:collect --purpose administration)"
for attempt in $(seq 1 50); do
    if out=$(grpcurl -plaintext -H "authorization: Bearer $TOKEN" \
        -d '{"site": {"domain": "www.example.com"}}' \
        "$ADDR" custodian.analytics.v1.SiteService/CreateSite 2>&1); then
        break
    fi
    if ! grep -q "server is starting" <<<"$out" || ((attempt == 50)); then
        echo "$out" >&2
        exit 1
    fi
    sleep 0.2
done

# Ten page views of a visit, as the tracker posts them (no event ids: h2load
# sends the same body every time, and ids would make all but one duplicates).
jq -cn '[range(10) | {site: "www.example.com", type: "pageview",
    url: "https://www.example.com/docs/page-\(.)?page=2&utm_source=x",
    referrer: "https://www.google.com/search?q=custodian"}]' >"$WORK/body.json"
UA='Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36'
HEADERS=(-H "content-type: text/plain" -H "user-agent: $UA")

run() {
    local label=$1
    shift
    h2load "$@" -n "$REQUESTS" -c "$CLIENTS" -d "$WORK/body.json" "${HEADERS[@]}" \
        "http://$ADDR/v1/collect" >"$WORK/$label.txt"
    local rps ok
    rps=$(grep -oP 'finished in [^,]+, \K[0-9.]+(?= req/s)' "$WORK/$label.txt")
    ok=$(grep -oP 'status codes: \K[0-9]+(?= 2xx)' "$WORK/$label.txt")
    printf '%-8s %8.0f req/s  %9.0f events/s  (%s of %s answered 202)\n' \
        "$label" "$rps" "$(echo "$rps * 10" | bc)" "$ok" "$REQUESTS"
    grep -E "time for request" "$WORK/$label.txt" | sed 's/^/         /'
}

# Warm-up, then the measured runs.
h2load --h1 -n 2000 -c 16 -d "$WORK/body.json" "${HEADERS[@]}" "http://$ADDR/v1/collect" >/dev/null
run "http1.1" --h1
run "http2" -m 16

if [[ -n "${DATABASE_URL:-}" ]]; then
    stored=$(psql "$DATABASE_URL" -Atc "SELECT COUNT(*) FROM analytics_events")
else
    stored=$(sqlite3 "$WORK/data/analytics.db" "SELECT COUNT(*) FROM analytics_events")
fi
echo "events stored: $stored (expected $(((2000 + 2 * REQUESTS) * 10)) if every request was answered 202)"
