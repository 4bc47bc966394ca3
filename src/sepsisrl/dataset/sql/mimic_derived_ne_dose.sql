-- mimic-code comparison, norepinephrine_equivalent_dose: per stay, the boundaries of both
-- sides' dose intervals cut time into segments; in each, mimic-code's dose (the highest of its
-- rows covering the segment) against the sum of the build's NE-equivalent rates (ws_infusions)
-- of the vasopressor rows running through it.
CREATE OR REPLACE TEMP TABLE cmp AS
        WITH m AS (
            SELECT stay_id, starttime, endtime, norepinephrine_equivalent_dose AS dose
            FROM mc_norepinephrine_equivalent_dose
            WHERE endtime > starttime AND stay_id IN (SELECT stay_id FROM ws_icustays)
        ), b AS (
            SELECT stay_id, starttime, endtime, ne_rate AS dose
            FROM ws_infusions
            WHERE factor > 0 AND ne_rate IS NOT NULL AND endtime > starttime
              AND stay_id IN (SELECT stay_id FROM ws_icustays)
        ), points AS (
            SELECT stay_id, starttime AS t FROM m UNION SELECT stay_id, endtime FROM m
            UNION SELECT stay_id, starttime FROM b UNION SELECT stay_id, endtime FROM b
        ), seg AS (
            SELECT * FROM (
                SELECT stay_id, t AS starttime,
                       lead(t) OVER (PARTITION BY stay_id ORDER BY t) AS endtime
                FROM points
            ) WHERE endtime IS NOT NULL
        ), ms AS (
            SELECT s.stay_id, s.starttime, max(m.dose) AS dose, count(*) AS n_rows
            FROM seg s JOIN m
              ON m.stay_id = s.stay_id AND m.starttime <= s.starttime AND m.endtime >= s.endtime
            GROUP BY 1, 2
        ), bs AS (
            SELECT s.stay_id, s.starttime, sum(b.dose) AS dose
            FROM seg s JOIN b
              ON b.stay_id = s.stay_id AND b.starttime <= s.starttime AND b.endtime >= s.endtime
            GROUP BY 1, 2
        )
        SELECT s.stay_id, s.starttime, s.endtime,
               (epoch(s.endtime) - epoch(s.starttime)) / 3600.0 AS hours,
               ms.dose AS mimic_code_dose, bs.dose AS sepsisrl_dose,
               coalesce(bs.dose, 0) - coalesce(ms.dose, 0) AS diff,
               coalesce(ms.n_rows, 0) AS mimic_code_rows
        FROM seg s
        LEFT JOIN ms ON ms.stay_id = s.stay_id AND ms.starttime = s.starttime
        LEFT JOIN bs ON bs.stay_id = s.stay_id AND bs.starttime = s.starttime
        WHERE ms.stay_id IS NOT NULL OR bs.stay_id IS NOT NULL
