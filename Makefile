# escalator — the single entry point for building, testing and linting. CI runs these targets.

CARGO ?= cargo
DATABASE_URL ?= sqlite://escalator.db

.PHONY: help dev build test test-faults soak fuzz-api test-unit lint fmt fmt-check clippy services migrate seed bench bench-floor clean validate-deploy validate-deploy-live

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## Build the release binary (target/release/escalator)
	$(CARGO) build --release --locked -p escalator

test: services lint ## Everything CI runs: formatting, clippy, all tests against real PostgreSQL (and Redis)
	$(CARGO) nextest run --workspace --locked --no-fail-fast -E 'not binary(faults) & not ($(ALONE))'
	$(CARGO) nextest run --workspace --locked --no-fail-fast --test-threads 1 -E '$(ALONE)'

# Tests that assert second-scale timing of real processes (a reminder inside a 30 s window,
# every slot of a 1 s schedule, a lease expiring): run one at a time after the rest, so that
# two cores shared with 300 other tests cannot starve them into a false failure.
ALONE = test(dev_demo_escalates_within_ninety_seconds_and_resumes_after_ctrl_c) \
	| test(two_beats_on_a_one_second_schedule_fire_every_slot_exactly_once) \
	| test(a_leader_frozen_past_its_lease_is_replaced_and_never_doubles_a_slot)

test-faults: services ## The fault-injection suite (docs/reliability.md): restarts, kills, outages; asserts the invariants
	$(CARGO) nextest run --locked --no-fail-fast --workspace --no-capture -E '($(FAULTS)) & not ($(ALONE) | $(FAULTS_ALONE))'
	$(CARGO) nextest run --locked --no-fail-fast --workspace --no-capture --test-threads 1 -E '($(FAULTS)) & ($(ALONE) | $(FAULTS_ALONE))'

# Fault scenarios that assert slot timing (a beat down across slots, then one coalesced run):
# one at a time, as ALONE in `make test`, not beside scenarios seeding 20,000 workflows
FAULTS_ALONE = test(f4_a_beat_down_across_several_slots_runs_them_once_coalesced)

# F1-F12: the faults binary plus the scenarios that live with their own suites (docs/reliability.md)
FAULTS = (binary(faults) & not test(/^soak_/)) | test(a_worker_killed_mid_run_loses_nothing_and_doubles_nothing) \
	| test(two_beats_on_a_one_second_schedule_fire_every_slot_exactly_once) \
	| test(a_leader_frozen_past_its_lease_is_replaced_and_never_doubles_a_slot) \
	| test(slots_missed_while_down_run_once_coalesced) \
	| test(a_redis_that_may_evict_jobs_is_refused_at_start_up) | test(stale_claims_write_nothing) \
	| test(garbage_on_every_queue_is_dead_lettered_counted_and_survived) \
	| test(a_relay_that_accepts_and_never_answers_is_timed_out_and_retried)

soak: services ## SOAK_MINUTES (30; CI runs 1) of 100 checks over 200,000 workflows; RSS and connections stay flat
	SOAK_MINUTES=$${SOAK_MINUTES:-30} $(CARGO) nextest run --locked -p escalator --profile soak --no-capture -E 'binary(faults) & test(/^soak_/)'

test-unit: ## Only the tests that need no services (unit tests and the policy's own suites)
	$(CARGO) nextest run --workspace --locked -E 'kind(lib) | kind(bin) | binary(calendar_days) | binary(decisions) | binary(properties)'

lint: fmt-check clippy ## rustfmt check and clippy with warnings as errors

fmt: ## Format the code
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

services: ## Start PostgreSQL and Redis when they are installed but not running
	@scripts/services.sh

dev: ## escalator dev --demo: the whole system in one process on SQLite
	$(CARGO) run --release --locked -p escalator -- dev --demo

migrate: ## Migrate $(DATABASE_URL)
	$(CARGO) run --release --locked -p escalator -- migrate

seed: ## Seed $(DATABASE_URL) with 10,000 workflows (WORKLOAD.md distribution)
	$(CARGO) run --release --locked -p escalator -- seed --workflows 10000 --seed 7

bench: ## The benchmark (docs/benchmarks.md): tick, idle sweep, no-op jobs, latency at BENCH_SIZES (default "10000 100000"), median of 3
	@scripts/bench.sh

bench-floor: ## What PostgreSQL alone needs for a 100k tick's writes, with no application (docs/benchmarks.md)
	@scripts/bench-floor.sh

clean:
	$(CARGO) clean

validate-deploy: ## Validate deploy/, docker-compose.yml and the alert rules offline (installs promtool, amtool, linters)
	@scripts/validate-deploy.sh

fuzz-api: services ## schemathesis against a live api from its own OpenAPI document, and promtool check metrics (installs both)
	@scripts/fuzz-api.sh

validate-deploy-live: services ## A real Prometheus scrapes a running api, worker and beat; every dashboard query must return data
	$(CARGO) build --locked -p escalator
	@LIVE_REQUIRED=1 scripts/validate-deploy.sh --live
