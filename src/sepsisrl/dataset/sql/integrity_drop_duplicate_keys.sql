-- Integrity (duplicate_keys: drop): delete the rows of a raw table without a key or whose key
-- is on more than one row.
DELETE FROM {{table}} WHERE {{key}} IS NULL OR {{key}} IN (
                            SELECT {{key}} FROM {{table}} GROUP BY 1 HAVING count(*) > 1)
