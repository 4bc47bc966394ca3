-- Bedside measurements from chartevents, in the units of docs/clinical.md, "State".
--   temperature: Fahrenheit items -> Celsius, (F - 32) * 5/9
--   fio2_vent:   charted in percent (values > 1) -> fraction; values <= 1 taken as a fraction
--   weight_kg:   pounds -> kg (x 0.45359237)
-- `arterial` = 1 for invasive blood pressures, so a window with both can prefer them.
-- Values outside each concept's valid range are dropped afterwards (counted in the audit).
SELECT
    stay_id,
    charttime,
    CASE
        WHEN itemid IN {{heart_rate}} THEN 'heart_rate'
        WHEN itemid IN {{map_arterial}} OR itemid IN {{map_noninvasive}} THEN 'map'
        WHEN itemid IN {{sbp_arterial}} OR itemid IN {{sbp_noninvasive}} THEN 'sbp'
        WHEN itemid IN {{dbp_arterial}} OR itemid IN {{dbp_noninvasive}} THEN 'dbp'
        WHEN itemid IN {{resp_rate}} THEN 'resp_rate'
        WHEN itemid IN {{temperature_c}} OR itemid IN {{temperature_f}} THEN 'temperature'
        WHEN itemid IN {{spo2}} THEN 'spo2'
        WHEN itemid IN {{fio2}} THEN 'fio2_vent'
        WHEN itemid IN {{peep}} THEN 'peep'
        WHEN itemid IN {{weight_kg}} OR itemid IN {{weight_lb}} THEN 'weight_kg'
    END AS concept,
    CAST(itemid IN {{map_arterial}} OR itemid IN {{sbp_arterial}} OR itemid IN {{dbp_arterial}} AS INTEGER) AS arterial,
    CASE
        WHEN itemid IN {{temperature_f}} THEN (valuenum - 32.0) * 5.0 / 9.0
        WHEN itemid IN {{fio2}} AND valuenum > 1 THEN valuenum / 100.0
        WHEN itemid IN {{weight_lb}} THEN valuenum * 0.45359237
        ELSE valuenum
    END AS value
FROM chart
WHERE valuenum IS NOT NULL
  AND charttime IS NOT NULL
  AND itemid NOT IN {{text_items}}
