-- When a check run last moved (started, a batch committed, reopened by a retried planner).
-- The leading beat marks a run failed that has been queued or running for six hours without
-- progress: its jobs were lost (a Redis failover) or died without recording it, and it read
-- `running` for ever. NULL: its created_at.
ALTER TABLE check_runs ADD COLUMN progress_at timestamptz;
CREATE INDEX check_runs_unfinished ON check_runs (id) WHERE status IN ('queued', 'running');
