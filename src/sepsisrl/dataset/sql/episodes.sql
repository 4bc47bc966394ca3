-- Episodes (docs/clinical.md, "Episodes") over view cohort: the decision grid
-- tau_k = onset - {{hours_before_onset}} h + {{step_hours}} h * k, k = 0..{{last_k}}; a step is
-- kept when tau_k >= intime and tau_k is before the end of the ICU stay (discharge or death).
-- Tables grid (every k), steps (kept k, numbered 0..n-1) and episodes (one row per cohort
-- stay, with its end reason).
CREATE TABLE grid AS
            SELECT c.subject_id, c.stay_id, c.intime, c.outtime, c.onset_time, c.death_time,
                   least(c.outtime, coalesce(c.death_time, c.outtime)) AS end_time,
                   k AS grid_k,
                   c.onset_time - INTERVAL {{hours_before_onset}} HOUR + to_hours(k * {{step_hours}}) AS tau
            FROM cohort c, range({{n_steps}}) r(k);

CREATE TABLE steps AS
           SELECT subject_id, stay_id, grid_k, tau,
                  CAST(row_number() OVER (PARTITION BY stay_id ORDER BY grid_k) - 1 AS SMALLINT) AS step
           FROM grid
           WHERE tau >= intime AND tau < end_time;

CREATE TABLE episodes AS
            WITH agg AS (
                SELECT stay_id, min(tau) AS tau0, max(tau) AS tau_last, count(*) AS n_steps,
                       max(grid_k) AS last_k
                FROM steps GROUP BY stay_id
            )
            SELECT c.subject_id, c.stay_id, c.intime, c.outtime, c.onset_time, c.death_time,
                   a.tau0, a.tau_last, coalesce(a.n_steps, 0) AS n_steps,
                   CASE
                       WHEN a.n_steps IS NULL THEN 'no_decision_time_in_icu'
                       WHEN a.last_k = {{last_k}} THEN 'horizon'
                       WHEN c.death_time IS NOT NULL AND c.death_time <= c.outtime THEN 'death_in_icu'
                       ELSE 'icu_discharge'
                   END AS end_reason
            FROM cohort c LEFT JOIN agg a USING (stay_id)
