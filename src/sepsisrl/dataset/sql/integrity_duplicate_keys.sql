-- Integrity: the primary key column of a raw table (raw_<table>, one row per distinct row):
-- how many key values are on more than one row, the rows with such a value or without one,
-- the rows without one, and the smallest repeated value as an example.
SELECT count(*) FILTER (WHERE {{key}} IS NOT NULL),
                           coalesce(sum(n), 0), coalesce(sum(n) FILTER (WHERE {{key}} IS NULL), 0),
                           min({{key}})
                    FROM (SELECT {{key}}, count(*) AS n FROM {{table}} GROUP BY 1)
                    WHERE n > 1 OR {{key}} IS NULL
