-- Check runs that did nothing may be deleted (the beat prunes them after a week). A deadline
-- check runs whenever a deadline passes: several a second with a large fleet, each a run and
-- its batch rows, most of them finding nothing left to do — about 200,000 rows a day at
-- 150,000 open workflows, kept for ever. A run is named by the audit trail only when it had
-- effects, so only a succeeded run without a slot (slots keep I3's record), without effects
-- (every counter zero) and named by no audit row may go; every other delete is still refused.
-- The counters of exhausted and renotified work are recent (migration 23): the audit check
-- covers older runs that did only that.
DROP TRIGGER check_runs_never_deleted ON check_runs;

CREATE FUNCTION escalator_refuse_run_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'succeeded' AND OLD.slot IS NULL AND OLD.reminded = 0 AND OLD.escalated = 0
       AND OLD.exhausted = 0 AND OLD.renotified = 0 AND OLD.failed = 0
       AND NOT EXISTS (SELECT 1 FROM audit_logs WHERE check_run_id = OLD.id) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'check run % is kept (its audit trail or its slot names it): DELETE refused',
        OLD.id
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER check_runs_only_empty_deleted
    BEFORE DELETE ON check_runs
    FOR EACH ROW EXECUTE FUNCTION escalator_refuse_run_delete();

-- the candidates, oldest first, without reading the runs that are kept
CREATE INDEX check_runs_prunable ON check_runs (id)
    WHERE status = 'succeeded' AND slot IS NULL AND reminded = 0 AND escalated = 0
      AND exhausted = 0 AND renotified = 0 AND failed = 0;
