-- Urine output (mL) per ICU stay and charttime, from outputevents. GU irrigant instilled
-- ({{urine_negative}}) counts negative and the rows of one charttime are summed, so that
-- irrigant in and irrigant/urine out charted together net to the urine (as mimic-code's
-- urine_output). The validity range [0, {{max_ml}}] mL applies to that net volume, never to
-- a single row: irrigant rows of several litres are ordinary, and dropping one of a pair would
-- leave litres of negative or phantom urine. A charttime whose net falls outside the range
-- (e.g. irrigant in without its out row) is dropped, as are negative charted rows; both are
-- counted in the audit.
WITH signed AS (
    SELECT
        stay_id,
        charttime,
        CASE WHEN itemid IN {{urine_negative}} THEN -value ELSE value END AS value
    FROM outputs
    WHERE value IS NOT NULL AND charttime IS NOT NULL AND value >= 0
)
SELECT stay_id, charttime, sum(value) AS value
FROM signed
GROUP BY stay_id, charttime
HAVING sum(value) >= 0 AND sum(value) <= {{max_ml}}
