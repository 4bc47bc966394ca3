-- IV-fluid rows of the infusions table whose amount unit the pipeline cannot convert to mL.
SELECT coalesce(amountuom, '<null>'), count(*) FROM infusions
           WHERE unknown_fluid_unit GROUP BY 1 ORDER BY 2 DESC
