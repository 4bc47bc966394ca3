-- ICU stays (view icustays) the Sepsis-3 definition cannot be evaluated on, with the reason.
SELECT i.stay_id,
                     CASE WHEN i.intime IS NULL OR i.outtime IS NULL THEN 'missing intime or outtime'
                          WHEN i.outtime <= i.intime THEN 'outtime not after intime'
                          WHEN NOT EXISTS (SELECT 1 FROM measurements m WHERE m.stay_id = i.stay_id)
                              THEN 'no charted measurements'
                     END AS reason
              FROM icustays i
              WHERE i.intime IS NULL OR i.outtime IS NULL OR i.outtime <= i.intime
                 OR NOT EXISTS (SELECT 1 FROM measurements m WHERE m.stay_id = i.stay_id)
              ORDER BY i.stay_id
