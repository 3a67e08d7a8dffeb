-- Each audit row names the transaction that wrote it, so that the global log can be paged in
-- an order no later commit falls behind: ids are taken at INSERT but become visible at COMMIT,
-- so a reader paging by id passed over a batch's rows that committed after a later id
-- (docs/api.md, "The global audit log"). Rows written before have none: they sort first.
-- Adding a nullable column and then a default rewrites nothing (a volatile default given in
-- ADD COLUMN would rewrite the whole table under its lock).
ALTER TABLE audit_logs ADD COLUMN xact_id xid8;
ALTER TABLE audit_logs ALTER COLUMN xact_id SET DEFAULT pg_current_xact_id();
CREATE INDEX audit_logs_commit_order ON audit_logs ((COALESCE(xact_id, '0'::xid8)), id);

-- Transaction ids belong to one PostgreSQL cluster: a database restored from a dump into
-- another starts counting again, below the restored rows' ids. `escalator migrate` then clears
-- them (they sort first, as rows older than the column do); that is the only change the
-- append-only log accepts: an UPDATE that sets `xact_id` to NULL and touches nothing else.
DROP TRIGGER audit_logs_append_only ON audit_logs;
CREATE TRIGGER audit_logs_append_only
    BEFORE DELETE ON audit_logs
    FOR EACH ROW EXECUTE FUNCTION escalator_refuse_change();
CREATE TRIGGER audit_logs_update_only_xact
    BEFORE UPDATE ON audit_logs
    FOR EACH ROW
    WHEN (NEW.xact_id IS NOT NULL
          OR (to_jsonb(NEW) - 'xact_id') IS DISTINCT FROM (to_jsonb(OLD) - 'xact_id'))
    EXECUTE FUNCTION escalator_refuse_change();
