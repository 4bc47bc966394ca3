-- Urine output (mL) from outputevents; GU irrigant instilled ({{urine_negative}}) counts
-- negative so that irrigant-out minus irrigant-in leaves the urine. Rows outside
-- [0, {{max_row}}] mL per row are dropped as implausible (counted in the audit).
SELECT
    stay_id,
    charttime,
    CASE WHEN itemid IN {{urine_negative}} THEN -value ELSE value END AS value
FROM outputs
WHERE value IS NOT NULL AND charttime IS NOT NULL
  AND value >= 0 AND value <= {{max_row}}
