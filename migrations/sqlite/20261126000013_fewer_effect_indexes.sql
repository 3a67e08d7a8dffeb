-- No query reads audit rows by check run (the PostgreSQL migration of the same number drops
-- it too). SQLite keeps its notifications indexes: its unique key on dedup_key is part of the
-- table definition.
DROP INDEX audit_logs_check_run;
