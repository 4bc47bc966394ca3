-- Ingest: labevents rows of the configured items; the text value is kept for the
-- blood-gas specimen type only.
SELECT subject_id, hadm_id, specimen_id, TRY_CAST(charttime AS TIMESTAMP) AS charttime,
       TRY_CAST(storetime AS TIMESTAMP) AS storetime, CAST(itemid AS INTEGER) AS itemid,
       CAST(valuenum AS DOUBLE) AS valuenum,
       CASE WHEN itemid IN {{specimen_items}} THEN value END AS value
FROM {{source}} WHERE {{where}}
ORDER BY subject_id, charttime, itemid, specimen_id, valuenum, value
