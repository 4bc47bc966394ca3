-- Sepsis-3 onset per ICU stay: for every suspected infection (SI) attributed to the stay, the
-- first SOFA hour with SOFA >= {{threshold}} (baseline assumed 0) whose time lies in
-- [SI - {{before}} h, SI + {{after}} h]; onset = min(SI time, that hour's time) (or the SI time, per
-- `sepsis.onset`). The stay's Sepsis-3 onset is the earliest over its SIs.
--   SIs of a stay (sepsis.si_attribution): {{si_join}}
--   a SOFA hour's time (sepsis.sofa_time): its {{sofa_time}} (hour hr covers [starttime, endtime))
--   SOFA hours that may define onset: hr >= -{{pre_icu_hours}} (hour 0 contains intime)
WITH candidates AS (
    SELECT
        i.stay_id,
        s.si_time,
        min(h.{{sofa_time}}) AS sofa_time
    FROM icustays i
    JOIN suspicion s ON {{si_join}}
    JOIN sofa_hourly h
      ON h.stay_id = i.stay_id
     AND h.hr >= -{{pre_icu_hours}}
     AND h.{{sofa_time}} >= s.si_time - INTERVAL {{before}} HOUR
     AND h.{{sofa_time}} <= s.si_time + INTERVAL {{after}} HOUR
     AND h.sofa >= {{threshold}}
    GROUP BY i.stay_id, s.si_time
), onsets AS (
    SELECT stay_id, si_time, sofa_time,
           {{onset_expr}} AS onset_time
    FROM candidates
)
SELECT stay_id,
       arg_min(si_time, [epoch(onset_time), epoch(si_time), epoch(sofa_time)]) AS si_time,
       arg_min(sofa_time, [epoch(onset_time), epoch(si_time), epoch(sofa_time)]) AS sofa_time,
       min(onset_time) AS onset_time
FROM onsets
GROUP BY stay_id
