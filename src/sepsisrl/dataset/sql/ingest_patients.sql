-- Ingest: patients (date of death as a DATE).
SELECT subject_id, gender, anchor_age, CAST(anchor_year AS BIGINT) AS anchor_year,
       CAST(TRY_CAST(dod AS TIMESTAMP) AS DATE) AS dod
FROM {{source}} ORDER BY subject_id
