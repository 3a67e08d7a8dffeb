-- "Never" is the last microsecond of year 9999 (escalator_policy::never): deadlines further out
-- were stored as computed (a calendar with little working time gave the year 262142), which
-- SQLite cannot order and RFC 3339 cannot write. Bring rows written before this to the same
-- instant; the engine and the api write nothing later from now on. LEAST would turn a NULL
-- next check (closed, held or unscheduled workflows) into 9999: it is kept NULL.
UPDATE workflows
   SET warn_at = LEAST(warn_at, '9999-12-31 23:59:59.999999+00'),
       due_at = LEAST(due_at, '9999-12-31 23:59:59.999999+00'),
       next_check_at = CASE
           WHEN next_check_at IS NULL THEN NULL
           ELSE LEAST(next_check_at, '9999-12-31 23:59:59.999999+00')
       END
 WHERE warn_at > '9999-12-31 23:59:59.999999+00'
    OR due_at > '9999-12-31 23:59:59.999999+00'
    OR next_check_at > '9999-12-31 23:59:59.999999+00';
