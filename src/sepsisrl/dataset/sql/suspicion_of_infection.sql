-- Suspicion of infection (Sepsis-3 operationalisation; Seymour et al., JAMA 2016):
-- a systemic antibiotic with a culture either in the {{culture_first}} h before it (culture
-- first) or in the {{abx_first}} h after it (antibiotic first). One candidate per antibiotic
-- order, paired with the earliest qualifying culture; SI time = the earlier event of the
-- pair (the culture, or the antibiotic). A culture-first pairing wins over an
-- antibiotic-first one.
-- Cultures with only a chartdate (sepsis.date_only_culture):
--   midnight ({{midnight}}): the culture is placed at 00:00 of its day and pairs by calendar day:
--     culture first when the antibiotic's day is the culture's day or up to {{culture_first}} h
--     worth of days after it; antibiotic first when the antibiotic's day is the culture's day
--     or up to {{abx_first}} h worth of days before it. Among the cultures of one day a timed
--     one is preferred to a date-only one (mimic-code's suspicion_of_infection).
--   day_overlap: the culture lies anywhere in its day and pairs when the day overlaps the
--     window; a culture-first SI is placed at the antibiotic time when the antibiotic was
--     given on the culture's day, otherwise at noon of that day.
-- stay_id: the ICU stay of the antibiotic's admission during which it started
-- (intime <= starttime < outtime), as mimic-code's antibiotic table; null outside the ICU.
WITH abx AS (
    SELECT DISTINCT subject_id, hadm_id, starttime AS abx_time,
           date_trunc('day', starttime) AS abx_day
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
), culture_first_pairs AS (
    SELECT
        a.subject_id, a.hadm_id, a.abx_time, c.date_only,
        CASE WHEN NOT c.date_only THEN c.charttime
             WHEN {{midnight}} THEN c.day_start
             WHEN a.abx_time < c.day_start + INTERVAL 24 HOUR THEN a.abx_time
             ELSE c.day_start + INTERVAL 12 HOUR END AS culture_time
    FROM abx a
    JOIN cx c
      ON a.subject_id = c.subject_id
     AND ((NOT c.date_only AND c.charttime <= a.abx_time
           AND c.charttime >= a.abx_time - INTERVAL {{culture_first}} HOUR)
       OR (c.date_only AND {{midnight}} AND a.abx_day >= c.day_start
           AND a.abx_day <= c.day_start + INTERVAL {{culture_first}} HOUR)
       OR (c.date_only AND NOT {{midnight}} AND c.day_start <= a.abx_time
           AND c.day_start + INTERVAL 24 HOUR >= a.abx_time - INTERVAL {{culture_first}} HOUR))
), abx_first_pairs AS (
    SELECT
        a.subject_id, a.hadm_id, a.abx_time, c.date_only,
        coalesce(c.charttime, c.day_start) AS culture_time
    FROM abx a
    JOIN cx c
      ON a.subject_id = c.subject_id
     AND ((NOT c.date_only AND c.charttime > a.abx_time
           AND c.charttime <= a.abx_time + INTERVAL {{abx_first}} HOUR)
       OR (c.date_only AND {{midnight}} AND a.abx_day <= c.day_start
           AND a.abx_day >= c.day_start - INTERVAL {{abx_first}} HOUR)
       OR (c.date_only AND NOT {{midnight}} AND c.day_start + INTERVAL 24 HOUR > a.abx_time
           AND c.day_start <= a.abx_time + INTERVAL {{abx_first}} HOUR))
), culture_first AS (
    -- the earliest culture: by time (day_overlap), or by day, timed before date-only (midnight)
    SELECT subject_id, hadm_id, abx_time,
           arg_min(culture_time, {{order_key}}) AS culture_time,
           arg_min(date_only, {{order_key}}) AS date_only
    FROM culture_first_pairs
    GROUP BY ALL
), abx_first AS (
    SELECT subject_id, hadm_id, abx_time,
           arg_min(culture_time, {{order_key}}) AS culture_time,
           arg_min(date_only, {{order_key}}) AS date_only
    FROM abx_first_pairs
    GROUP BY ALL
), paired AS (
    SELECT
        a.subject_id,
        a.hadm_id,
        a.abx_time,
        coalesce(cf.culture_time, af.culture_time) AS culture_time,
        cf.culture_time IS NOT NULL AS culture_first,
        coalesce(cf.date_only, af.date_only) AS date_only_culture
    FROM abx a
    LEFT JOIN culture_first cf USING (subject_id, hadm_id, abx_time)
    LEFT JOIN abx_first af USING (subject_id, hadm_id, abx_time)
    WHERE cf.culture_time IS NOT NULL OR af.culture_time IS NOT NULL
)
SELECT
    p.subject_id,
    p.hadm_id,
    i.stay_id,
    p.abx_time,
    p.culture_time,
    p.culture_first,
    p.date_only_culture,
    CASE WHEN p.culture_first THEN least(p.culture_time, p.abx_time) ELSE p.abx_time END AS si_time
FROM paired p
LEFT JOIN icustays i
  ON i.hadm_id = p.hadm_id AND p.abx_time >= i.intime AND p.abx_time < i.outtime
