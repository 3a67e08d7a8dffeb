-- What a check run did besides reminding and escalating: workflows it found with no one left
-- to escalate to (exhausted) and those it renotified after the chain. A run that only did
-- these read "checked=18 reminded=0 escalated=0", as if it had done nothing. Constant
-- defaults: no table rewrite.
ALTER TABLE check_runs
    ADD COLUMN exhausted integer NOT NULL DEFAULT 0,
    ADD COLUMN renotified integer NOT NULL DEFAULT 0;
