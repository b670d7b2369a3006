#!/usr/bin/env bash
# GetContact throughput of the release `custodian` binary under h2load, as a
# share of a bare tonic echo server (`examples/echo.rs`) measured the same
# way in the same run, on loopback only; then the p99 latency of GetContact
# at half the peak rate.
#
#   bash services/custodian/benches/h2load-get-contact.sh
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench \
#       bash services/custodian/benches/h2load-get-contact.sh
#
# Needs h2load (Debian: nghttp2-client), grpcurl and jq. Builds the release
# binary and the echo example, starts the echo server on 127.0.0.1:$ECHO_PORT
# and the suite on 127.0.0.1:$PORT (every service, development key file in a
# temporary data folder; SQLite there unless DATABASE_URL names a PostgreSQL
# database, which must exist and is used as it is), signs a token with
# `custodian token`, creates a tenant and one contact with grpcurl,
# hand-builds the gRPC frame of GetContactRequest{name}, warms each server
# up with h2load, then runs the same measured run against each in turn,
# ROUNDS times (tokens, audit and encryption all in play on the suite); the
# share printed is the median round's. h2load counts HTTP statuses only (a
# gRPC error is still HTTP 200), so the script also checks the frame with
# one grpcurl call and checks that the responses carried a Contact's worth
# of data each. Last, h2load paces GetContact at half the measured peak
# (the median round's) and the per-request log gives p50/p99.
#
# Environment: PORT (50099), ECHO_PORT (50098), REQUESTS (200000 per server
# and round), ROUNDS (5; the share printed is the median round's), CLIENTS
# (16), STREAMS (16), DATABASE_URL (unset: SQLite), SKIP_BUILD=1 to use an
# existing target/release/custodian and target/release/examples/echo,
# KEEP_LOG=PATH to keep the paced run's per-request log (start time in
# microseconds, HTTP status, microseconds to the answer).
set -euo pipefail

PORT="${PORT:-50099}"
ECHO_PORT="${ECHO_PORT:-50098}"
ECHO_ADDR="127.0.0.1:${ECHO_PORT}"
REQUESTS="${REQUESTS:-200000}"
ROUNDS="${ROUNDS:-5}"
CLIENTS="${CLIENTS:-16}"
STREAMS="${STREAMS:-16}"
ADDR="127.0.0.1:${PORT}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
BIN="${ROOT}/target/release/custodian"
ECHO_BIN="${ROOT}/target/release/examples/echo"

for tool in h2load grpcurl jq; do
    command -v "$tool" >/dev/null || {
        echo "missing $tool (h2load: apt-get install nghttp2-client)" >&2
        exit 1
    }
done
if ((ROUNDS < 1)); then
    echo "ROUNDS=$ROUNDS: at least one round" >&2
    exit 1
fi
if ((REQUESTS > 10000000)); then
    echo "REQUESTS=$REQUESTS is more than this script will send" >&2
    exit 1
fi

if [[ "${SKIP_BUILD:-}" != 1 ]]; then
    (cd "$ROOT" && cargo build --release -p custodian --bin custodian --example echo)
fi

WORK="$(mktemp -d)"
SERVER_PID=""
ECHO_PID=""
cleanup() {
    for pid in "$SERVER_PID" "$ECHO_PID"; do
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid"
            wait "$pid" 2>/dev/null || true
        fi
    done
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
"$ECHO_BIN" "$ECHO_ADDR" >"$WORK/echo.log" 2>&1 &
ECHO_PID=$!

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

# Health can say SERVING before every service has finished starting (its
# migrations, on PostgreSQL): retry while the answer is "server is starting".
for attempt in $(seq 1 50); do
    if out=$(grpcurl -plaintext -H "$AUTH" \
        -d '{"tenant": {"display_name": "Bench"}, "tenant_id": "bench"}' \
        "$ADDR" custodian.identity.v1.TenantService/CreateTenant 2>&1); then
        break
    fi
    if ! grep -q "server is starting" <<<"$out" || ((attempt == 50)); then
        echo "$out" >&2
        exit 1
    fi
    sleep 0.2
done
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

# GetContactRequest{name = 1}, as one gRPC frame.
# shellcheck source=grpc-frame.sh
source "$(dirname "${BASH_SOURCE[0]}")/grpc-frame.sh"
printf '%s' "$NAME" | field 1 | frame >"$WORK/frame.bin"
# CreateContactRequest{parent, contact{person_name, email, organization,
# notes}}: every call creates another contact (no request_id).
{
    printf 'tenants/bench' | field 1
    {
        { printf 'Bench' | field 1; printf 'Contact' | field 2; } | field 2
        printf 'c1@example.com' | field 3
        printf 'Example Supplies' | field 6
        printf 'Met at the trade fair; prefers email over calls.' | field 8
    } | field 2
} | frame >"$WORK/create.frame"

PATH_GET="/custodian.identity.v1.ContactService/GetContact"
PATH_CREATE="/custodian.identity.v1.ContactService/CreateContact"
run_h2load() { # addr requests [extra h2load options...]
    local addr=$1 n=$2
    shift 2
    h2load -n "$n" -c "$CLIENTS" -m "$STREAMS" "$@" \
        -H 'content-type: application/grpc' -H 'te: trailers' -H "$AUTH" \
        -d "$WORK/frame.bin" "http://${addr}${PATH_GET}"
}

# Checks an h2load report: every request answered, each with a Contact's
# worth of data (an error is trailers only). Prints the req/s.
checked_rate() { # report requests
    local data ok
    data=$(sed -nE 's/^traffic:.* \(([0-9]+)\) data$/\1/p' "$1")
    ok=$(sed -nE 's/^requests:.* ([0-9]+) succeeded.*/\1/p' "$1")
    if [[ -z "$data" || -z "$ok" || "$ok" -ne "$2" ]]; then
        echo "FAILED: not every request succeeded at the HTTP level" >&2
        exit 1
    fi
    if ((data / $2 < 100)); then
        echo "FAILED: responses carry no Contact; the calls returned gRPC errors" >&2
        exit 1
    fi
    sed -nE 's/^finished in .*, ([0-9.]+) req\/s.*/\1/p' "$1"
}

for _ in $(seq 1 50); do
    grpcurl -plaintext -H "$AUTH" -d "{\"name\": \"$NAME\"}" "$ECHO_ADDR" \
        custodian.identity.v1.ContactService/GetContact >/dev/null 2>&1 && break
    sleep 0.1
done

# The share is measured in rounds, the two servers taking turns (in the
# other order every other round), and the median round counts: on a shared
# machine the speed of both moves by a third from one minute to the next,
# more than most changes to the read path, and one pair of runs read it as
# a change.
measure() { # label addr round
    echo "== $1, round $3: $REQUESTS requests, $CLIENTS connections x $STREAMS streams"
    run_h2load "$2" "$REQUESTS" >"$WORK/$1.$3.out"
    grep -E '^(finished in|requests:|time for request:)' "$WORK/$1.$3.out"
}
median() { # numbers on stdin -> the median
    sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
echo "== warm-up: 10000 requests to each server"
run_h2load "$ECHO_ADDR" 10000 >/dev/null
run_h2load "$ADDR" 10000 >/dev/null
rounds=""
for round in $(seq 1 "$ROUNDS"); do
    if ((round % 2)); then
        measure echo "$ECHO_ADDR" "$round"
        measure custodian "$ADDR" "$round"
    else
        measure custodian "$ADDR" "$round"
        measure echo "$ECHO_ADDR" "$round"
    fi
    e=$(checked_rate "$WORK/echo.$round.out" "$REQUESTS")
    g=$(checked_rate "$WORK/custodian.$round.out" "$REQUESTS")
    rounds+="$e $g"$'\n'
done
echo_rate=$(awk 'NF { print $1 }' <<<"$rounds" | median)
rate=$(awk 'NF { print $2 }' <<<"$rounds" | median)
shares=$(awk 'NF { printf "%.3f\n", $2 / $1 }' <<<"$rounds")
share=$(median <<<"$shares")

# Half the peak, paced: h2load's --rps is per connection, and one stream per
# connection. With several streams h2load sends each tick's requests
# together and counts the time they wait inside h2load: the echo server
# measured p50 10 ms that way at an eighth of its peak, and 0.3 ms with one
# stream. The echo server runs at the same rate too, as the tool's floor.
half=$(awk -v r="$rate" 'BEGIN { printf "%d", r / 2 }')
per_client=$(( half / CLIENTS > 0 ? half / CLIENTS : 1 ))
paced=$(( per_client * CLIENTS * 5 ))
percentiles() { # log -> "p50 p99" in ms
    cut -f3 "$1" | sort -n | awk '
        { v[NR] = $1 }
        END { printf "%.2f %.2f\n", v[int(NR * 0.50)] / 1000, v[int(NR * 0.99)] / 1000 }'
}
paced_run() { # label addr
    echo "== $1 at half the peak: $((per_client * CLIENTS)) req/s for 5 s, $CLIENTS connections x 1 stream"
    h2load -n "$paced" -c "$CLIENTS" -m 1 --rps="$per_client" --log-file="$WORK/$1.paced.log" \
        -H 'content-type: application/grpc' -H 'te: trailers' -H "$AUTH" \
        -d "$WORK/frame.bin" "http://${2}${PATH_GET}" >"$WORK/$1.paced.out"
    checked_rate "$WORK/$1.paced.out" "$paced" >/dev/null
}
paced_run echo "$ECHO_ADDR"
paced_run custodian "$ADDR"
[[ -n "${KEEP_LOG:-}" ]] && cp "$WORK/custodian.paced.log" "$KEEP_LOG"
read -r p50 p99 < <(percentiles "$WORK/custodian.paced.log")
read -r echo_p50 echo_p99 < <(percentiles "$WORK/echo.paced.log")

# Creates, last, so the reads above measure a table of one size on every
# run. A quarter as many requests (creates now run at about half the
# reads' rate, and a tenth lasted under a second), same connections and
# streams; each answer must carry the created Contact (checked as for the
# reads).
CREATES=$((REQUESTS / 4))
echo "== CreateContact: $CREATES requests, $CLIENTS connections x $STREAMS streams"
h2load -n "$CREATES" -c "$CLIENTS" -m "$STREAMS" \
    -H 'content-type: application/grpc' -H 'te: trailers' -H "$AUTH" \
    -d "$WORK/create.frame" "http://${ADDR}${PATH_CREATE}" >"$WORK/create.out"
grep -E '^(finished in|requests:|time for request:)' "$WORK/create.out"
create_rate=$(checked_rate "$WORK/create.out" "$CREATES")

backend=sqlite
[[ -n "${DATABASE_URL:-}" ]] && backend=postgres
echo
echo "backend:             $backend"
echo "echo req/s:          $echo_rate (median of $ROUNDS rounds)"
echo "GetContact req/s:    $rate (median of $ROUNDS rounds)"
echo "share of echo:       $share (median; rounds: $(paste -sd' ' <<<"$shares"))"
echo "CreateContact req/s: $create_rate"
awk -v a="$create_rate" -v b="$rate" 'BEGIN { printf "create / get:        %.3f\n", a / b }'
echo "at $((per_client * CLIENTS)) req/s:     p50 ${p50} ms, p99 ${p99} ms (echo: p50 ${echo_p50} ms, p99 ${echo_p99} ms)"
