-- Vasopressor rows of the infusions table whose rate unit the pipeline cannot convert.
SELECT agent, coalesce(rateuom, '<null>'), count(*) FROM infusions
           WHERE unknown_rate_unit GROUP BY 1, 2 ORDER BY 3 DESC
