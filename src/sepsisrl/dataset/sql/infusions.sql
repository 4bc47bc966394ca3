-- Vasopressor and IV-fluid infusions in common units (docs/clinical.md, "Actions").
-- Vasopressor rate -> mcg/kg/min of the agent (vasopressin: units/min), from `rateuom`:
--   mcg/kg/min as is; mcg/min / patient weight; mg/kg/min x 1000; mg/min x 1000 / weight;
--   mcg/kg/hour / 60; units/hour / 60; units/min as is. Any other unit is an error in the audit.
--   The weight of a per-minute rate is the row's patientweight when in [{{weight_lo}}, {{weight_hi}}] kg;
--   without one, the stay's weight recorded at or before the row's start when
--   actions.treatment.missing_weight is stay_weight ({{use_stay_weight}}), else none (no dose).
--   A patientweight of 0 or NaN (a placeholder, not a weight) takes the stay's weight either way;
--   a missing (NULL) one follows the setting.
-- NE-equivalent = agent rate x factor (norepinephrine 1, epinephrine 1, phenylephrine 0.1,
-- dopamine 0.01, vasopressin 2.5 per units/min). Concurrent agents are summed later.
-- IV fluid: amount in mL (L x 1000) over [starttime, endtime); prorated by overlap later.
-- Carrier fluid (when actions.treatment.carrier_fluids is exclude: {{exclude_carriers}}) is not
-- resuscitation fluid and gets no fluid_ml: the diluent of a drug (ordercomponenttypedescription
-- 'Mixed solution': drips, IV antibiotics, IV prophylaxis) or a keep-vein-open run (a continuous
-- rate in mL/hour at or below {{kvo_rate}}).
WITH rows AS (
    SELECT
        stay_id, starttime, endtime, itemid, amount, lower(trim(amountuom)) AS amountuom,
        rate, lower(trim(rateuom)) AS rateuom,
        CASE WHEN patientweight BETWEEN {{weight_lo}} AND {{weight_hi}} THEN patientweight END AS row_weight,
        coalesce(patientweight = 0 OR isnan(patientweight), false) AS weight_unrecorded,
        lower(trim(coalesce(ordercomponenttypedescription, ''))) = 'mixed solution'
            OR (lower(trim(rateuom)) = 'ml/hour' AND rate IS NOT NULL AND rate <= {{kvo_rate}})
            AS carrier
    FROM inputs
    WHERE starttime IS NOT NULL AND endtime IS NOT NULL AND endtime > starttime
), weighted AS (
    SELECT r.*,
        coalesce(
            r.row_weight,
            CASE WHEN ({{use_stay_weight}} OR r.weight_unrecorded) AND w.charted_time <= r.starttime
                 THEN w.charted_kg END,
            CASE WHEN ({{use_stay_weight}} OR r.weight_unrecorded) AND w.infusion_time <= r.starttime
                 THEN w.infusion_kg END
        ) AS weight
    FROM rows r
    LEFT JOIN {{stay_weights}} w USING (stay_id)
), agents AS (
    SELECT * FROM (VALUES {{agents}}) AS t(itemid, agent, factor)
)
SELECT
    r.stay_id,
    r.starttime,
    r.endtime,
    r.itemid,
    coalesce(a.agent, CASE WHEN r.itemid IN {{dobutamine}} THEN 'dobutamine' ELSE 'iv_fluid' END) AS agent,
    coalesce(a.factor, 0.0) AS factor,
    r.rateuom,
    r.amountuom,
    CASE
        WHEN a.agent IS NULL AND r.itemid NOT IN {{dobutamine}} THEN NULL
        WHEN r.rate IS NULL THEN NULL
        WHEN r.rateuom IN ('mcg/kg/min', 'units/min') THEN r.rate
        WHEN r.rateuom = 'mcg/min' THEN r.rate / r.weight
        WHEN r.rateuom = 'mg/kg/min' THEN r.rate * 1000.0
        WHEN r.rateuom = 'mg/min' THEN r.rate * 1000.0 / r.weight
        WHEN r.rateuom = 'mcg/kg/hour' THEN r.rate / 60.0
        WHEN r.rateuom = 'units/hour' THEN r.rate / 60.0
    END AS agent_rate,
    CASE
        WHEN a.agent IS NULL AND r.itemid NOT IN {{dobutamine}} AND NOT ({{exclude_carriers}} AND r.carrier) THEN
            CASE WHEN r.amountuom = 'ml' THEN r.amount WHEN r.amountuom = 'l' THEN r.amount * 1000.0 END
    END AS fluid_ml,
    a.agent IS NULL AND r.itemid NOT IN {{dobutamine}} AND {{exclude_carriers}} AND r.carrier
        AS carrier_fluid,
    r.row_weight IS NULL AND r.weight IS NOT NULL AS stay_weight_used,
    r.weight_unrecorded,
    (a.agent IS NOT NULL OR r.itemid IN {{dobutamine}}) AND r.rate IS NOT NULL
        AND coalesce(r.rateuom, '<null>') NOT IN ('mcg/kg/min', 'units/min', 'mcg/min', 'mg/kg/min', 'mg/min', 'mcg/kg/hour', 'units/hour')
        AS unknown_rate_unit,
    a.agent IS NULL AND r.itemid NOT IN {{dobutamine}} AND coalesce(r.amountuom, '<null>') NOT IN ('ml', 'l') AS unknown_fluid_unit
FROM weighted r
LEFT JOIN agents a USING (itemid)
