-- One batch of a 100k tick written by PostgreSQL alone (scripts/bench-floor.sh assembles it:
-- this file, then notifications-per-recipient.sql or notifications-per-event.sql, emails.sql,
-- held.sql unless FLOOR_HELD=0, and end.sql): claim 500 due workflows, escalate or remind them
-- and insert the effects the engine writes for them, as one statement. Texts are built with
-- format(): no application, no rendering, no rows on the wire.
-- This part: the claim, the state changes and the audit rows.
BEGIN;
WITH c AS (
  SELECT w.id, w.assignee, w.initiator, w.escalation_target, w.title, w.stage, w.cycle,
         w.escalation_level, w.due_at, w.policy_version, w.version,
         (w.due_at <= :'asof'::timestamptz) AS esc
  FROM workflows w
  WHERE w.status IN ('pending','escalated') AND w.next_check_at <= :'asof'::timestamptz
  ORDER BY w.next_check_at LIMIT 500 FOR UPDATE OF w SKIP LOCKED
), u AS (
  UPDATE workflows w SET
    status = CASE WHEN c.esc THEN 'escalated' ELSE w.status END,
    assignee = CASE WHEN c.esc THEN c.escalation_target ELSE w.assignee END,
    escalation_level = w.escalation_level + c.esc::int,
    warn_at = CASE WHEN c.esc THEN :'asof'::timestamptz + interval '22 hours' ELSE w.warn_at END,
    due_at = CASE WHEN c.esc THEN :'asof'::timestamptz + interval '24 hours' ELSE w.due_at END,
    reminded_at = CASE WHEN c.esc THEN NULL ELSE :'asof'::timestamptz END,
    escalated_at = CASE WHEN c.esc THEN :'asof'::timestamptz ELSE w.escalated_at END,
    next_check_at = CASE WHEN c.esc THEN :'asof'::timestamptz + interval '22 hours' ELSE w.due_at END,
    updated_at = now(), version = w.version + 1
  FROM c WHERE w.id = c.id AND w.version = c.version
  RETURNING c.*
), a AS (
  INSERT INTO audit_logs (workflow_id, action, reason, actor, from_assignee, to_assignee, level,
      cycle, policy_version, elapsed_seconds, check_run_id, details, created_at)
  SELECT id, CASE WHEN esc THEN 'escalate' ELSE 'remind' END, 'sla', 'system:sla', assignee,
      CASE WHEN esc THEN escalation_target ELSE assignee END, escalation_level + esc::int, cycle,
      policy_version, 86400, 1,
      jsonb_build_object('stage', stage, 'missed_due_at', due_at), now()
  FROM u
