-- Ingest: systemic antibiotic prescriptions (sepsis.antibiotic_patterns, less the excluded
-- drugs and routes) with a start time.
SELECT subject_id, hadm_id, TRY_CAST(starttime AS TIMESTAMP) AS starttime, drug, route
FROM {{source}}
WHERE {{where}} AND TRY_CAST(starttime AS TIMESTAMP) IS NOT NULL
ORDER BY subject_id, starttime, hadm_id, drug, route
