-- Delivered messages are pruned after their retention (ESCALATOR_OUTBOX_RETENTION, the beat's
-- sweep): this index finds the oldest sent rows without reading the table. Pending, failed
-- and dead rows are never pruned.
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE status = 'sent';
