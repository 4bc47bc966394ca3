-- Study cohort (docs/clinical.md, "Cohort"): the unit is an ICU stay, one episode per patient.
-- Rules in order; each excluded stay records the first rule it fails.
--   1 adult: age >= {{min_age}} (and <= max age when set)
--   2 demographics present: age and gender not null
-- Age (cohort.age): {{age_expr}}
--   3 ICU length of stay >= {{min_los}} h
--   4 Sepsis-3 met with onset inside [intime - {{before_intime}} h, outtime]
--   5 first qualifying ICU stay per subject_id (by intime)   [or first ICU stay overall]
-- Outcome: death (admissions.deathtime, else patients.dod at noon) within {{mortality_days}}
-- days of onset.
WITH base AS (
    SELECT
        i.subject_id, i.hadm_id, i.stay_id, i.intime, i.outtime,
        {{age_expr}} AS age, p.gender, p.dod, a.deathtime,
        o.si_time, o.sofa_time, o.onset_time,
        epoch(i.outtime - i.intime) / 3600.0 AS los_hours,
        row_number() OVER (PARTITION BY i.subject_id ORDER BY i.intime, i.stay_id) AS stay_rank
    FROM icustays i
    LEFT JOIN patients p USING (subject_id)
    LEFT JOIN admissions a USING (subject_id, hadm_id)
    LEFT JOIN onset o USING (stay_id)
), ruled AS (
    SELECT *,
        CASE
            WHEN age IS NOT NULL AND (age < {{min_age}} OR {{max_age_clause}}) THEN '1_not_adult'
            WHEN age IS NULL OR gender IS NULL THEN '2_missing_demographics'
            WHEN intime IS NULL OR outtime IS NULL OR los_hours < {{min_los}} THEN '3_icu_stay_under_min_hours'
            WHEN onset_time IS NULL THEN '4_no_sepsis3'
            WHEN onset_time < intime - INTERVAL {{before_intime}} HOUR OR onset_time > outtime
                THEN '4_sepsis3_onset_outside_icu_window'
        END AS failed_rule
    FROM base
), ranked AS (
    SELECT *,
        row_number() OVER (PARTITION BY subject_id, failed_rule IS NULL ORDER BY intime, stay_id) AS qualifying_rank
    FROM ruled
)
SELECT
    subject_id, hadm_id, stay_id, intime, outtime, los_hours, age, gender,
    si_time, sofa_time, onset_time, deathtime, dod,
    coalesce(deathtime, CAST(dod AS TIMESTAMP) + INTERVAL 12 HOUR) AS death_time,
    coalesce(coalesce(deathtime, CAST(dod AS TIMESTAMP) + INTERVAL 12 HOUR)
             <= onset_time + INTERVAL {{mortality_days}} DAY, false) AS died_90d,
    stay_rank,
    CASE
        WHEN failed_rule IS NOT NULL THEN failed_rule
        WHEN {{first_overall}} AND stay_rank > 1 THEN '5_not_first_icu_stay'
        WHEN qualifying_rank > 1 THEN '5_not_first_qualifying_stay'
    END AS failed_rule
FROM ranked
