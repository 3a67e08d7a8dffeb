-- Check runs that did nothing may be deleted (the beat prunes them after a week; see the
-- PostgreSQL migration of the same name). SQLite keeps its foreign keys, so a run an audit
-- row names cannot be deleted; this is the index the pruning reads its candidates from.
CREATE INDEX check_runs_prunable ON check_runs (id)
    WHERE status = 'succeeded' AND slot IS NULL AND reminded = 0 AND escalated = 0
      AND exhausted = 0 AND renotified = 0 AND failed = 0;
