-- Leakage audit, causal_states: lab feature values of states without a lab usable in their
-- decision window [tau - step, tau) by labs.time (column `when`), read from the ingested
-- labevents rows ($labs) and ICU stays ($icustays), independently of the measurements table.
-- items: (itemid, concept) rows; concepts in `patient` attach to a stay by subject_id, the
-- others by hadm_id; observed: (stay_id, step, tau, concept) of every lab feature observed in
-- a state ($state: features/state_raw.parquet). Returns the count of such values and the
-- first [stay_id, step].
WITH item AS (SELECT * FROM (VALUES {{items}}) t(itemid, concept)),
                raw AS (
                    SELECT l.subject_id, l.hadm_id, l.specimen_id, i.concept,
                           l.{{when}} AS t
                    FROM read_parquet($labs) l JOIN item i USING (itemid)
                    WHERE l.valuenum IS NOT NULL AND l.{{when}} IS NOT NULL
                ), usable AS (
                    SELECT subject_id, hadm_id, concept, {{gas_time}} AS t FROM raw
                ), attributed AS (
                    SELECT s.stay_id, u.concept, u.t
                    FROM usable u JOIN read_parquet($icustays) s ON u.hadm_id = s.hadm_id
                    WHERE u.concept NOT IN {{patient}}
                    UNION ALL
                    SELECT s.stay_id, u.concept, u.t
                    FROM usable u JOIN read_parquet($icustays) s ON u.subject_id = s.subject_id
                    WHERE u.concept IN {{patient}}
                ), obs AS ({{observed}}),
                latest AS (  -- the latest lab usable before each decision time
                    SELECT o.stay_id, o.step, o.tau, a.t
                    FROM obs o ASOF LEFT JOIN attributed a
                      ON o.stay_id = a.stay_id AND o.concept = a.concept AND o.tau > a.t
                )
                SELECT count(*), min([stay_id, step]) FROM latest
                WHERE t IS NULL OR t < tau - INTERVAL {{step}} HOUR
