-- Urine audit: outputevents rows (view outputs) with a value, the negative ones, and the
-- distinct (stay, charttime) of the others.
SELECT count(*), count(*) FILTER (WHERE value < 0),
                   count(DISTINCT (stay_id, charttime))
                     FILTER (WHERE value >= 0 AND charttime IS NOT NULL)
            FROM outputs WHERE value IS NOT NULL
