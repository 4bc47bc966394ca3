-- Hourly SOFA score per ICU stay (Vincent et al., Intensive Care Med 1996; Sepsis-3, Singer
-- et al., JAMA 2016). Hours run from intime - {{hours_before}} h (labs drawn before ICU
-- admission count) to outtime; hour `hr` covers [starttime, endtime). Each component is the
-- worst value in the trailing 24 h (this hour and the 23 before); a component without data in
-- that window scores 0 and is flagged as missing. Conventions: configs/build.yaml `sofa`.
--   respiration: PaO2/FiO2 of each PaO2 ({{pao2_filter}}); FiO2 = {{fio2_expr}} (fio2_bg: the
--     blood gas's own FiO2, fio2_chart: the last FiO2 charted in the 4 h before the gas);
--     3-4 need the gas to fall in a ventilation period (ventilation.parquet)
--   coagulation: platelets; liver: bilirubin; CNS: GCS total
--   cardiovascular: MAP < 70, or dopamine / dobutamine / epinephrine / norepinephrine rates
--     (running {{vaso_when}})
--   renal: creatinine, or the urine criterion (documented_time: {{urine_documented}})
WITH stays AS (
    SELECT stay_id, intime, outtime, date_trunc('hour', intime) AS base
    FROM icustays
    WHERE outtime > intime
), hours AS (
    SELECT
        stay_id,
        hr,
        base + to_hours(hr) AS starttime,
        base + to_hours(hr + 1) AS endtime
    FROM (
        SELECT stay_id, base,
               unnest(range(-{{hours_before}}, CAST(ceil(epoch(outtime - base) / 3600.0) AS BIGINT))) AS hr
        FROM stays
    )
), measured AS (
    SELECT m.stay_id, m.concept, m.value,
           CAST(floor(epoch(m.charttime - s.base) / 3600.0) AS BIGINT) AS hr
    FROM measurements m JOIN stays s USING (stay_id)
    WHERE m.concept IN ('platelets', 'bilirubin_total', 'creatinine', 'map', 'gcs_total')
), per_hour AS (
    SELECT stay_id, hr,
        min(CASE WHEN concept = 'platelets' THEN value END) AS platelets,
        max(CASE WHEN concept = 'bilirubin_total' THEN value END) AS bilirubin,
        max(CASE WHEN concept = 'creatinine' THEN value END) AS creatinine,
        min(CASE WHEN concept = 'map' THEN value END) AS map,
        min(CASE WHEN concept = 'gcs_total' THEN value END) AS gcs
    FROM measured GROUP BY stay_id, hr
), gas_fio2 AS (
    -- the FiO2 recorded with a blood gas sits at the time of its PaO2 (lab_measurements.sql)
    SELECT stay_id, charttime, max(value) AS fio2_bg
    FROM measurements WHERE concept = 'fio2_bg'
    GROUP BY stay_id, charttime
), gases AS (
    SELECT p.stay_id, p.charttime, p.value AS pao2, b.fio2_bg,
           CASE WHEN f.charttime >= p.charttime - INTERVAL 4 HOUR THEN f.value END AS fio2_chart
    FROM (SELECT * FROM measurements WHERE concept = 'pao2' AND {{pao2_filter}}) p
    ASOF LEFT JOIN (SELECT * FROM measurements WHERE concept = 'fio2_vent') f
      ON p.stay_id = f.stay_id AND p.charttime >= f.charttime
    LEFT JOIN gas_fio2 b
      ON p.stay_id = b.stay_id AND p.charttime = b.charttime
), rated AS (
    SELECT g.stay_id, g.charttime, g.pao2 / ({{fio2_expr}}) AS pf,
           EXISTS (
               SELECT 1 FROM ventilation v
               WHERE v.stay_id = g.stay_id
                 AND g.charttime >= v.starttime AND g.charttime <= v.endtime
           ) AS ventilated
    FROM gases g
), resp_hour AS (
    SELECT r.stay_id,
           CAST(floor(epoch(r.charttime - s.base) / 3600.0) AS BIGINT) AS hr,
           max(CASE
                 WHEN r.pf IS NULL THEN NULL
                 WHEN r.pf < 100 AND r.ventilated THEN 4
                 WHEN r.pf < 200 AND r.ventilated THEN 3
                 WHEN r.pf < 300 THEN 2
                 WHEN r.pf < 400 THEN 1
                 ELSE 0 END) AS resp
    FROM rated r JOIN stays s USING (stay_id)
    GROUP BY 1, 2
), vaso_hour AS (
    SELECT i.stay_id, h.hr,
        max(CASE WHEN agent = 'norepinephrine' THEN agent_rate END) AS norepinephrine,
        max(CASE WHEN agent = 'epinephrine' THEN agent_rate END) AS epinephrine,
        max(CASE WHEN agent = 'dopamine' THEN agent_rate END) AS dopamine,
        max(CASE WHEN agent = 'dobutamine' THEN agent_rate END) AS dobutamine
    FROM infusions i
    JOIN hours h ON i.stay_id = h.stay_id AND i.starttime < h.endtime AND {{vaso_until}}
    WHERE i.agent IN ('norepinephrine', 'epinephrine', 'dopamine', 'dobutamine') AND i.agent_rate > 0
    GROUP BY 1, 2
), urine_times AS (
    -- documented_time: each urine charting time documents the time since the previous one
    -- (the first, since the stay's first heart rate within a month of the stay)
    SELECT u.stay_id, u.charttime, u.value,
           epoch(u.charttime - coalesce(lag(u.charttime) OVER w, f.first_hr)) / 3600.0 AS hours
    FROM urine u
    JOIN (
        SELECT m.stay_id, min(m.charttime) AS first_hr
        FROM measurements m JOIN stays s USING (stay_id)
        WHERE m.concept = 'heart_rate'
          AND m.charttime > s.intime - INTERVAL 1 MONTH AND m.charttime < s.outtime + INTERVAL 1 MONTH
        GROUP BY 1
    ) f USING (stay_id)
    WHERE {{urine_documented}}
    WINDOW w AS (PARTITION BY u.stay_id ORDER BY u.charttime)
), urine_rates AS (
    -- the urine of the 23 h up to each charting time over the time it documents, scaled to
    -- 24 h when that time is 22-30 h
    SELECT stay_id, charttime,
           CASE WHEN documented >= 22 AND documented <= 30 THEN total / documented * 24 END AS uo_24h
    FROM (
        SELECT stay_id, charttime,
               sum(value) OVER w AS total,
               sum(hours) OVER w AS documented
        FROM urine_times
        WINDOW w AS (PARTITION BY stay_id ORDER BY charttime
                     RANGE BETWEEN INTERVAL 23 HOUR PRECEDING AND CURRENT ROW)
    )
), urine_rate_hour AS (
    SELECT r.stay_id, CAST(floor(epoch(r.charttime - s.base) / 3600.0) AS BIGINT) AS hr,
           max(r.uo_24h) AS uo_24h
    FROM urine_rates r JOIN stays s USING (stay_id)
    GROUP BY 1, 2
), urine_hour AS (
    -- icu_day: the urine charted in each hour
    SELECT u.stay_id, CAST(floor(epoch(u.charttime - s.base) / 3600.0) AS BIGINT) AS hr,
           sum(u.value) AS urine, count(*) AS n_urine
    FROM urine u JOIN stays s USING (stay_id)
    WHERE NOT {{urine_documented}}
    GROUP BY 1, 2
), grid AS (
    SELECT h.stay_id, h.hr, h.starttime, h.endtime,
        p.platelets, p.bilirubin, p.creatinine, p.map, p.gcs, r.resp,
        v.norepinephrine, v.epinephrine, v.dopamine, v.dobutamine,
        ur.uo_24h,
        CASE WHEN h.hr >= 0 THEN coalesce(u.urine, 0) END AS urine,
        CASE WHEN h.hr >= 0 THEN coalesce(u.n_urine, 0) END AS n_urine
    FROM hours h
    LEFT JOIN per_hour p USING (stay_id, hr)
    LEFT JOIN resp_hour r USING (stay_id, hr)
    LEFT JOIN vaso_hour v USING (stay_id, hr)
    LEFT JOIN urine_hour u USING (stay_id, hr)
    LEFT JOIN urine_rate_hour ur USING (stay_id, hr)
), scored AS (
    SELECT *,
        CASE WHEN platelets < 20 THEN 4 WHEN platelets < 50 THEN 3 WHEN platelets < 100 THEN 2
             WHEN platelets < 150 THEN 1 WHEN platelets IS NOT NULL THEN 0 END AS coag_h,
        CASE WHEN bilirubin >= 12 THEN 4 WHEN bilirubin >= 6 THEN 3 WHEN bilirubin >= 2 THEN 2
             WHEN bilirubin >= 1.2 THEN 1 WHEN bilirubin IS NOT NULL THEN 0 END AS liver_h,
        CASE WHEN gcs < 6 THEN 4 WHEN gcs < 10 THEN 3 WHEN gcs < 13 THEN 2 WHEN gcs < 15 THEN 1
             WHEN gcs IS NOT NULL THEN 0 END AS cns_h,
        CASE WHEN dopamine > 15 OR epinephrine > 0.1 OR norepinephrine > 0.1 THEN 4
             WHEN dopamine > 5 OR epinephrine > 0 OR norepinephrine > 0 THEN 3
             WHEN dopamine > 0 OR dobutamine > 0 THEN 2
             WHEN map < 70 THEN 1
             WHEN map IS NOT NULL THEN 0 END AS cardio_h,
        -- the blood-pressure level alone (no dose levels): the state-defined part of the
        -- cardiovascular component, for the sofa_state_shaped reward (dataset/replay.py)
        CASE WHEN map < 70 THEN 1 WHEN map IS NOT NULL THEN 0 END AS cardio_map_h,
        CASE WHEN creatinine >= 5 THEN 4 WHEN creatinine >= 3.5 THEN 3 WHEN creatinine >= 2 THEN 2
             WHEN creatinine >= 1.2 THEN 1 WHEN creatinine IS NOT NULL THEN 0 END AS renal_cr_h,
        CASE WHEN uo_24h < 200 THEN 4 WHEN uo_24h < 500 THEN 3
             WHEN uo_24h IS NOT NULL THEN 0 END AS renal_uo_h
    FROM grid
), windowed AS (
    SELECT stay_id, hr, starttime, endtime, uo_24h,
        endtime >= intime + INTERVAL 24 HOUR AS full_day,
        max(resp) OVER w AS resp_24,
        max(coag_h) OVER w AS coag_24,
        max(liver_h) OVER w AS liver_24,
        max(cardio_h) OVER w AS cardio_24,
        max(cardio_map_h) OVER w AS cardio_map_24,
        max(cns_h) OVER w AS cns_24,
        max(renal_cr_h) OVER w AS renal_cr_24,
        max(renal_uo_h) OVER w AS renal_uo_24,
        sum(urine) OVER w AS urine_24,
        sum(n_urine) OVER w AS n_urine_24
    FROM scored JOIN stays USING (stay_id)
    WINDOW w AS (PARTITION BY stay_id ORDER BY hr ROWS BETWEEN 23 PRECEDING AND CURRENT ROW)
), renal_urine AS (
    SELECT *,
        CASE
            WHEN {{urine_documented}} THEN renal_uo_24
            WHEN full_day AND n_urine_24 > 0 AND urine_24 < 200 THEN 4
            WHEN full_day AND n_urine_24 > 0 AND urine_24 < 500 THEN 3
            WHEN full_day AND n_urine_24 > 0 THEN 0
        END AS renal_urine_24
    FROM windowed
)
SELECT
    stay_id, hr, starttime, endtime,
    coalesce(resp_24, 0) AS sofa_respiration,
    coalesce(coag_24, 0) AS sofa_coagulation,
    coalesce(liver_24, 0) AS sofa_liver,
    coalesce(cardio_24, 0) AS sofa_cardiovascular,
    coalesce(cns_24, 0) AS sofa_cns,
    greatest(coalesce(renal_cr_24, 0), coalesce(renal_urine_24, 0)) AS sofa_renal,
    resp_24 IS NULL AS respiration_missing,
    coag_24 IS NULL AS coagulation_missing,
    liver_24 IS NULL AS liver_missing,
    cardio_24 IS NULL AS cardiovascular_missing,
    cns_24 IS NULL AS cns_missing,
    renal_cr_24 IS NULL AND renal_urine_24 IS NULL AS renal_missing,
    -- the urine volume the hour's urine criterion read: documented_time, the hour's largest
    -- 24 h-scaled volume (NULL when no urine chart of the hour qualifies); icu_day, the sum
    -- of the trailing 24 h once 24 h of ICU time have passed
    CASE WHEN {{urine_documented}} THEN uo_24h
         WHEN full_day AND n_urine_24 > 0 THEN urine_24 END AS urine_24h,
    coalesce(cardio_map_24, 0) AS sofa_cardiovascular_map
FROM renal_urine
