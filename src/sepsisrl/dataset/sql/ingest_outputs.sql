-- Ingest: outputevents rows of the urine and GU irrigant items.
SELECT stay_id, TRY_CAST(charttime AS TIMESTAMP) AS charttime,
       CAST(itemid AS INTEGER) AS itemid, CAST(value AS DOUBLE) AS value
FROM {{source}}
WHERE {{where}}
ORDER BY stay_id, charttime, itemid, value
