-- When a check run last moved; the beat fails runs six hours without progress (PostgreSQL
-- migration 20261207000022).
ALTER TABLE check_runs ADD COLUMN progress_at TEXT;
CREATE INDEX check_runs_unfinished ON check_runs (id) WHERE status IN ('queued', 'running');
