-- The slices a planner cut its run into (JSON), saved before any batch job is pushed: see the
-- PostgreSQL migration of the same name.
ALTER TABLE check_runs ADD COLUMN plan TEXT;
