#!/usr/bin/env bash
# Makes sure the services the tests talk to are up: PostgreSQL on 127.0.0.1:5432 (user postgres,
# trust auth, database "test") and Redis on 127.0.0.1:6379. Starts them when they are installed
# but down; installing them is .ci/run's job. Also installs Debian's Chromium and its
# chromedriver for the console's browser tests when they are missing and this runs as root on
# Debian, so that `make test` works on a fresh machine. Idempotent and quiet when all is well.
set -euo pipefail

PGHOST=127.0.0.1
PGPORT=5432
REDIS_PORT=6379

say() { printf 'services: %s\n' "$*" >&2; }

pg_up() { pg_isready -q -h "$PGHOST" -p "$PGPORT" 2>/dev/null; }

start_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    say "PostgreSQL is not reachable on $PGHOST:$PGPORT and not installed (run .ci/run, or apt-get install postgresql)"
    return 1
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  say "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do pg_up && return 0; sleep 1; done
  say "PostgreSQL did not come up on $PGHOST:$PGPORT"
  return 1
}

# A fresh Debian install asks TCP clients for a password; the tests connect as postgres with
# none, as on our CI machines. Allow loopback trust (never anything beyond loopback).
ensure_trust() {
  if psql -h "$PGHOST" -p "$PGPORT" -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1; then
    return 0
  fi
  local hba
  hba=$(ls /etc/postgresql/*/main/pg_hba.conf 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$hba" ] || [ "$(id -u)" != 0 ]; then
    say "cannot connect to PostgreSQL as user postgres without a password; set TEST_DATABASE_URL"
    return 1
  fi
  say "allowing loopback trust authentication in $hba"
  sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
  su postgres -c "psql -Atqc 'SELECT pg_reload_conf()'" >/dev/null
  sleep 1
}

ensure_test_db() {
  if ! psql -h "$PGHOST" -p "$PGPORT" -U postgres -d postgres -Atqc \
      "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1; then
    say "creating database test"
    psql -h "$PGHOST" -p "$PGPORT" -U postgres -d postgres -qc 'CREATE DATABASE test'
  fi
}

redis_up() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }

start_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    say "Redis is not reachable on 127.0.0.1:$REDIS_PORT and not installed (run .ci/run, or apt-get install redis-server)"
    return 1
  fi
  say "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 20); do redis_up && return 0; sleep 0.5; done
  say "Redis did not come up on 127.0.0.1:$REDIS_PORT"
  return 1
}

# The console's browser tests drive Chromium through chromedriver (CHROMIUM / CHROMEDRIVER
# point elsewhere). Without them those tests fail, naming what to install.
ensure_browser() {
  local missing=()
  [ -n "${CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  [ -n "${CHROMEDRIVER:-}" ] || command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "${missing[*]} not installed: the browser tests will fail (apt-get install -y --no-install-recommends chromium chromium-driver)"
    return 0
  fi
  say "installing ${missing[*]} for the browser tests"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

pg_up || start_postgres
ensure_trust
ensure_test_db
redis_up || start_redis
ensure_browser
