-- First weight per ICU stay (view icustays): the first charted weight (concept weight_kg of
-- the stage's measurements, {{measurements}}), else the first patientweight recorded with an
-- infusion (view inputs) inside [{{weight_lo}}, {{weight_hi}}] kg; each candidate with the
-- time it was recorded (the state uses a weight only from that time, dataset/state.py).
WITH charted AS (
                  SELECT stay_id, arg_min(value, [epoch(charttime), value]) AS weight_kg,
                         min(charttime) AS weight_time
                  FROM {{measurements}}
                  WHERE concept = 'weight_kg' GROUP BY stay_id
              ), infused AS (
                  SELECT stay_id, arg_min(patientweight, [epoch(starttime), patientweight]) AS weight_kg,
                         min(starttime) AS weight_time
                  FROM inputs WHERE patientweight BETWEEN {{weight_lo}} AND {{weight_hi}} GROUP BY stay_id
              )
              SELECT i.stay_id, coalesce(c.weight_kg, f.weight_kg) AS weight_kg,
                     CASE WHEN c.weight_kg IS NOT NULL THEN 'chartevents'
                          WHEN f.weight_kg IS NOT NULL THEN 'inputevents' END AS weight_source,
                     c.weight_kg AS charted_kg, c.weight_time AS charted_time,
                     f.weight_kg AS infusion_kg, f.weight_time AS infusion_time
              FROM icustays i LEFT JOIN charted c USING (stay_id) LEFT JOIN infused f USING (stay_id)
              ORDER BY i.stay_id
