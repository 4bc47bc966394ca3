-- Per-minute rates of the infusions table: without a weight (no dose), dosed with the stay's
-- weight; carrier-fluid rows; rates whose patientweight is 0 or NaN, and those of them dosed.
SELECT count(*) FILTER (WHERE rateuom IN ('mcg/min', 'mg/min') AND agent_rate IS NULL),
                  count(*) FILTER (WHERE rateuom IN ('mcg/min', 'mg/min') AND agent_rate IS NOT NULL
                                   AND stay_weight_used),
                  count(*) FILTER (WHERE carrier_fluid),
                  count(*) FILTER (WHERE rateuom IN ('mcg/min', 'mg/min') AND weight_unrecorded),
                  count(*) FILTER (WHERE rateuom IN ('mcg/min', 'mg/min') AND weight_unrecorded
                                   AND agent_rate IS NOT NULL)
           FROM infusions
