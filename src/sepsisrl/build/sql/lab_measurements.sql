-- Laboratory values attributed to ICU stays: a lab belongs to a stay when it was drawn from
-- the same patient between intime - {{hours_before}} h and outtime (hadm_id is often missing
-- for labs drawn in the emergency department, so the patient and time decide).
-- Blood-gas items ({{arterial_only}}) keep only arterial specimens when the specimen type
-- (item {{specimen_type}}) was charted for the same specimen_id; without specimen information
-- the value is kept.
WITH specimen AS (
    SELECT specimen_id, max(upper(trim(value))) AS specimen_type
    FROM labs
    WHERE itemid IN {{specimen_type}}
    GROUP BY specimen_id
), labelled AS (
    SELECT
        l.subject_id,
        l.charttime,
        l.itemid,
        l.valuenum,
        CASE
            WHEN itemid IN {{pao2}} THEN 'pao2'
            WHEN itemid IN {{paco2}} THEN 'paco2'
            WHEN itemid IN {{arterial_ph}} THEN 'arterial_ph'
            WHEN itemid IN {{bicarbonate}} THEN 'bicarbonate'
            WHEN itemid IN {{base_excess}} THEN 'base_excess'
            WHEN itemid IN {{lactate}} THEN 'lactate'
            WHEN itemid IN {{creatinine}} THEN 'creatinine'
            WHEN itemid IN {{bun}} THEN 'bun'
            WHEN itemid IN {{bilirubin_total}} THEN 'bilirubin_total'
            WHEN itemid IN {{albumin}} THEN 'albumin'
            WHEN itemid IN {{sodium}} THEN 'sodium'
            WHEN itemid IN {{potassium}} THEN 'potassium'
            WHEN itemid IN {{glucose}} THEN 'glucose'
            WHEN itemid IN {{inr}} THEN 'inr'
            WHEN itemid IN {{ptt}} THEN 'ptt'
            WHEN itemid IN {{wbc}} THEN 'wbc'
            WHEN itemid IN {{haemoglobin}} THEN 'haemoglobin'
            WHEN itemid IN {{haematocrit}} THEN 'haematocrit'
            WHEN itemid IN {{platelets}} THEN 'platelets'
        END AS concept,
        s.specimen_type
    FROM labs l
    LEFT JOIN specimen s USING (specimen_id)
    WHERE l.valuenum IS NOT NULL AND l.charttime IS NOT NULL AND l.itemid NOT IN {{specimen_type}}
)
SELECT
    i.stay_id,
    l.charttime,
    l.concept,
    0 AS arterial,
    l.valuenum AS value
FROM labelled l
JOIN icustays i
  ON l.subject_id = i.subject_id
 AND l.charttime >= i.intime - INTERVAL {{hours_before}} HOUR
 AND l.charttime < i.outtime
WHERE l.concept IS NOT NULL
  AND NOT (l.itemid IN {{arterial_only}} AND l.specimen_type IS NOT NULL AND l.specimen_type NOT LIKE 'ART%')
