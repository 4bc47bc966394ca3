-- Ingest: one row per culture specimen (microbiologyevents), its first charttime and date.
SELECT subject_id, min(hadm_id) AS hadm_id, micro_specimen_id,
       min(TRY_CAST(charttime AS TIMESTAMP)) AS charttime,
       CAST(min(TRY_CAST(chartdate AS TIMESTAMP)) AS DATE) AS chartdate
FROM {{source}} GROUP BY subject_id, micro_specimen_id
ORDER BY subject_id, micro_specimen_id
