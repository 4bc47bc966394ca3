-- Laboratory values attributed to ICU stays (configs/build.yaml `labs`).
--   time: a lab is placed at {{lab_time}} (charttime: drawn; storetime: resulted). Under
--     storetime the PaO2 and the FiO2 of one blood gas specimen take the later of their times,
--     so that the ratio pairs them.
--   attribution: a lab belongs to a stay when its time lies in [intime - {{hours_before}} h,
--     outtime) and, when `by_hadm` ({{by_hadm}}), it has the stay's hadm_id - except the
--     concepts {{by_patient}}, and every concept otherwise, which need the same patient only.
--   blood gases ({{arterial_only}}): a specimen typed (item {{specimen_type}}) as other than
--     arterial is dropped; `arterial` = 1 for a specimen typed arterial, 0 for an untyped one.
--   fio2_bg: the FiO2 recorded with a blood gas, as a fraction (charted in percent above 20,
--     as a fraction in (0.2, 1]; other values dropped, as mimic-code's bg).
WITH specimen AS (
    SELECT specimen_id, max(upper(trim(value))) AS specimen_type
    FROM labs
    WHERE itemid IN {{specimen_type}}
    GROUP BY specimen_id
), labelled AS (
    SELECT
        l.subject_id,
        l.hadm_id,
        l.specimen_id,
        {{lab_time}} AS t,
        l.itemid,
        CASE
            WHEN l.itemid IN {{fio2_bg}} THEN
                CASE WHEN l.valuenum > 20 AND l.valuenum <= 100 THEN l.valuenum / 100.0
                     WHEN l.valuenum > 0.2 AND l.valuenum <= 1 THEN l.valuenum END
            ELSE l.valuenum
        END AS valuenum,
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
            WHEN itemid IN {{fio2_bg}} THEN 'fio2_bg'
        END AS concept,
        s.specimen_type
    FROM labs l
    LEFT JOIN specimen s USING (specimen_id)
    WHERE l.valuenum IS NOT NULL AND {{lab_time}} IS NOT NULL AND l.itemid NOT IN {{specimen_type}}
), kept AS (
    SELECT
        subject_id,
        hadm_id,
        {{gas_time}} AS t,
        concept,
        CAST(itemid IN {{arterial_only}} AND coalesce(specimen_type LIKE 'ART%', false) AS INTEGER)
            AS arterial,
        valuenum AS value,
        NOT {{by_hadm}} OR concept IN {{by_patient}} AS by_patient
    FROM labelled
    WHERE concept IS NOT NULL AND valuenum IS NOT NULL
      AND NOT (itemid IN {{arterial_only}} AND specimen_type IS NOT NULL AND specimen_type NOT LIKE 'ART%')
)
SELECT i.stay_id, k.t AS charttime, k.concept, k.arterial, k.value
FROM kept k
JOIN icustays i
  ON k.hadm_id = i.hadm_id
 AND k.t >= i.intime - INTERVAL {{hours_before}} HOUR
 AND k.t < i.outtime
WHERE NOT k.by_patient
UNION ALL
SELECT i.stay_id, k.t AS charttime, k.concept, k.arterial, k.value
FROM kept k
JOIN icustays i
  ON k.subject_id = i.subject_id
 AND k.t >= i.intime - INTERVAL {{hours_before}} HOUR
 AND k.t < i.outtime
WHERE k.by_patient
