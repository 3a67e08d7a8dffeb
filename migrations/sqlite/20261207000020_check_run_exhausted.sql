-- What a check run did besides reminding and escalating (PostgreSQL migration
-- 20261207000023).
ALTER TABLE check_runs ADD COLUMN exhausted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE check_runs ADD COLUMN renotified INTEGER NOT NULL DEFAULT 0;
