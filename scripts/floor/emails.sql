-- The reminder emails (outbox rows).
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
