#!/usr/bin/env bash
# Resident memory of each service as its Deployment runs it: the release
# binary with `--target NAME`, its own key file and credential, a PostgreSQL
# database each and the suite's erasure log, all five at once. Prints each
# one's RSS idle (after start) and its peak (VmHWM) after a saturating
# h2load of one of its reads (analytics: of beacon posts, its hot path).
# The figures size deploy/overlays/prod/resources.yaml (docs/operations.md).
#
#   bash services/custodian/benches/rss-per-target.sh
#   ADMIN_URL=postgres://postgres@127.0.0.1:5432/postgres REQUESTS=200000 \
#       bash services/custodian/benches/rss-per-target.sh
#
# Needs h2load (Debian: nghttp2-client), grpcurl, jq, psql. SKIP_BUILD=1
# uses an existing target/release/custodian. Loopback only.
set -euo pipefail

ADMIN_URL="${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
REQUESTS="${REQUESTS:-200000}"
CLIENTS="${CLIENTS:-16}"
STREAMS="${STREAMS:-16}"
BASE_PORT="${BASE_PORT:-50110}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
BIN="${ROOT}/target/release/custodian"
SERVICES=(identity tickets analytics feedback dsr)

for tool in h2load grpcurl jq psql; do
    command -v "$tool" >/dev/null || {
        echo "missing $tool" >&2
        exit 1
    }
done
if [[ "${SKIP_BUILD:-}" != 1 ]]; then
    (cd "$ROOT" && cargo build --release -p custodian --bin custodian)
fi

WORK="$(mktemp -d)"
RUN="rss_$(date +%s)_$$"
declare -A PID PORT
cleanup() {
    for s in "${SERVICES[@]}"; do
        if [[ -n "${PID[$s]:-}" ]] && kill -0 "${PID[$s]}" 2>/dev/null; then
            kill "${PID[$s]}"
            wait "${PID[$s]}" 2>/dev/null || true
        fi
    done
    for db in "${SERVICES[@]}" erasures; do
        psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS ${RUN}_${db} WITH (FORCE)" >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

db_url() { echo "${ADMIN_URL%/*}/${RUN}_$1"; }
for db in "${SERVICES[@]}" erasures; do
    psql "$ADMIN_URL" -qc "CREATE DATABASE ${RUN}_${db}" >/dev/null
done

# As the operator does it: a key file per service, credentials issued with
# the signing file kept apart.
"$BIN" keys init --out "$WORK/keys" >/dev/null
i=0
for s in "${SERVICES[@]}"; do
    PORT[$s]=$((BASE_PORT + i))
    i=$((i + 1))
done
for s in "${SERVICES[@]}"; do
    args=(--target "$s" --key-file "$WORK/keys/$s.toml"
        --database-url "$(db_url "$s")" --erasure-log "$(db_url erasures)"
        --listen "127.0.0.1:${PORT[$s]}" --data-dir "$WORK/$s")
    if [[ "$s" != identity ]]; then
        "$BIN" token --key-file "$WORK/keys/signing.toml" --service "$s" --ttl 2h >"$WORK/$s.token"
        args+=(--service-token-file "$WORK/$s.token" --peer "identity=http://127.0.0.1:${PORT[identity]}")
    fi
    if [[ "$s" == tickets || "$s" == dsr ]]; then
        args+=(--mail-outbox "$WORK/$s/outbox")
    fi
    if [[ "$s" == dsr ]]; then
        for p in tickets analytics feedback; do
            args+=(--peer "$p=http://127.0.0.1:${PORT[$p]}")
        done
    fi
    CUSTODIAN_LOG=warn "$BIN" "${args[@]}" >"$WORK/$s.log" 2>&1 &
    PID[$s]=$!
done
for s in "${SERVICES[@]}"; do
    for _ in $(seq 1 150); do
        if grpcurl -plaintext "127.0.0.1:${PORT[$s]}" grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'; then
            continue 2
        fi
        kill -0 "${PID[$s]}" 2>/dev/null || break
        sleep 0.2
    done
    echo "$s did not become ready; its log:" >&2
    cat "$WORK/$s.log" >&2
    exit 1
done
sleep 5
rss() { awk -v k="$2:" '$1 == k {print int($2 / 1024)}' "/proc/${PID[$1]}/status"; }
declare -A IDLE
for s in "${SERVICES[@]}"; do IDLE[$s]=$(rss "$s" VmRSS); done

TOKEN="$("$BIN" token --key-file "$WORK/keys/signing.toml" --subject bench:rss \
    --purpose service_delivery --purpose support --purpose dsr_fulfilment --purpose administration)"
AUTH="authorization: Bearer ${TOKEN}"
call() { # service method json
    grpcurl -plaintext -H "$AUTH" -d "$3" "127.0.0.1:${PORT[$1]}" "$2"
}
call identity custodian.identity.v1.TenantService/CreateTenant \
    '{"tenant": {"display_name": "Bench"}, "tenant_id": "bench"}' >/dev/null
declare -A NAME METHOD
NAME[identity]=$(call identity custodian.identity.v1.ContactService/CreateContact \
    '{"parent": "tenants/bench", "contact": {"person_name": {"given_name": "Bench", "family_name": "Contact"}, "email": "c0@example.com", "organization": "Example Supplies"}}' | jq -r .name)
METHOD[identity]=custodian.identity.v1.ContactService/GetContact
NAME[tickets]=$(call tickets custodian.tickets.v1.TicketService/CreateTicket \
    '{"ticket": {"channel": "CHANNEL_EMAIL", "kind": "KIND_INQUIRY", "category": "pricing", "subject": "Volume discount?", "requester": {"person_name": {"given_name": "Ann"}, "email": "ann@example.com"}, "priority": "PRIORITY_HIGH"}, "description": "Do you offer discounts above 50 seats?"}' | jq -r .name)
METHOD[tickets]=custodian.tickets.v1.TicketService/GetTicket
NAME[feedback]=$(call feedback custodian.feedback.v1.FeedbackService/CreateFeedback \
    '{"feedback": {"author": {"person_name": {"given_name": "Ann", "family_name": "Archer"}, "email": "ann@example.com", "company": "Archer GmbH"}, "rating": 5, "text": "Setting up took an afternoon.", "source": "web_form"}}' | jq -r .name)
METHOD[feedback]=custodian.feedback.v1.FeedbackService/GetFeedback
NAME[dsr]=$(call dsr custodian.dsr.v1.RequestService/CreateRequest \
    '{"request": {"kind": "KIND_ACCESS", "jurisdiction": "JURISDICTION_GDPR", "requester": {"person_name": {"given_name": "Ann"}, "email": "ann@example.com"}}}' | jq -r .name)
METHOD[dsr]=custodian.dsr.v1.RequestService/GetRequest
call analytics custodian.analytics.v1.SiteService/CreateSite \
    '{"site": {"domain": "www.example.com", "allowed_origins": ["https://www.example.com"]}}' >/dev/null

# shellcheck source=grpc-frame.sh
source "$(dirname "${BASH_SOURCE[0]}")/grpc-frame.sh"
declare -A RATE
for s in identity tickets feedback dsr; do
    printf '%s' "${NAME[$s]}" | field 1 | frame >"$WORK/$s.frame"
    h2load -n "$REQUESTS" -c "$CLIENTS" -m "$STREAMS" \
        -H 'content-type: application/grpc' -H 'te: trailers' -H "$AUTH" \
        -d "$WORK/$s.frame" "http://127.0.0.1:${PORT[$s]}/${METHOD[$s]}" >"$WORK/$s.h2load"
    RATE[$s]=$(sed -nE 's/^finished in .* ([0-9.]+) req\/s.*/\1/p' "$WORK/$s.h2load")
done
# The beacon: one page view a post, over HTTP/1.1 keep-alive, as browsers send.
printf '%s' '[{"site": "www.example.com", "type": "pageview", "url": "https://www.example.com/pricing", "referrer": "https://www.google.com/"}]' >"$WORK/beacon.json"
h2load --h1 -n "$REQUESTS" -c 64 -H 'content-type: text/plain' -H 'origin: https://www.example.com' \
    -H 'user-agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0.0.0 Safari/537.36' \
    -d "$WORK/beacon.json" "http://127.0.0.1:${PORT[analytics]}/v1/collect" >"$WORK/analytics.h2load"
RATE[analytics]=$(sed -nE 's/^finished in .* ([0-9.]+) req\/s.*/\1/p' "$WORK/analytics.h2load")
METHOD[analytics]="POST /v1/collect"

printf '%-10s %-45s %9s %10s %10s\n' service "load" "req/s" "idle MiB" "peak MiB"
for s in "${SERVICES[@]}"; do
    printf '%-10s %-45s %9s %10s %10s\n' "$s" "${METHOD[$s]}" "${RATE[$s]}" "${IDLE[$s]}" "$(rss "$s" VmHWM)"
done
