-- Ingest: ICU stays with parsed times, from the source (or checked) relation.
SELECT subject_id, hadm_id, stay_id,
       TRY_CAST(intime AS TIMESTAMP) AS intime, TRY_CAST(outtime AS TIMESTAMP) AS outtime
FROM {{source}} ORDER BY stay_id
