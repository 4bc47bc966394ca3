-- Measurements audit: hours (stay, clock hour) whose built urine total is negative, how many
-- of them are not negative in the source itself (view outputs, GU irrigant in, items
-- {{negative_ids}}, counted negative), and the source's negative hours: a dropped half of an
-- irrigant in/out pair shows there.
WITH src AS (
                SELECT stay_id, date_trunc('hour', charttime) AS hour,
                       sum(CASE WHEN itemid IN {{negative_ids}} THEN -value ELSE value END) AS ml
                FROM outputs WHERE value IS NOT NULL AND charttime IS NOT NULL GROUP BY 1, 2
            ), built AS (
                SELECT stay_id, date_trunc('hour', charttime) AS hour, sum(value) AS ml
                FROM {{urine}} GROUP BY 1, 2
            )
            SELECT count(*) FILTER (WHERE b.ml < 0),
                   count(*) FILTER (WHERE b.ml < 0 AND coalesce(s.ml, 0) >= 0),
                   (SELECT count(*) FROM src WHERE ml < 0)
            FROM built b LEFT JOIN src s USING (stay_id, hour)
