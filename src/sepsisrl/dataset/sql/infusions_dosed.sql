-- The stage's infusions: rows of the infusions table with a non-negative agent rate (and its
-- norepinephrine equivalent) or an IV-fluid volume; the hole `keep` leaves out implausible
-- doses when integrity.implausible_doses is drop (else it is true).
SELECT stay_id, starttime, endtime, itemid, agent, factor, agent_rate,
                  agent_rate * factor AS ne_rate, fluid_ml
           FROM infusions i
           WHERE ((agent_rate IS NOT NULL AND agent_rate >= 0) OR fluid_ml IS NOT NULL)
             AND {{keep}}
           ORDER BY stay_id, starttime, endtime, itemid, agent_rate, fluid_ml
