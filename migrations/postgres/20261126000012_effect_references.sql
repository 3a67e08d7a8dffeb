-- The effect tables (audit_logs, notifications, outbox, outbox_held) name workflows and check
-- runs without foreign keys from now on. A tick writes about 150,000 effect rows at 100,000
-- workflows, and the per-row foreign-key checks (one locking lookup each) took a fifth of the
-- database's CPU (docs/benchmarks.md). The references cannot dangle because workflows and
-- check runs are never deleted: no code deletes them, and the triggers below refuse it.
-- `escalator verify` also checks every reference. (SQLite keeps its foreign keys.)
ALTER TABLE audit_logs
    DROP CONSTRAINT audit_logs_workflow_id_fkey,
    DROP CONSTRAINT audit_logs_check_run_id_fkey;
ALTER TABLE notifications DROP CONSTRAINT notifications_workflow_id_fkey;
ALTER TABLE outbox
    DROP CONSTRAINT outbox_workflow_id_fkey,
    DROP CONSTRAINT outbox_check_run_id_fkey;
ALTER TABLE outbox_held DROP CONSTRAINT outbox_held_check_run_id_fkey;

CREATE FUNCTION escalator_refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are never deleted (their audit trail names them): % refused',
        TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER workflows_never_deleted
    BEFORE DELETE ON workflows
    FOR EACH STATEMENT EXECUTE FUNCTION escalator_refuse_delete();
CREATE TRIGGER workflows_no_truncate
    BEFORE TRUNCATE ON workflows
    FOR EACH STATEMENT EXECUTE FUNCTION escalator_refuse_delete();
CREATE TRIGGER check_runs_never_deleted
    BEFORE DELETE ON check_runs
    FOR EACH STATEMENT EXECUTE FUNCTION escalator_refuse_delete();
CREATE TRIGGER check_runs_no_truncate
    BEFORE TRUNCATE ON check_runs
    FOR EACH STATEMENT EXECUTE FUNCTION escalator_refuse_delete();
