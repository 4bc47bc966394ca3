-- mimic-code comparison, suspicion_of_infection: per antibiotic start (subject_id,
-- antibiotic_time) of the workspace's patients, both sides' suspected flag, suspected-infection
-- time and culture time (mimic-code: mc_suspicion_of_infection; sepsisrl: ws_antibiotics and
-- ws_suspicion), full outer joined; time differences in hours (sepsisrl - mimic-code).
CREATE OR REPLACE TEMP TABLE cmp AS
        WITH subjects AS (SELECT DISTINCT subject_id FROM ws_icustays),
        m AS (
            SELECT subject_id, antibiotic_time,
                   bool_or(coalesce(suspected_infection, 0) = 1) AS suspected,
                   min(suspected_infection_time) AS si_time,
                   min(culture_time) AS culture_time
            FROM mc_suspicion_of_infection
            WHERE antibiotic_time IS NOT NULL AND subject_id IN (SELECT subject_id FROM subjects)
            GROUP BY 1, 2
        ), b AS (
            SELECT a.subject_id, a.starttime AS antibiotic_time,
                   count(s.si_time) > 0 AS suspected,
                   min(s.si_time) AS si_time, min(s.culture_time) AS culture_time
            FROM (SELECT DISTINCT subject_id, starttime FROM ws_antibiotics
                  WHERE starttime IS NOT NULL
                    AND subject_id IN (SELECT subject_id FROM subjects)) a
            LEFT JOIN ws_suspicion s ON s.subject_id = a.subject_id AND s.abx_time = a.starttime
            GROUP BY 1, 2
        )
        SELECT coalesce(m.subject_id, b.subject_id) AS subject_id,
               coalesce(m.antibiotic_time, b.antibiotic_time) AS antibiotic_time,
               m.subject_id IS NOT NULL AS in_mimic_code,
               b.subject_id IS NOT NULL AS in_sepsisrl,
               m.suspected AS mimic_code_suspected, b.suspected AS sepsisrl_suspected,
               m.si_time AS mimic_code_si_time, b.si_time AS sepsisrl_si_time,
               (epoch(b.si_time) - epoch(m.si_time)) / 3600.0 AS si_time_diff_hours,
               m.culture_time AS mimic_code_culture_time, b.culture_time AS sepsisrl_culture_time,
               (epoch(b.culture_time) - epoch(m.culture_time)) / 3600.0 AS culture_time_diff_hours
        FROM m FULL OUTER JOIN b
          ON m.subject_id = b.subject_id AND m.antibiotic_time = b.antibiotic_time
