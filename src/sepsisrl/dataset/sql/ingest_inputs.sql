-- Ingest: inputevents rows of the vasopressor, dobutamine and IV-fluid items.
SELECT stay_id, TRY_CAST(starttime AS TIMESTAMP) AS starttime,
       TRY_CAST(endtime AS TIMESTAMP) AS endtime,
       CAST(itemid AS INTEGER) AS itemid, CAST(amount AS DOUBLE) AS amount, amountuom,
       CAST(rate AS DOUBLE) AS rate, rateuom, CAST(patientweight AS DOUBLE) AS patientweight,
       ordercomponenttypedescription
FROM {{source}}
WHERE {{where}}
ORDER BY stay_id, starttime, endtime, itemid, rate, amount, rateuom, amountuom, patientweight,
         ordercomponenttypedescription
