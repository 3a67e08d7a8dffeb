#!/usr/bin/env bash
# make bench: WORKLOAD.md measurements 1-4 (tick, idle sweep, queue overhead, deadline
# latency) against the real
# pipeline — release binary, PostgreSQL, Redis, apalis workers. Each size runs 3 times on its
# own database (created and dropped here) and its own Redis namespace; raw runs are printed
# as comments, then the median line per measurement.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=${BENCH_SIZES:-"10000 100000"}
RUNS=${BENCH_RUNS:-3}
ADMIN_URL=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
BIN=target/release/escalator
BASE=${ADMIN_URL%/*}
export REDIS_URL ESCALATOR_WORKER_CONCURRENCY=2 RUST_LOG=warn

cargo build --release --locked -p escalator >&2
scripts/services.sh

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
kv() { tr ' ' '\n' | sed -n "s/^$1=//p"; }

worker_pid=""
db=""
ns=""
cleanup() {
  [ -n "$worker_pid" ] && kill -TERM "$worker_pid" 2>/dev/null && wait "$worker_pid" 2>/dev/null || true
  [ -n "$db" ] && psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  [ -n "$ns" ] && redis-cli --scan --pattern "$ns:*" | xargs -r redis-cli del >/dev/null || true
  worker_pid=""; db=""; ns=""
}
trap cleanup EXIT

start_world() { # $1 = workflows
  db="escalator_bench_$$_$RANDOM"
  ns="bench-$$-$RANDOM"
  psql "$ADMIN_URL" -qc "CREATE DATABASE $db" >/dev/null
  export DATABASE_URL="$BASE/$db" ESCALATOR_QUEUE_NAMESPACE="$ns"
  export ESCALATOR_METRICS_ADDR="127.0.0.1:$((20000 + RANDOM % 20000))"
  "$BIN" migrate 2>/dev/null
  if [ "$1" -gt 0 ]; then
    "$BIN" seed --workflows "$1" --seed 7 --now "$SEED_NOW" >/dev/null 2>&1
  fi
  "$BIN" worker 2>/tmp/escalator-bench-worker.log &
  worker_pid=$!
  sleep 1
}

peak_rss_mb() { awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$worker_pid/status"; }

echo "# escalator bench on $(nproc) cores, $(date -u +%Y-%m-%dT%H:%M:%SZ), sizes: $SIZES, runs: $RUNS"
for n in $SIZES; do
  ticks=(); idles=(); rss=(); esc=""; rem=""
  for run in $(seq 1 "$RUNS"); do
    SEED_NOW=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    start_world "$n"
    # idle sweep: a tick at an instant when none of the N open workflows is due (after one
    # warm-up tick, so that the pool's connections exist as in a running deployment)
    idle_at=$(date -u -d "$SEED_NOW - 3 days" +%Y-%m-%dT%H:%M:%SZ)
    "$BIN" enqueue check --as-of "$idle_at" --wait >/dev/null
    out=$("$BIN" enqueue check --as-of "$idle_at" --wait)
    [ "$(echo "$out" | kv escalated)" = 0 ] || { echo "idle tick escalated something: $out" >&2; exit 1; }
    idle=$(echo "$out" | kv seconds)
    echo "# run $run: system=escalator idle_workflows=$n seconds=$idle"
    idles+=("$idle")
    # tick: the seeded 15% warning / 15% breached, as the beat would enqueue it
    out=$("$BIN" enqueue check --as-of "$SEED_NOW" --wait)
    t=$(echo "$out" | kv seconds); esc=$(echo "$out" | kv escalated); rem=$(echo "$out" | kv reminded)
    expect=$((n * 15 / 100))
    [ "$esc" = "$expect" ] && [ "$rem" = "$expect" ] || { echo "tick: expected $expect/$expect, got $out" >&2; exit 1; }
    again=$("$BIN" enqueue check --as-of "$SEED_NOW" --wait)
    [ "$(echo "$again" | kv escalated)" = 0 ] && [ "$(echo "$again" | kv reminded)" = 0 ] \
      || { echo "second tick was not empty: $again" >&2; exit 1; }
    m=$(peak_rss_mb)
    echo "# run $run: system=escalator workflows=$n seconds=$t escalated=$esc reminded=$rem rss_mb=$m"
    ticks+=("$t"); rss+=("$m")
    cleanup
  done
  echo "system=escalator workflows=$n seconds=$(printf '%s\n' "${ticks[@]}" | median) escalated=$esc reminded=$rem rss_mb=$(printf '%s\n' "${rss[@]}" | median)"
  echo "system=escalator idle_workflows=$n seconds=$(printf '%s\n' "${idles[@]}" | median)"
done

noops=()
for run in $(seq 1 "$RUNS"); do
  SEED_NOW=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  start_world 0
  s=$("$BIN" enqueue noop --count 20000 --wait | kv seconds)
  echo "# run $run: system=escalator noop_jobs=20000 seconds=$s"
  noops+=("$s")
  cleanup
done
echo "system=escalator noop_jobs=20000 seconds=$(printf '%s\n' "${noops[@]}" | median)"

# 4. deadline latency: 1,000 workflows due over the next 60 s, beat on the default 15-minute
# cron; lateness = escalation committed (audit row) - deadline.
p50s=(); p99s=()
for run in $(seq 1 "$RUNS"); do
  db="escalator_bench_$$_$RANDOM"; ns="bench-$$-$RANDOM"
  psql "$ADMIN_URL" -qc "CREATE DATABASE $db" >/dev/null
  export DATABASE_URL="$BASE/$db" ESCALATOR_QUEUE_NAMESPACE="$ns"
  export ESCALATOR_METRICS_ADDR="127.0.0.1:$((20000 + RANDOM % 20000))"
  "$BIN" migrate 2>/dev/null
  "$BIN" seed --workflows 1000 --seed 7 --due-within 60 >/dev/null 2>&1
  "$BIN" worker 2>/tmp/escalator-bench-worker.log &
  worker_pid=$!
  ESCALATOR_METRICS_ADDR="127.0.0.1:$((20000 + RANDOM % 20000))" "$BIN" beat 2>/tmp/escalator-bench-beat.log &
  beat_pid=$!
  for _ in $(seq 1 90); do
    n=$(psql "$DATABASE_URL" -Atc "SELECT count(*) FROM audit_logs WHERE action = 'escalate'")
    [ "$n" = 1000 ] && break
    sleep 1
  done
  kill -TERM "$beat_pid"; wait "$beat_pid" 2>/dev/null || true
  [ "$n" = 1000 ] || { echo "only $n of 1000 deadlines escalated" >&2; exit 1; }
  read -r p50 p99 < <(psql "$DATABASE_URL" -Atc "SELECT
      round(percentile_cont(0.5) WITHIN GROUP (ORDER BY l)::numeric, 3),
      round(percentile_cont(0.99) WITHIN GROUP (ORDER BY l)::numeric, 3)
    FROM (SELECT extract(epoch FROM created_at - (details->>'missed_due_at')::timestamptz) AS l
          FROM audit_logs WHERE action = 'escalate') t" | tr '|' ' ')
  echo "# run $run: system=escalator latency_p50_seconds=$p50 latency_p99_seconds=$p99"
  p50s+=("$p50"); p99s+=("$p99")
  cleanup
done
echo "system=escalator latency_p50_seconds=$(printf '%s\n' "${p50s[@]}" | median) latency_p99_seconds=$(printf '%s\n' "${p99s[@]}" | median)"
