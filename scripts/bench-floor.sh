#!/usr/bin/env bash
# The database floor of a tick (docs/benchmarks.md, session 5): what PostgreSQL alone needs to
# write the effects of a 100,000-workflow tick (30,000 workflow updates, 30,000 audit rows,
# 60,000 in-app notifications, 15,000 emails, 15,000 held emails) in batches of 500 on two
# sessions, with escalator's schema and no application at all. DROP_SQL (optional) is run
# after the migrations, e.g. to drop indexes and see what they cost. The batch statement is
# assembled from scripts/floor/ (claim-update-audit.sql's header); two data-model variants
# (docs/benchmarks.md, session 7):
#   FLOOR_NOTIFICATIONS=per-event make bench-floor   # one in-app row per event
#   FLOOR_HELD=0 make bench-floor     # no held escalation emails
# Uses its own database.
set -euo pipefail
cd "$(dirname "$0")/.."
ADMIN_URL=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
BASE=${ADMIN_URL%/*}
BIN=target/release/escalator
NOW=2026-12-01T12:00:00Z
cargo build --release --locked -p escalator >&2
NOTIFICATIONS=${FLOOR_NOTIFICATIONS:-per-recipient}
case $NOTIFICATIONS in
  per-recipient) expect_notes=60000 ;;
  per-event) expect_notes=30000 ;;
  *) echo "FLOOR_NOTIFICATIONS must be per-recipient or per-event" >&2; exit 2 ;;
esac
db="escalator_floor_$$"
trap 'psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true' EXIT
psql "$ADMIN_URL" -qc "CREATE DATABASE $db"
url="$BASE/$db"
DATABASE_URL=$url "$BIN" migrate >/dev/null 2>&1
DATABASE_URL=$url "$BIN" seed --workflows 100000 --seed 7 --now "$NOW" >/dev/null 2>&1
[ -n "${DROP_SQL:-}" ] && psql "$url" -qf "$DROP_SQL"
if [ "$NOTIFICATIONS" = per-event ]; then psql "$url" -qf scripts/floor/per-event-schema.sql; fi
psql "$url" -qc "INSERT INTO check_runs (id, requested_by, scope, as_of, status)
                 VALUES (1, 'cli', 'all', '$NOW', 'running')"
psql "$url" -qc "VACUUM ANALYZE" -c "CHECKPOINT"
batch() {
  cat scripts/floor/claim-update-audit.sql "scripts/floor/notifications-$NOTIFICATIONS.sql" \
    scripts/floor/emails.sql
  [ "${FLOOR_HELD:-1}" = 0 ] || cat scripts/floor/held.sql
  cat scripts/floor/end.sql
}
session() { for _ in $(seq 1 31); do batch; done | psql "$url" -q -At -v asof="$NOW" >/dev/null; }
cpu() { awk '/^cpu /{print $2+$3+$4+$7+$8, $5+$6}' /proc/stat; }
read -r b0 i0 < <(cpu); t0=$(date +%s.%N)
session & session & wait
t1=$(date +%s.%N); read -r b1 i1 < <(cpu)
read -r audits notes mails held due < <(psql "$url" -At -F ' ' -c "SELECT
  (SELECT count(*) FROM audit_logs WHERE check_run_id = 1), (SELECT count(*) FROM notifications),
  (SELECT count(*) FROM outbox), (SELECT count(*) FROM outbox_held),
  (SELECT count(*) FROM workflows WHERE status IN ('pending', 'escalated') AND next_check_at <= '$NOW')")
[ "$audits" = 30000 ] && [ "$notes" = "$expect_notes" ] && [ "$due" = 0 ] \
  || { echo "unexpected rows: audit=$audits notifications=$notes still due=$due" >&2; exit 1; }
awk -v t0="$t0" -v t1="$t1" -v busy=$((b1 - b0)) -v idle=$((i1 - i0)) -v rows="audit=$audits notifications=$notes outbox=$mails held=$held" \
  'BEGIN { printf "floor workflows=100000 seconds=%.3f cpu_seconds=%.2f idle_seconds=%.2f %s\n", t1 - t0, busy / 100, idle / 100, rows }'
