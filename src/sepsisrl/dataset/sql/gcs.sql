-- Glasgow Coma Scale total = eye + verbal + motor, one value per time any of the three
-- components ({{gcs_items}}) was charted for the stay (configs/build.yaml `gcs`).
--   intubated verbal ('{{intubated_text}}'): with `intubated: gcs_normal` the total of that time
--     is 15, and so is the total of the next time when it charts no verbal response and
--     carries from it (the GCS before sedation assumed normal, as mimic-code); otherwise the
--     verbal component is {{intubated_verbal}}.
--   a missing component is carried from the stay's previous GCS time when that is less than
--     {{carry_seconds}} s earlier (never from an intubated time under gcs_normal), else it
--     is {{default_eye}} / {{default_verbal}} / {{default_motor}} (NULL: the time has no total).
WITH charted AS (
    SELECT
        stay_id,
        charttime,
        max(CASE WHEN itemid IN {{gcs_eye}} THEN valuenum END) AS eye,
        max(CASE WHEN itemid IN {{gcs_verbal}} THEN
                CASE WHEN value = '{{intubated_text}}' THEN {{intubated_verbal}} ELSE valuenum END
            END) AS verbal,
        coalesce(bool_or(itemid IN {{gcs_verbal}} AND value = '{{intubated_text}}'), false) AS ett,
        max(CASE WHEN itemid IN {{gcs_motor}} THEN valuenum END) AS motor
    FROM chart
    WHERE itemid IN {{gcs_items}} AND charttime IS NOT NULL
    GROUP BY stay_id, charttime
), with_previous AS (
    SELECT
        *,
        coalesce(lag(charttime) OVER w > charttime - INTERVAL {{carry_seconds}} SECOND, false)
            AS recent,
        lag(eye) OVER w AS prev_eye,
        lag(verbal) OVER w AS prev_verbal,
        lag(ett) OVER w AS prev_ett,
        lag(motor) OVER w AS prev_motor
    FROM charted
    WINDOW w AS (PARTITION BY stay_id ORDER BY charttime)
), scored AS (
    SELECT
        stay_id,
        charttime,
        CASE
            WHEN {{ett_normal}} AND ett THEN 15
            WHEN {{ett_normal}} AND recent AND prev_ett AND verbal IS NULL THEN 15
            -- no longer intubated: nothing is carried from the intubated time
            WHEN {{ett_normal}} AND recent AND prev_ett THEN
                coalesce(eye, {{default_eye}})
                + coalesce(verbal, {{default_verbal}})
                + coalesce(motor, {{default_motor}})
            ELSE
                coalesce(eye, CASE WHEN recent THEN prev_eye END, {{default_eye}})
                + coalesce(verbal, CASE WHEN recent THEN prev_verbal END, {{default_verbal}})
                + coalesce(motor, CASE WHEN recent THEN prev_motor END, {{default_motor}})
        END AS value
    FROM with_previous
)
SELECT stay_id, charttime, 'gcs_total' AS concept, 0 AS arterial, value
FROM scored
WHERE value IS NOT NULL
