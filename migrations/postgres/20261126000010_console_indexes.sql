-- The web console's reads (issue #10), each measured at 100,000 workflows (docs/benchmarks.md,
-- "Console"). No trigram index for title search: it would double the cost of the engine's
-- workflow updates; the console searches titles among the newest 10,000 workflows instead.

-- Newest-first pages of the workflow list: read from the end of this index instead of sorting
-- the whole table.
CREATE INDEX workflows_created ON workflows (created_at, id);

-- Open workflows by deadline: the SLA counts become an index-only scan and "breaching within
-- the hour" an index range.
CREATE INDEX workflows_open_deadlines ON workflows (due_at, warn_at)
    WHERE status IN ('pending', 'escalated');

-- Escalations and reminders of the last 24 hours: one index range per action.
CREATE INDEX audit_logs_action_created ON audit_logs (action, created_at);
