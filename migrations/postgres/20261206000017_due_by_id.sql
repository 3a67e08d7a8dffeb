-- The due index carries the workflow id after the instant, so that the slices a check is cut
-- into can split many workflows sharing one next_check_at (deadlines snapped to the start of
-- business hours, bulk imports) and each batch's claim still reads only its own slice, in
-- index order: the slice bounds are (next_check_at, id) row comparisons. The planner's cut is
-- an index-only scan of it. (A 100k tick's database floor: 1.713 / 1.571 s with the old index,
-- 1.608 / 1.667 s with this one, alternated: no difference.)
CREATE INDEX workflows_due_by_id ON workflows (next_check_at, id)
    WHERE status IN ('pending', 'escalated');
DROP INDEX workflows_due;
ALTER INDEX workflows_due_by_id RENAME TO workflows_due;
