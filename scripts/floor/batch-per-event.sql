-- scripts/floor/batch.sql with one in-app notification row per event (recipients in an array):
-- use with DROP_SQL=scripts/floor/per-event-schema.sql and EXPECT_NOTIFICATIONS=30000.
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
), r AS (
  SELECT u.*, x.who, x.role FROM u CROSS JOIN LATERAL (VALUES
      (CASE WHEN u.esc THEN u.escalation_target ELSE u.assignee END, 'to'),
      (CASE WHEN u.esc THEN u.assignee END, 'cc'),
      (CASE WHEN u.esc THEN u.initiator END, 'cc')) AS x(who, role)
  WHERE x.who IS NOT NULL
), n AS (
  INSERT INTO notifications (recipients, roles, workflow_id, kind, subject, body, dedup_key, created_at)
  SELECT CASE WHEN esc THEN ARRAY[escalation_target, assignee, initiator] ELSE ARRAY[assignee] END,
      CASE WHEN esc THEN ARRAY['to','cc','cc'] ELSE ARRAY['to'] END,
      id, CASE WHEN esc THEN 'escalation' ELSE 'reminder' END,
      format('Escalated to you: "%s" (%s) is overdue', title, stage),
      format('Hello %s, the workflow "%s" at stage %s passed its deadline of %s and is now assigned to %s. Please act on it.', assignee, title, stage, due_at, escalation_target),
      format('%s:%s:%s:%s', CASE WHEN esc THEN 'escalate' ELSE 'remind' END, id, cycle, escalation_level),
      now()
  FROM u
), o AS (
  INSERT INTO outbox (channel, recipient, workflow_id, check_run_id, payload, idempotency_key,
      next_attempt_at, created_at)
  SELECT 'email', us.email, u.id, 1,
      jsonb_build_object('template', 'reminder', 'title', u.title, 'stage', u.stage, 'kind', 'reminder',
          'due', u.due_at, 'greeting', us.display_name, 'previous', u.assignee, 'new', u.assignee,
          'assignee', u.assignee, 'workflow_id', u.id, 'to', jsonb_build_array(us.email), 'cc', '[]'::jsonb,
          'level', u.escalation_level, 'check_run_id', 1),
      format('remind:%s:%s:%s:email', u.id, u.cycle, u.escalation_level), now(), now()
  FROM u JOIN users us ON us.id = u.assignee WHERE NOT u.esc
), h AS (
  INSERT INTO outbox_held (check_run_id, group_key, threshold, item, idempotency_key, created_at)
  SELECT 1, u.escalation_target || ':email', 5,
      jsonb_build_object('channel', 'email', 'recipient', us.email, 'workflow_id', u.id,
        'payload', jsonb_build_object('template', 'escalation_to', 'title', u.title, 'stage', u.stage,
          'kind', 'escalation', 'due', u.due_at, 'greeting', us.display_name, 'previous', u.assignee,
          'new', u.escalation_target, 'assignee', u.assignee, 'workflow_id', u.id,
          'to', jsonb_build_array(us.email), 'cc', jsonb_build_array('x@example.com', 'y@example.com'),
          'level', u.escalation_level + 1, 'check_run_id', 1),
        'idempotency_key', format('escalate:%s:%s:%s:email', u.id, u.cycle, u.escalation_level + 1)),
      format('escalate:%s:%s:%s:email', u.id, u.cycle, u.escalation_level + 1), now()
  FROM u JOIN users us ON us.id = u.escalation_target WHERE u.esc
)
SELECT count(*) FROM u;
COMMIT;
