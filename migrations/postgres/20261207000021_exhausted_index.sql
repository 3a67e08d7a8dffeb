-- The open workflows exhausted for want of a target, found without reading the table: a user
-- write makes those whose override or policy level names a user it (re)activated due again
-- (logic::REARM_TARGETS_PG), on every write of a user. Few rows: only exhausted ones.
CREATE INDEX workflows_exhausted ON workflows (policy_id, policy_version)
    WHERE exhausted_at IS NOT NULL AND status IN ('pending', 'escalated');
