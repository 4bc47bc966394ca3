-- (total SOFA, state SOFA) of the last SOFA hour ($sofa_hourly: sepsis/sofa_hourly.parquet)
-- ending at or before each decision time of view steps (NULL before the first hour). State
-- SOFA: the total with the cardiovascular component replaced by its blood-pressure level.
SELECT s.stay_id, s.step, h.sofa,
                   h.sofa - h.sofa_cardiovascular + h.sofa_cardiovascular_map AS sofa_state
            FROM steps s
            ASOF LEFT JOIN (
                SELECT stay_id, endtime, sofa, sofa_cardiovascular, sofa_cardiovascular_map
                FROM read_parquet($sofa_hourly)
            ) h
              ON s.stay_id = h.stay_id AND s.tau >= h.endtime
            ORDER BY s.stay_id, s.step
