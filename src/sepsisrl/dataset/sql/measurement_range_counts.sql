-- Measurements audit: per concept, the rows of raw_measurements and those outside the
-- concept's validity range (table ranges: concept, lo, hi), which the stage drops.
SELECT m.concept, count(*) AS n,
                  count(*) FILTER (WHERE r.concept IS NOT NULL AND (m.value < r.lo OR m.value > r.hi)) AS dropped
           FROM raw_measurements m LEFT JOIN ranges r USING (concept)
           GROUP BY m.concept ORDER BY m.concept
