-- Periods during which a patient counts as ventilated for SOFA respiration 3-4: one row per
-- period (stay_id, starttime, endtime, both inclusive), per `ventilation.definition`.
--
-- invasive (mimic-code's ventilation concept): each charting time with an O2 delivery device
-- ({{o2_device}}; the first value alphabetically when several are charted), a ventilator mode
-- ({{ventilator_mode}}) or a Hamilton ventilator mode ({{ventilator_mode_hamilton}}) is put in
-- the first class of `ventilation.invasive.classes` listing its value (values compared without
-- surrounding spaces); times matching no class are ignored. Consecutive times of one class
-- form an episode; a new one starts when the class changes or {{gap_seconds}} s or more after
-- the previous time of the class. An episode ends at the next classed time of the stay (at its
-- own last time when the next one is {{gap_seconds}} s or more later, or none follows) and
-- needs two charting times. Episodes of the classes {{ventilated_classes}} are the periods.
--
-- any_device (legacy): every time a ventilator mode, or a device in {{any_devices}}, was
-- charted starts a period of {{window_seconds}} s.
WITH charted AS (
    SELECT
        stay_id,
        charttime,
        min(CASE WHEN itemid IN {{o2_device}} THEN trim(value) END) AS device,
        max(CASE WHEN itemid IN {{ventilator_mode}} THEN trim(value) END) AS mode,
        max(CASE WHEN itemid IN {{ventilator_mode_hamilton}} THEN trim(value) END) AS hamilton
    FROM chart
    WHERE charttime IS NOT NULL AND value IS NOT NULL
      AND itemid IN {{all_items}}
    GROUP BY stay_id, charttime
), classified AS (
    SELECT stay_id, charttime, {{class_case}} AS class
    FROM charted
), ordered AS (
    SELECT
        stay_id,
        charttime,
        class,
        lag(charttime) OVER (PARTITION BY stay_id, class ORDER BY charttime) AS prev_same_class,
        lag(class) OVER w AS prev_class,
        lead(charttime) OVER w AS next_time
    FROM classified
    WHERE class IS NOT NULL
    WINDOW w AS (PARTITION BY stay_id ORDER BY charttime)
), episodes AS (
    SELECT
        *,
        sum(CASE
                WHEN prev_class IS NULL THEN 1
                WHEN epoch(charttime) - epoch(prev_same_class) >= {{gap_seconds}} THEN 1
                WHEN prev_class <> class THEN 1
                ELSE 0
            END) OVER (PARTITION BY stay_id ORDER BY charttime) AS episode
    FROM ordered
), invasive AS (
    SELECT
        stay_id,
        min(charttime) AS starttime,
        max(CASE
                WHEN next_time IS NULL OR epoch(next_time) - epoch(charttime) >= {{gap_seconds}}
                    THEN charttime
                ELSE next_time
            END) AS endtime
    FROM episodes
    WHERE class IN {{ventilated_classes}}
    GROUP BY stay_id, episode
    HAVING min(charttime) <> max(charttime)
), any_device AS (
    SELECT DISTINCT stay_id, charttime AS starttime,
           charttime + INTERVAL {{window_seconds}} SECOND AS endtime
    FROM chart
    WHERE charttime IS NOT NULL
      AND ((itemid IN {{ventilator_mode}} AND value IS NOT NULL)
        OR (itemid IN {{ventilator_mode_hamilton}} AND value IS NOT NULL)
        OR (itemid IN {{o2_device}} AND trim(value) IN {{any_devices}}))
)
SELECT stay_id, starttime, endtime FROM invasive WHERE {{use_invasive}}
UNION ALL
SELECT stay_id, starttime, endtime FROM any_device WHERE NOT {{use_invasive}}
