-- A delivery whose workflow moved on before it went out (completed or cancelled; for a
-- reminder, also escalated since) is not sent: the sender marks it `obsolete` (I4).
ALTER TABLE outbox DROP CONSTRAINT outbox_status_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_status_check
    CHECK (status IN ('pending', 'sent', 'failed', 'dead', 'obsolete'));
