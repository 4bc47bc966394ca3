-- Per decision step, the measurements of the window [tau - {{step}} h, tau) (docs/clinical.md,
-- "State"): the last value (invasive pressures preferred when both kinds were charted in
-- the window; equal times: the larger value), the minimum, the maximum and the count. Step s of an episode has the window
-- [tau0 + (s-1) * {{step}} h, tau0 + s * {{step}} h). Data charted before the first window
-- become one "carry" row (step -1: the last value) for forward filling. Nothing at or after
-- the episode's last decision time is read.
WITH ep AS (
    SELECT stay_id, tau0, tau_last FROM episodes WHERE n_steps > 0
), m AS (
    SELECT
        m.stay_id, m.concept, m.value, m.arterial, m.charttime,
        CAST(floor(epoch(m.charttime - (e.tau0 - INTERVAL {{step}} HOUR)) / ({{step}} * 3600.0)) AS BIGINT) AS bucket
    FROM measurements m
    JOIN ep e USING (stay_id)
    WHERE m.charttime < e.tau_last
)
SELECT stay_id, concept, bucket AS step,
       arg_max(value, [arterial, epoch(charttime), value]) AS last_value,
       min(value) AS min_value,
       max(value) AS max_value,
       count(*) AS n,
       max(charttime) AS last_time
FROM m WHERE bucket >= 0
GROUP BY stay_id, concept, bucket
UNION ALL
SELECT stay_id, concept, -1 AS step,
       arg_max(value, [epoch(charttime), value]) AS last_value,
       NULL AS min_value, NULL AS max_value,
       count(*) AS n,
       max(charttime) AS last_time
FROM m WHERE bucket < 0
GROUP BY stay_id, concept
