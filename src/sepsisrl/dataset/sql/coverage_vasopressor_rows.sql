-- Measurements audit: per vasopressor agent (`agents`: (itemid, agent) rows), the ingested
-- rows (view inputs) and those that got a dose in the infusions table (a row without one is a
-- dropped dose).
WITH a AS (SELECT * FROM (VALUES {{agents}}) t(itemid, agent)),
                 r AS (SELECT agent, count(*) AS n FROM inputs JOIN a USING (itemid) GROUP BY 1),
                 d AS (SELECT agent, count(*) AS n FROM {{infusions}}
                       WHERE agent_rate IS NOT NULL AND agent_rate >= 0 GROUP BY 1)
            SELECT a.agent, coalesce(r.n, 0), coalesce(d.n, 0)
            FROM a LEFT JOIN r USING (agent) LEFT JOIN d USING (agent) ORDER BY a.agent
