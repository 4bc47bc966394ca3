-- Times at which a patient was documented as mechanically ventilated: a ventilator mode
-- charted, or an O2 delivery device that is an artificial airway ({{devices}}).
SELECT DISTINCT stay_id, charttime
FROM chart
WHERE charttime IS NOT NULL
  AND ((itemid IN {{ventilator_mode}} AND value IS NOT NULL)
    OR (itemid IN {{o2_device}} AND value IN {{devices}}))
