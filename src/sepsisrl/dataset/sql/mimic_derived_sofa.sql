-- mimic-code comparison, sofa: per ICU hour (stay_id, endtime, hr >= 0), each component and
-- the total of mimic-code's 24-hour SOFA (mc_sofa) against the build's (ws_sofa_hourly), and
-- the list of differing components. Holes: the component columns of each side (m_cols, b_cols),
-- their pairs, and one CASE per part naming it when it differs (differs).
CREATE OR REPLACE TEMP TABLE cmp AS
        WITH m AS (
            SELECT stay_id, hr, endtime, {{m_cols}} FROM mc_sofa
            WHERE hr >= 0 AND stay_id IN (SELECT stay_id FROM ws_icustays)
        ), b AS (
            SELECT stay_id, hr, endtime, {{b_cols}} FROM ws_sofa_hourly WHERE hr >= 0
        )
        SELECT coalesce(m.stay_id, b.stay_id) AS stay_id,
               coalesce(m.endtime, b.endtime) AS endtime,
               m.stay_id IS NOT NULL AS in_mimic_code, b.stay_id IS NOT NULL AS in_sepsisrl,
               m.hr AS mimic_code_hr, b.hr AS sepsisrl_hr, {{pairs}},
               concat_ws(',', {{differs}}) AS differing
        FROM m FULL OUTER JOIN b ON m.stay_id = b.stay_id AND m.endtime = b.endtime
