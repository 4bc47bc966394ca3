-- Per agent, the infusions rows whose dose is outside [0, integrity.plausible_max] (table
-- plausible_max: agent, lim), with the first such row as an example.
SELECT i.agent, count(*), any_value(p.lim),
                   arg_min([i.stay_id::VARCHAR, i.starttime::VARCHAR,
                            coalesce(i.agent_rate, i.fluid_ml)::VARCHAR, i.rateuom, i.amountuom],
                           [i.stay_id::VARCHAR, i.starttime::VARCHAR])
            FROM infusions i JOIN plausible_max p USING (agent)
            WHERE {{implausible}}
            GROUP BY 1 ORDER BY 1
