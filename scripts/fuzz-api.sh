#!/usr/bin/env bash
# make fuzz-api: a real `escalator api` on a scratch PostgreSQL database (seeded) and a private
# Redis namespace, then
#   1. its Prometheus endpoint linted by `promtool check metrics` — any finding fails;
#   2. schemathesis generating requests from the api's own OpenAPI document, valid and invalid,
#      with an admin token: any 5xx, or any response that its schema does not describe (status,
#      content type, headers, body), fails.
# Installs what is missing: promtool (Debian package prometheus, apt-get) and schemathesis
# (PyPI, into a virtualenv under $ESCALATOR_TOOLS_DIR). FUZZ_EXAMPLES (default 40) sets the
# number of generated cases per operation and phase; FUZZ_SEED makes a run reproducible.
# Reports land in target/fuzz-api/.
set -uo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_PIN="schemathesis==4.32.5"
TOOLS_DIR=${ESCALATOR_TOOLS_DIR:-$HOME/.cache/escalator-deploy-tools}
VENV=$TOOLS_DIR/fuzz-venv
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
EXAMPLES=${FUZZ_EXAMPLES:-40}
OUT=target/fuzz-api
TOKEN="fuzz-admin-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"

log() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { echo "fuzz-api: $*" >&2; exit 2; }

# --- tools ------------------------------------------------------------------------------------
if ! command -v promtool >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  log "installing promtool (apt-get install prometheus)"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q || die "apt-get update failed"
  $sudo apt-get install -y -q --no-install-recommends prometheus || die "apt-get install failed"
fi
if [ "$(cat "$VENV/.pin" 2>/dev/null)" != "$SCHEMATHESIS_PIN" ]; then
  log "installing $SCHEMATHESIS_PIN into $VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed"
  "$VENV/bin/pip" install -q --disable-pip-version-check "$SCHEMATHESIS_PIN" || die "pip install failed"
  echo "$SCHEMATHESIS_PIN" >"$VENV/.pin"
fi
command -v psql >/dev/null || die "psql missing (apt-get install postgresql-client)"

log "building escalator"
cargo build --locked -q -p escalator || die "build failed"
bin=target/debug/escalator

# --- a scratch database, a private queue namespace, the api ------------------------------------
db="escalator_fuzz_$$"
psql "$PG_ADMIN_URL" -qc "CREATE DATABASE $db" >/dev/null || die "cannot create database $db at $PG_ADMIN_URL"
api_pid=""
cleanup() {
  [ -n "$api_pid" ] && kill "$api_pid" 2>/dev/null && wait "$api_pid" 2>/dev/null
  psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1
  # the queue keys the api's enqueues left under this run's namespace
  if command -v redis-cli >/dev/null; then
    redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379}" --scan --pattern "fuzz$$:*" \
      | xargs -r redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379}" del >/dev/null 2>&1
  fi
  return 0
}
trap cleanup EXIT

mkdir -p "$OUT"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
export ESCALATOR_QUEUE_NAMESPACE="fuzz$$"
export ESCALATOR_API_ADDR="127.0.0.1:$port"
export ESCALATOR_API_TOKENS="fuzz:$TOKEN:admin"
export ESCALATOR_API_TIMEOUT=10
export RUST_LOG=${RUST_LOG:-warn}

log "seeding $db (2,000 workflows)"
"$bin" migrate >/dev/null || die "migrate failed"
"$bin" seed --workflows 2000 --seed 7 >/dev/null || die "seed failed"
"$bin" api >"$OUT/api.log" 2>&1 &
api_pid=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  kill -0 "$api_pid" 2>/dev/null || { tail -20 "$OUT/api.log"; die "the api exited"; }
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || { tail -20 "$OUT/api.log"; die "the api is not ready"; }

rc=0
# --- 1. the exposition --------------------------------------------------------------------------
log "promtool check metrics: /api/v1/metrics/prometheus"
curl -fsS "http://127.0.0.1:$port/api/v1/metrics/prometheus" >"$OUT/exposition.txt" || die "metrics unreachable"
if promtool check metrics <"$OUT/exposition.txt" >"$OUT/promtool.txt" 2>&1; then
  echo "   clean: $(grep -vc '^#' "$OUT/exposition.txt") samples, $(grep -c '^# HELP' "$OUT/exposition.txt") metrics with HELP"
else
  echo "   FAILED:"; sed 's/^/      /' "$OUT/promtool.txt"; rc=1
fi

# --- 2. schemathesis ----------------------------------------------------------------------------
log "schemathesis: every operation of /api/v1/openapi.json ($EXAMPLES examples per phase)"
seed_args=()
[ -n "${FUZZ_SEED:-}" ] && seed_args=(--seed "$FUZZ_SEED")
# one worker: with several threads, hypothesis's lambda descriptions hit a CPython 3.11 parser
# race ("AST constructor recursion depth mismatch") and the run reports a tool error
"$VENV/bin/schemathesis" run "http://127.0.0.1:$port/api/v1/openapi.json" \
  --header "Authorization: Bearer $TOKEN" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --phases examples,coverage,fuzzing,stateful \
  --max-examples "$EXAMPLES" \
  --workers 1 \
  --request-timeout 15 \
  --suppress-health-check too_slow,filter_too_much \
  --report junit --report-dir "$OUT" \
  "${seed_args[@]}" \
  || rc=1

if grep -q "panicked" "$OUT/api.log"; then
  echo "fuzz-api: the api logged a panic:"; grep -m5 "panicked" "$OUT/api.log"; rc=1
fi
[ $rc = 0 ] && log "fuzz-api: clean" || echo "fuzz-api: FAILED (reports in $OUT/)"
exit $rc
