-- The 90-day outcome of the stays in view wanted (stay_id), from the cohort rules' result
-- (dataset/sql/cohort.sql, rendered into the hole below); used by the truth harness.
SELECT r.stay_id, r.died_90d, r.outtime, r.death_time
            FROM ({{cohort}}) r JOIN wanted USING (stay_id) ORDER BY r.stay_id
