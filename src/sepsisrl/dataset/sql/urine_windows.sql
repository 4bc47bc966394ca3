-- Urine output per decision step: the sum over [tau - {{step}} h, tau) (GU irrigant in counts
-- negative; see urine.sql). A window without any urine row is "not observed".
WITH ep AS (
    SELECT stay_id, tau0, tau_last FROM episodes WHERE n_steps > 0
)
SELECT u.stay_id,
       CAST(floor(epoch(u.charttime - (e.tau0 - INTERVAL {{step}} HOUR)) / ({{step}} * 3600.0)) AS BIGINT) AS step,
       sum(u.value) AS total,
       count(*) AS n,
       max(u.charttime) AS last_time
FROM urine u JOIN ep e USING (stay_id)
WHERE u.charttime >= e.tau0 - INTERVAL {{step}} HOUR AND u.charttime < e.tau_last
GROUP BY 1, 2
