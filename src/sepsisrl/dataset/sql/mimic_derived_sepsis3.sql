-- mimic-code comparison, sepsis3: per ICU stay, mimic-code's Sepsis-3 (mc_sepsis3: the first
-- SI / SOFA time pair of a septic stay, onset the earlier) against the build's onset (ws_onset),
-- time differences in hours (sepsisrl - mimic-code).
CREATE OR REPLACE TEMP TABLE cmp AS
        WITH m AS (
            SELECT stay_id,
                   arg_min(suspected_infection_time, [epoch(suspected_infection_time), epoch(sofa_time)]) AS si_time,
                   arg_min(sofa_time, [epoch(suspected_infection_time), epoch(sofa_time)]) AS sofa_time
            FROM mc_sepsis3
            WHERE coalesce(sepsis3, false) AND stay_id IN (SELECT stay_id FROM ws_icustays)
            GROUP BY stay_id
        ), b AS (
            SELECT o.stay_id, o.si_time, o.sofa_time, o.onset_time, i.intime, i.outtime
            FROM ws_onset o JOIN ws_icustays i USING (stay_id)
        )
        SELECT coalesce(m.stay_id, b.stay_id) AS stay_id,
               m.stay_id IS NOT NULL AS in_mimic_code, b.stay_id IS NOT NULL AS in_sepsisrl,
               m.si_time AS mimic_code_si_time, b.si_time AS sepsisrl_si_time,
               m.sofa_time AS mimic_code_sofa_time, b.sofa_time AS sepsisrl_sofa_time,
               least(m.si_time, m.sofa_time) AS mimic_code_onset, b.onset_time AS sepsisrl_onset,
               (epoch(b.si_time) - epoch(m.si_time)) / 3600.0 AS si_time_diff_hours,
               (epoch(b.sofa_time) - epoch(m.sofa_time)) / 3600.0 AS sofa_time_diff_hours,
               (epoch(b.onset_time) - epoch(least(m.si_time, m.sofa_time))) / 3600.0 AS onset_diff_hours,
               b.onset_time < b.intime AS sepsisrl_onset_before_intime
        FROM m FULL OUTER JOIN b ON m.stay_id = b.stay_id
