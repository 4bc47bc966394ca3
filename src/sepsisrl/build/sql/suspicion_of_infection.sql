-- Suspicion of infection (Sepsis-3 operationalisation; Seymour et al., JAMA 2016):
-- a systemic antibiotic with a culture either in the {{culture_first}} h before it (culture
-- first) or in the {{abx_first}} h after it (antibiotic first). One candidate per antibiotic
-- order, paired with the earliest qualifying culture; SI time = the earlier event of the
-- pair (the culture, or the antibiotic).
-- Cultures with only a chartdate are taken to lie anywhere in that day: they pair when the
-- day overlaps the window; a date-only culture-first SI is placed at the antibiotic time when
-- the antibiotic was given on the culture's day, otherwise at noon of that day.
WITH abx AS (
    SELECT subject_id, hadm_id, starttime AS abx_time
    FROM antibiotics
), cx AS (
    SELECT
        subject_id,
        micro_specimen_id,
        charttime,
        CAST(chartdate AS TIMESTAMP) AS day_start,
        charttime IS NULL AS date_only
    FROM cultures
    WHERE charttime IS NOT NULL OR chartdate IS NOT NULL
), culture_first AS (
    SELECT
        a.subject_id, a.hadm_id, a.abx_time,
        min(CASE WHEN NOT c.date_only THEN c.charttime
                 WHEN a.abx_time < c.day_start + INTERVAL 24 HOUR THEN a.abx_time
                 ELSE c.day_start + INTERVAL 12 HOUR END) AS culture_time,
        bool_or(c.date_only) AS date_only
    FROM abx a
    JOIN cx c
      ON a.subject_id = c.subject_id
     AND ((NOT c.date_only AND c.charttime <= a.abx_time
           AND c.charttime >= a.abx_time - INTERVAL {{culture_first}} HOUR)
       OR (c.date_only AND c.day_start <= a.abx_time
           AND c.day_start + INTERVAL 24 HOUR >= a.abx_time - INTERVAL {{culture_first}} HOUR))
    GROUP BY a.subject_id, a.hadm_id, a.abx_time
), abx_first AS (
    SELECT
        a.subject_id, a.hadm_id, a.abx_time,
        min(coalesce(c.charttime, c.day_start)) AS culture_time,
        bool_or(c.date_only) AS date_only
    FROM abx a
    JOIN cx c
      ON a.subject_id = c.subject_id
     AND ((NOT c.date_only AND c.charttime > a.abx_time
           AND c.charttime <= a.abx_time + INTERVAL {{abx_first}} HOUR)
       OR (c.date_only AND c.day_start + INTERVAL 24 HOUR > a.abx_time
           AND c.day_start <= a.abx_time + INTERVAL {{abx_first}} HOUR))
    GROUP BY a.subject_id, a.hadm_id, a.abx_time
)
SELECT DISTINCT
    a.subject_id,
    a.hadm_id,
    a.abx_time,
    coalesce(cf.culture_time, af.culture_time) AS culture_time,
    cf.culture_time IS NOT NULL AS culture_first,
    coalesce(cf.date_only, af.date_only) AS date_only_culture,
    CASE WHEN cf.culture_time IS NOT NULL THEN least(cf.culture_time, a.abx_time)
         ELSE a.abx_time END AS si_time
FROM abx a
LEFT JOIN culture_first cf USING (subject_id, hadm_id, abx_time)
LEFT JOIN abx_first af USING (subject_id, hadm_id, abx_time)
WHERE cf.culture_time IS NOT NULL OR af.culture_time IS NOT NULL
