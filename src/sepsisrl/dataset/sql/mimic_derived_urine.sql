-- mimic-code comparison, urine_output: per (stay_id, charttime), mimic-code's urineoutput
-- (mc_urine_output) against the build's net volume (ws_urine); `same` within tol mL.
CREATE OR REPLACE TEMP TABLE cmp AS
        WITH m AS (
            SELECT stay_id, charttime, sum(urineoutput) AS ml FROM mc_urine_output
            WHERE stay_id IN (SELECT stay_id FROM ws_icustays) GROUP BY 1, 2
        ), b AS (
            SELECT stay_id, charttime, sum(value) AS ml FROM ws_urine
            WHERE stay_id IN (SELECT stay_id FROM ws_icustays) GROUP BY 1, 2
        )
        SELECT coalesce(m.stay_id, b.stay_id) AS stay_id,
               coalesce(m.charttime, b.charttime) AS charttime,
               m.stay_id IS NOT NULL AS in_mimic_code, b.stay_id IS NOT NULL AS in_sepsisrl,
               m.ml AS mimic_code_ml, b.ml AS sepsisrl_ml, b.ml - m.ml AS diff_ml,
               coalesce(abs(b.ml - m.ml) <= {{tol}}, m.ml IS NULL AND b.ml IS NULL) AS same
        FROM m FULL OUTER JOIN b ON m.stay_id = b.stay_id AND m.charttime = b.charttime
