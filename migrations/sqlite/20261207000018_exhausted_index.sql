-- The open workflows exhausted for want of a target, found without reading the table
-- (PostgreSQL migration 20261207000021; logic::REARM_TARGETS_SQLITE).
CREATE INDEX workflows_exhausted ON workflows (policy_id, policy_version)
    WHERE exhausted_at IS NOT NULL AND status IN ('pending', 'escalated');
