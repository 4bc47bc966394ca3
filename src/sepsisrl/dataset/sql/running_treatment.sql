-- The treatment running at each decision time tau and given just before it (state variant
-- running_treatment; docs/build.md). Reads the views decision_steps (stay_id, step, tau) and
-- infusions. Only infusion rows that started before tau are read:
--   vaso_rate_at_tau: NE-equivalent mcg/kg/min summed over the vasopressor rows whose
--                     [starttime, endtime) contains tau (started before tau, still running at
--                     tau), the rates and factors of step_treatment.sql
--   fluid_ml_before:  mL of IV fluid in [tau - {{step}} h, tau), each row prorated by its
--                     overlap with the window as in step_treatment.sql (for step k >= 1 the
--                     previous step's action window)
--   last_start:       the latest starttime read (always before tau)
WITH overlap AS (
    SELECT d.stay_id, d.step, i.agent, i.ne_rate, i.fluid_ml, i.starttime,
           i.endtime > d.tau AS running,
           epoch(least(i.endtime, d.tau) - greatest(i.starttime, d.tau - INTERVAL {{step}} HOUR)) AS seconds,
           epoch(i.endtime - i.starttime) AS duration
    FROM decision_steps d
    JOIN infusions i
      ON i.stay_id = d.stay_id AND i.starttime < d.tau
     AND i.endtime > d.tau - INTERVAL {{step}} HOUR
)
SELECT
    d.stay_id,
    d.step,
    coalesce(sum(o.ne_rate) FILTER (WHERE o.agent IN {{vasopressors}} AND o.ne_rate > 0 AND o.running), 0)
        AS vaso_rate_at_tau,
    coalesce(sum(o.fluid_ml * o.seconds / o.duration) FILTER (WHERE o.agent = 'iv_fluid' AND o.fluid_ml > 0), 0)
        AS fluid_ml_before,
    max(o.starttime) FILTER (WHERE (o.agent IN {{vasopressors}} AND o.ne_rate > 0 AND o.running)
                              OR (o.agent = 'iv_fluid' AND o.fluid_ml > 0)) AS last_start
FROM decision_steps d
LEFT JOIN overlap o USING (stay_id, step)
GROUP BY d.stay_id, d.step
ORDER BY d.stay_id, d.step
