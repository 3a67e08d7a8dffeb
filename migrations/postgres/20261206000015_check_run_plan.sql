-- The slices a planner cut its run into, saved before any batch job is pushed: a retried
-- planner pushes and counts the same batches instead of re-cutting what is left (which, once
-- some batches had committed, could count fewer batches than were running and report the run
-- finished early).
ALTER TABLE check_runs ADD COLUMN plan jsonb;
