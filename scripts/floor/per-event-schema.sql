-- A data-model variant for scripts/bench-floor.sh (FLOOR_NOTIFICATIONS=per-event): one in-app
-- notification row per event, its recipients in an array under a GIN index, instead of one row per recipient.
ALTER TABLE notifications ADD COLUMN recipients text[], ADD COLUMN roles text[];
ALTER TABLE notifications ALTER COLUMN recipient DROP NOT NULL, ALTER COLUMN role DROP NOT NULL;
DROP INDEX notifications_recipient;
CREATE INDEX notifications_recipients ON notifications USING gin (recipients);
