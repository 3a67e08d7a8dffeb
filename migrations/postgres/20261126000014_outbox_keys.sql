-- Two index entries fewer for each delivery a check writes (docs/benchmarks.md, session 5:
-- B-tree inserts are about half of the database's CPU in a tick).
--
-- One unique index on (workflow_id, idempotency_key) serves both the delivery key (I2) and the
-- "deliveries of a workflow" reads, instead of a unique index on idempotency_key plus an index
-- on workflow_id. Every key of a workflow's delivery names that workflow, so the pair is unique
-- exactly when the key is; NULLS NOT DISTINCT keeps the keys of deliveries without a workflow
-- (digests) unique among themselves.
CREATE UNIQUE INDEX outbox_workflow_key ON outbox (workflow_id, idempotency_key)
    NULLS NOT DISTINCT;
DROP INDEX outbox_workflow;
ALTER TABLE outbox DROP CONSTRAINT outbox_idempotency_key_key;

-- Held deliveries are only ever read by their run, in the order they were held: the primary key
-- (check_run_id, id) is that index, so the separate one goes.
ALTER TABLE outbox_held DROP CONSTRAINT outbox_held_pkey;
ALTER TABLE outbox_held ADD PRIMARY KEY (check_run_id, id);
DROP INDEX outbox_held_run;
