)
SELECT count(*) FROM u;
COMMIT;
