-- The in-app notifications as escalator stores them: one row per recipient.
), r AS (
  SELECT u.*, x.who, x.role FROM u CROSS JOIN LATERAL (VALUES
      (CASE WHEN u.esc THEN u.escalation_target ELSE u.assignee END, 'to'),
      (CASE WHEN u.esc THEN u.assignee END, 'cc'),
      (CASE WHEN u.esc THEN u.initiator END, 'cc')) AS x(who, role)
  WHERE x.who IS NOT NULL
), n AS (
  INSERT INTO notifications (recipient, workflow_id, kind, role, subject, body, dedup_key, created_at)
  SELECT who, id, CASE WHEN esc THEN 'escalation' ELSE 'reminder' END, role,
      format('Escalated to you: "%s" (%s) is overdue', title, stage),
      format('Hello %s, the workflow "%s" at stage %s passed its deadline of %s and is now assigned to %s. Please act on it.', who, title, stage, due_at, escalation_target),
      format('%s:%s:%s:%s:%s', CASE WHEN esc THEN 'escalate' ELSE 'remind' END, id, cycle, escalation_level, who),
      now()
  FROM r
