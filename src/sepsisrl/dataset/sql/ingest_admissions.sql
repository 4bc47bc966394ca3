-- Ingest: hospital admissions with parsed times.
SELECT subject_id, hadm_id, TRY_CAST(admittime AS TIMESTAMP) AS admittime,
       TRY_CAST(dischtime AS TIMESTAMP) AS dischtime,
       TRY_CAST(deathtime AS TIMESTAMP) AS deathtime
FROM {{source}} ORDER BY hadm_id
