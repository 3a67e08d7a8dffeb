-- The due index carries the workflow id after the instant, so that the slices a check is cut
-- into can split many workflows sharing one next_check_at and each batch's claim still reads
-- only its own slice, in index order (PostgreSQL migration 20261206000017).
DROP INDEX workflows_due;
CREATE INDEX workflows_due ON workflows (next_check_at, id)
    WHERE status IN ('pending', 'escalated');
