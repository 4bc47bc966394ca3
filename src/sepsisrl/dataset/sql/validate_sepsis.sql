-- A built workspace's Sepsis-3 per ICU stay against a synthetic world's truth: confusion
-- counts and the onset error (hours) on stays both call septic. The pipeline calls a stay
-- septic when its onset lies in [intime - {{window_hours}} h, outtime].
-- $truth_stays: the truth's stays.parquet; $icustays, $onset: the workspace's files.
WITH t AS (
            SELECT stay_id, sepsis3_in_icu_window AS truth, sepsis_onset_time AS truth_onset
            FROM read_parquet($truth_stays)
        ), p AS (
            SELECT i.stay_id, o.onset_time,
                   coalesce(o.onset_time >= i.intime - INTERVAL {{window_hours}} HOUR
                            AND o.onset_time <= i.outtime, false) AS predicted
            FROM read_parquet($icustays) i
            LEFT JOIN read_parquet($onset) o USING (stay_id)
        )
        SELECT
            count(*) FILTER (WHERE truth AND predicted),
            count(*) FILTER (WHERE truth AND NOT predicted),
            count(*) FILTER (WHERE NOT truth AND predicted),
            count(*) FILTER (WHERE NOT truth AND NOT predicted),
            median(abs(epoch(onset_time - truth_onset)) / 3600.0) FILTER (WHERE truth AND predicted),
            quantile_cont(abs(epoch(onset_time - truth_onset)) / 3600.0, 0.9) FILTER (WHERE truth AND predicted)
        FROM t JOIN p USING (stay_id)
