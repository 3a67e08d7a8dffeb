#!/usr/bin/env bash
# Times each web console page with curl against a running `escalator api` (BASE, default
# http://127.0.0.1:5077) over a seeded PostgreSQL database (DB, default escalator_ui_bench):
# one warm-up, then N runs (default 7); prints median / min / max in ms. See docs/benchmarks.md.
set -euo pipefail
base=${BASE:-http://127.0.0.1:5077}
n=${N:-7}
w=$(psql -h 127.0.0.1 -U postgres -d "${DB:-escalator_ui_bench}" -Atc "select id from workflows where escalation_level > 0 order by id limit 1")
r=$(psql -h 127.0.0.1 -U postgres -d "${DB:-escalator_ui_bench}" -Atc "select recipient from notifications order by id limit 1")
e=$(psql -h 127.0.0.1 -U postgres -d "${DB:-escalator_ui_bench}" -Atc "select external_id from workflows order by created_at desc offset 50000 limit 1")
cursor=$(curl -s "$base/ui/workflows" | grep -o 'before=[^"]*' | head -1 | sed 's/&amp;/\&/g')
for p in "/ui" "/ui/workflows" "/ui/workflows?$cursor" "/ui/workflows?sla=breached" "/ui/workflows?status=escalated" \
         "/ui/workflows?q=request+%2399999" "/ui/workflows?q=no-such-thing" "/ui/workflows?q=$e" "/ui/workflows?q=u0001&status=escalated" \
         "/ui/workflows/$w" "/ui/inbox?recipient=$r" "/ui/queues" "/ui/checks" "/ui/checks?preview=1" "/ui/checks/1"; do
  curl -s -o /dev/null "$base$p"
  ts=()
  for i in $(seq "$n"); do
    code_t=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' "$base$p")
    code=${code_t%% *}; [ "$code" = 200 ] || { echo "$p answered $code" >&2; exit 1; }
    ts+=("$(awk -v t="${code_t#* }" 'BEGIN{printf "%.1f", t*1000}')")
  done
  sorted=($(printf '%s\n' "${ts[@]}" | sort -n))
  printf '%-62s median %6s ms  min %6s  max %6s\n' "$p" "${sorted[$((n/2))]}" "${sorted[0]}" "${sorted[$((n-1))]}"
done
