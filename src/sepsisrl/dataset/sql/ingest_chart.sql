-- Ingest: chartevents rows of the configured items; the text value is kept for
-- the text items only.
SELECT stay_id, TRY_CAST(charttime AS TIMESTAMP) AS charttime,
       CAST(itemid AS INTEGER) AS itemid, CAST(valuenum AS DOUBLE) AS valuenum,
       CASE WHEN itemid IN {{text_items}} THEN value END AS value
FROM {{source}} WHERE {{where}}
ORDER BY stay_id, charttime, itemid, valuenum, value
