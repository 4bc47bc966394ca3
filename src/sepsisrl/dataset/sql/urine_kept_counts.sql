-- Urine audit: charttimes kept in the stage's urine table ({{urine}}), and those of them with
-- a GU irrigant row (items {{negative}}) in outputs.
SELECT count(*), count(*) FILTER (WHERE EXISTS (
                       SELECT 1 FROM outputs o WHERE o.stay_id = u.stay_id
                         AND o.charttime = u.charttime AND o.itemid IN {{negative}}))
            FROM {{urine}} u
