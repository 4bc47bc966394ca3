-- Treatment given in each action window [tau, tau + {{step}} h) (docs/clinical.md, "Actions").
--   vasopressor: NE-equivalent mcg/kg/min, summed across concurrent agents and time-weighted
--                over the window: sum(rate_i * overlap_i) / window length
--   IV fluid:    mL, each row's amount prorated by the overlap of [starttime, endtime) with
--                the window
--   vaso_ne_rate_first_hour: the vasopressor rate time-weighted over [tau, tau + 1 h) only
--                (what was running when the window began; a diagnostic of titration inside
--                the window, not part of the action)
WITH windows AS (
    SELECT stay_id, step, tau, tau + INTERVAL {{step}} HOUR AS tau_end FROM steps
), overlap AS (
    SELECT w.stay_id, w.step, i.agent, i.ne_rate, i.fluid_ml,
           epoch(least(i.endtime, w.tau_end) - greatest(i.starttime, w.tau)) AS seconds,
           greatest(epoch(least(i.endtime, w.tau + INTERVAL 1 HOUR) - greatest(i.starttime, w.tau)), 0)
               AS first_hour_seconds,
           epoch(i.endtime - i.starttime) AS duration
    FROM windows w
    JOIN infusions i
      ON i.stay_id = w.stay_id AND i.starttime < w.tau_end AND i.endtime > w.tau
)
SELECT
    w.stay_id,
    w.step,
    coalesce(sum(o.ne_rate * o.seconds) FILTER (WHERE o.agent IN {{vasopressors}} AND o.ne_rate > 0), 0)
        / ({{step}} * 3600.0) AS vaso_ne_rate,
    coalesce(sum(o.fluid_ml * o.seconds / o.duration) FILTER (WHERE o.agent = 'iv_fluid' AND o.fluid_ml > 0), 0)
        AS fluid_ml,
    coalesce(sum(o.ne_rate * o.first_hour_seconds) FILTER (WHERE o.agent IN {{vasopressors}} AND o.ne_rate > 0), 0)
        / 3600.0 AS vaso_ne_rate_first_hour
FROM windows w
LEFT JOIN overlap o USING (stay_id, step)
GROUP BY w.stay_id, w.step
