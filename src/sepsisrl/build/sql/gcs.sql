-- Glasgow Coma Scale total = eye + verbal + motor, from the three components MIMIC-IV charts
-- as separate items at the same charttime (a time with a missing component gives no total).
-- Intubated patients are charted verbal "No Response-ETT": taken as charted (1) or assumed
-- normal (5), per `gcs.intubated_verbal`.
WITH components AS (
    SELECT
        stay_id,
        charttime,
        max(CASE WHEN itemid IN {{gcs_eye}} THEN valuenum END) AS eye,
        max(CASE WHEN itemid IN {{gcs_verbal}} THEN
                CASE WHEN value = '{{intubated_text}}' THEN {{intubated_verbal}} ELSE valuenum END
            END) AS verbal,
        max(CASE WHEN itemid IN {{gcs_motor}} THEN valuenum END) AS motor
    FROM chart
    WHERE itemid IN {{gcs_items}} AND charttime IS NOT NULL
    GROUP BY stay_id, charttime
)
SELECT stay_id, charttime, 'gcs_total' AS concept, 0 AS arterial, eye + verbal + motor AS value
FROM components
WHERE eye IS NOT NULL AND verbal IS NOT NULL AND motor IS NOT NULL
