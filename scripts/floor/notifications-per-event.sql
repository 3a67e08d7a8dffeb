-- A data-model variant: one in-app notification row per event, its recipients in an array
-- (FLOOR_NOTIFICATIONS=per-event, on per-event-schema.sql; docs/benchmarks.md, session 7).
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
