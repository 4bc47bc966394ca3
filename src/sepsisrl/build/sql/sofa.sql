-- Hourly SOFA score per ICU stay (Vincent et al., Intensive Care Med 1996; Sepsis-3, Singer
-- et al., JAMA 2016). Hours run from intime - {{hours_before}} h (labs drawn before ICU
-- admission count) to outtime; hour `hr` covers [starttime, endtime). Each component is the
-- worst value in the trailing 24 h (this hour and the 23 before); a component without data in
-- that window scores 0 and is flagged as missing.
--   respiration: PaO2/FiO2 (FiO2 = last charted within 4 h before the gas); 3-4 need ventilation
--   coagulation: platelets; liver: bilirubin; CNS: GCS total
--   cardiovascular: MAP < 70, or dopamine / dobutamine / epinephrine / norepinephrine doses
--   renal: creatinine, or urine output over the trailing 24 h once 24 h of ICU time have passed
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
), gases AS (
    -- each arterial PaO2 with the FiO2 charted in the 4 h before it and whether the patient
    -- was documented as ventilated in the {{vent_window}} h before it
    SELECT p.stay_id, p.charttime, p.value AS pao2,
           CASE WHEN f.charttime >= p.charttime - INTERVAL 4 HOUR THEN f.value END AS fio2,
           coalesce(v.charttime >= p.charttime - INTERVAL {{vent_window}} HOUR, false) AS ventilated
    FROM (SELECT * FROM measurements WHERE concept = 'pao2') p
    ASOF LEFT JOIN (SELECT * FROM measurements WHERE concept = 'fio2_vent') f
      ON p.stay_id = f.stay_id AND p.charttime >= f.charttime
    ASOF LEFT JOIN ventilation v
      ON p.stay_id = v.stay_id AND p.charttime >= v.charttime
), resp_hour AS (
    SELECT g.stay_id,
           CAST(floor(epoch(g.charttime - s.base) / 3600.0) AS BIGINT) AS hr,
           max(CASE
                 WHEN g.fio2 IS NULL THEN NULL
                 WHEN g.pao2 / g.fio2 < 100 AND g.ventilated THEN 4
                 WHEN g.pao2 / g.fio2 < 200 AND g.ventilated THEN 3
                 WHEN g.pao2 / g.fio2 < 300 THEN 2
                 WHEN g.pao2 / g.fio2 < 400 THEN 1
                 ELSE 0 END) AS resp
    FROM gases g JOIN stays s USING (stay_id)
    GROUP BY 1, 2
), vaso_hour AS (
    -- the highest rate of each agent running during the hour
    SELECT i.stay_id, h.hr,
        max(CASE WHEN agent = 'norepinephrine' THEN agent_rate END) AS norepinephrine,
        max(CASE WHEN agent = 'epinephrine' THEN agent_rate END) AS epinephrine,
        max(CASE WHEN agent = 'dopamine' THEN agent_rate END) AS dopamine,
        max(CASE WHEN agent = 'dobutamine' THEN agent_rate END) AS dobutamine
    FROM infusions i
    JOIN hours h ON i.stay_id = h.stay_id AND i.starttime < h.endtime AND i.endtime > h.starttime
    WHERE i.agent IN ('norepinephrine', 'epinephrine', 'dopamine', 'dobutamine') AND i.agent_rate > 0
    GROUP BY 1, 2
), urine_hour AS (
    SELECT u.stay_id, CAST(floor(epoch(u.charttime - s.base) / 3600.0) AS BIGINT) AS hr,
           sum(u.value) AS urine, count(*) AS n_urine
    FROM urine u JOIN stays s USING (stay_id)
    GROUP BY 1, 2
), grid AS (
    SELECT h.stay_id, h.hr, h.starttime, h.endtime,
        p.platelets, p.bilirubin, p.creatinine, p.map, p.gcs, r.resp,
        v.norepinephrine, v.epinephrine, v.dopamine, v.dobutamine,
        CASE WHEN h.hr >= 0 THEN coalesce(u.urine, 0) END AS urine,
        CASE WHEN h.hr >= 0 THEN coalesce(u.n_urine, 0) END AS n_urine
    FROM hours h
    LEFT JOIN per_hour p USING (stay_id, hr)
    LEFT JOIN resp_hour r USING (stay_id, hr)
    LEFT JOIN vaso_hour v USING (stay_id, hr)
    LEFT JOIN urine_hour u USING (stay_id, hr)
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
        CASE WHEN creatinine >= 5 THEN 4 WHEN creatinine >= 3.5 THEN 3 WHEN creatinine >= 2 THEN 2
             WHEN creatinine >= 1.2 THEN 1 WHEN creatinine IS NOT NULL THEN 0 END AS renal_cr_h
    FROM grid
), windowed AS (
    SELECT stay_id, hr, starttime, endtime,
        endtime >= intime + INTERVAL 24 HOUR AS full_day,
        max(resp) OVER w AS resp_24,
        max(coag_h) OVER w AS coag_24,
        max(liver_h) OVER w AS liver_24,
        max(cardio_h) OVER w AS cardio_24,
        max(cns_h) OVER w AS cns_24,
        max(renal_cr_h) OVER w AS renal_cr_24,
        sum(urine) OVER w AS urine_24,
        sum(n_urine) OVER w AS n_urine_24
    FROM scored JOIN stays USING (stay_id)
    WINDOW w AS (PARTITION BY stay_id ORDER BY hr ROWS BETWEEN 23 PRECEDING AND CURRENT ROW)
)
SELECT
    stay_id, hr, starttime, endtime,
    coalesce(resp_24, 0) AS sofa_respiration,
    coalesce(coag_24, 0) AS sofa_coagulation,
    coalesce(liver_24, 0) AS sofa_liver,
    coalesce(cardio_24, 0) AS sofa_cardiovascular,
    coalesce(cns_24, 0) AS sofa_cns,
    greatest(
        coalesce(renal_cr_24, 0),
        CASE WHEN full_day AND n_urine_24 > 0 AND urine_24 < 200 THEN 4
             WHEN full_day AND n_urine_24 > 0 AND urine_24 < 500 THEN 3 ELSE 0 END
    ) AS sofa_renal,
    resp_24 IS NULL AS respiration_missing,
    coag_24 IS NULL AS coagulation_missing,
    liver_24 IS NULL AS liver_missing,
    cardio_24 IS NULL AS cardiovascular_missing,
    cns_24 IS NULL AS cns_missing,
    renal_cr_24 IS NULL AND NOT (full_day AND n_urine_24 > 0) AS renal_missing,
    CASE WHEN full_day AND n_urine_24 > 0 THEN urine_24 END AS urine_24h
FROM windowed
