-- Two index entries fewer for each row a check writes (docs/benchmarks.md, session 4: B-tree
-- inserts are ~70 % of a tick's WAL records).
--
-- audit_logs_check_run served the foreign key to check_runs, which migration 12 dropped; no
-- query reads audit rows by check run.
DROP INDEX audit_logs_check_run;

-- One unique index on (workflow_id, dedup_key) serves both the notification key and the
-- "notifications of a workflow" reads, instead of a unique index on dedup_key plus an index on
-- workflow_id. Every key names its workflow, so the pair is unique exactly when the key is.
CREATE UNIQUE INDEX notifications_workflow_dedup ON notifications (workflow_id, dedup_key);
DROP INDEX notifications_workflow;
ALTER TABLE notifications DROP CONSTRAINT notifications_dedup_key_key;
