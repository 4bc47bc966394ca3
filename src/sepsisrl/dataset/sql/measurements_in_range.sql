-- The rows of raw_measurements inside their concept's validity range (table ranges; a concept
-- without a range keeps every row).
SELECT m.stay_id, m.charttime, m.concept, m.arterial, m.value
           FROM raw_measurements m LEFT JOIN ranges r USING (concept)
           WHERE r.concept IS NULL OR (m.value >= r.lo AND m.value <= r.hi)
           ORDER BY m.stay_id, m.concept, m.charttime, m.arterial, m.value
