-- The escalation emails, held for the digest decision at the end of the run.
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
