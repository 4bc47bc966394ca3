"""Clinical conventions: each place where a definition could follow mimic-code or not.

MIMIC-IV users compare every derived table with MIT-LCP mimic-code's concepts
(``mimic-iv/concepts/``). The build follows them by default (the ``mimic-code`` profile: the
packaged ``configs/build.yaml``); each point where a defensible alternative exists is one
config switch, registered here with mimic-code's value and the alternative. The ``legacy``
profile restores the definitions of sepsisrl before the conventions were aligned.

``sepsisrl build --conventions legacy`` applies a profile; ``--set KEY=VALUE`` changes one
switch. The build summary lists every switch that differs from mimic-code
(``differences``), and ``docs/build.md`` carries the table ``markdown_table`` renders (a test
keeps them equal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROFILES = ("mimic-code", "legacy")


@dataclass(frozen=True)
class Convention:
    key: str  # dotted path in configs/build.yaml
    what: str  # the clinical question, in a few words
    mimic_code: Any  # mimic-code's convention (the default)
    legacy: Any  # sepsisrl's earlier convention (the ``legacy`` profile)
    note: str  # how the two differ, one sentence


#: Every convention switch. Append an entry when a definition gains a switch.
REGISTRY: tuple[Convention, ...] = (
    # measurements and SOFA (dataset/measurements.py, sql/gcs.sql, sql/ventilation.sql,
    # sql/lab_measurements.sql, sql/sofa.sql)
    Convention(
        "gcs.intubated",
        "GCS at a time the verbal response is 'No Response-ETT'",
        "gcs_normal",
        "charted",
        "mimic-code sets the GCS of an intubated time (and of the next time without a verbal "
        "response within 6 h) to 15, the pre-sedation GCS assumed normal; legacy scored the "
        "charted verbal 1, so every sedated patient had CNS SOFA >= 3.",
    ),
    Convention(
        "gcs.carry_forward_hours",
        "GCS component missing at a charting time: carried from the previous GCS time",
        6,
        0,
        "mimic-code carries each missing component from the stay's previous GCS time when it "
        "is less than 6 h earlier; legacy carried nothing.",
    ),
    Convention(
        "gcs.missing_component",
        "GCS component still missing",
        "normal",
        "drop",
        "mimic-code scores it normal (eye 4, verbal 5, motor 6); legacy gave that time no GCS.",
    ),
    Convention(
        "ventilation.definition",
        "Ventilated, for SOFA respiration 3-4",
        "invasive",
        "any_device",
        "mimic-code needs an InvasiveVent episode of its ventilation concept (endotracheal tube "
        "or an invasive ventilator mode, Hamilton modes included, charted at two times; a "
        "tracheostomy is its own class); legacy counted 8 h after any ventilator mode, "
        "endotracheal or tracheostomy tube, or trach mask.",
    ),
    Convention(
        "sofa.fio2",
        "FiO2 of the PaO2/FiO2 ratio",
        "blood_gas_first",
        "chart",
        "mimic-code takes the FiO2 recorded with the blood gas (lab 50816) first, then the last "
        "charted FiO2 of the 4 h before; legacy used the charted FiO2 only.",
    ),
    Convention(
        "sofa.pao2_specimen",
        "Blood gases scored for respiration",
        "arterial",
        "arterial_or_unknown",
        "mimic-code scores specimens typed ART. only; legacy also scored gases without a "
        "specimen type.",
    ),
    Convention(
        "sofa.urine",
        "Renal SOFA urine criterion",
        "documented_time",
        "icu_day",
        "mimic-code scales the urine of the 23 h before each chart to 24 h over the time the "
        "charts document, only when that is 22-30 h; legacy summed the trailing 24 h once a "
        "day of ICU time had passed, uncharted hours counting 0 mL.",
    ),
    Convention(
        "sofa.vasopressor_rate",
        "Vasopressor rate of an hour (cardiovascular SOFA)",
        "hour_end",
        "max_in_hour",
        "mimic-code takes the rate running at the hour's end; legacy the highest rate running "
        "at any time of the hour.",
    ),
    Convention(
        "labs.attribution",
        "Labs that belong to an ICU stay",
        "hadm_id",
        "patient_time",
        "mimic-code joins chemistry, blood counts and enzymes by hadm_id (a lab without one, "
        "e.g. from the emergency department, belongs to no stay) and blood gases by patient; "
        "legacy took every lab of the patient from 24 h before intime to outtime.",
    ),
    Convention(
        "sepsis.onset_sofa_hours_before_intime",
        "SOFA hours before ICU admission that may define Sepsis-3 onset",
        0,
        24,
        "mimic-code's SOFA exists for ICU hours only (labs of the 24 h before admission still "
        "enter the first ICU hours' 24-h window); legacy let the 24 pre-ICU hours define onset.",
    ),
    Convention(
        "sepsis.si_attribution",
        "Suspected infections attributed to an ICU stay",
        "icu_stay",
        "admission",
        "mimic-code gives an antibiotic the ICU stay of its admission during which it started "
        "(none outside the ICU); legacy used every suspicion of the hospital admission.",
    ),
    Convention(
        "sepsis.sofa_time",
        "Time of a SOFA hour (onset window and onset time)",
        "end",
        "start",
        "mimic-code uses the hour's end (sofa endtime) for the [SI - 48 h, SI + 24 h] window and "
        "the onset; legacy used its start, one hour earlier.",
    ),
    Convention(
        "sepsis.date_only_culture",
        "Culture with a chartdate only",
        "midnight",
        "day_overlap",
        "mimic-code places it at midnight and pairs it by calendar day (antibiotic on that day "
        "to 3 days after, or 1 day before); legacy paired on any overlap of the day with the "
        "window and placed it at the antibiotic time or noon.",
    ),
    Convention(
        "cohort.age",
        "Age at the ICU stay (adult rule, age feature)",
        "admission_year",
        "anchor_age",
        "mimic-code's age is anchor_age + (admission year - anchor_year); legacy used anchor_age, "
        "the age in the patient's anchor year.",
    ),
    Convention(
        "actions.treatment.carrier_fluids",
        "Drug-carrier and keep-vein-open IV fluid",
        "exclude",
        "include",
        "mimic-code has no resuscitation-fluid concept for MIMIC-IV; the default does not count "
        "drug diluents (ordercomponenttypedescription 'Mixed solution') or continuous runs at "
        "<= actions.treatment.kvo_max_rate_ml_per_hour mL/h as fluid, legacy counted them.",
    ),
)


def profile_overrides(name: str) -> dict[str, Any]:
    """Dotted overrides that turn the packaged defaults (mimic-code) into profile ``name``."""
    if name not in PROFILES:
        raise ValueError(f"unknown conventions profile {name!r}; expected one of {PROFILES}")
    if name == "mimic-code":
        return {c.key: c.mimic_code for c in REGISTRY}
    return {c.key: c.legacy for c in REGISTRY}


def value_at(doc: dict[str, Any], key: str) -> Any:
    node: Any = doc
    for part in key.split("."):
        node = node[part]
    return node


def differences(cfg_doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The switches of a resolved build config (``model_dump(mode="json")``) that differ from
    mimic-code's convention."""
    out = []
    for c in REGISTRY:
        got = value_at(cfg_doc, c.key)
        if _norm(got) != _norm(c.mimic_code):
            out.append({"key": c.key, "what": c.what, "value": got, "mimic_code": c.mimic_code})
    return out


def profile_of(cfg_doc: dict[str, Any]) -> str:
    """``mimic-code``, ``legacy`` or ``custom``: the profile a resolved config matches."""
    for name in PROFILES:
        want = profile_overrides(name)
        if all(_norm(value_at(cfg_doc, k)) == _norm(v) for k, v in want.items()):
            return name
    return "custom"


def _norm(x: Any) -> Any:
    if isinstance(x, tuple | list):
        return [_norm(v) for v in x]
    return x


def markdown_table() -> str:
    """The conventions table of ``docs/build.md``."""
    lines = [
        "| Convention | Switch | sepsisrl default (= mimic-code) | legacy profile | Difference |",
        "|---|---|---|---|---|",
    ]
    for c in REGISTRY:
        lines.append(
            f"| {c.what} | `{c.key}` | `{_show(c.mimic_code)}` | `{_show(c.legacy)}` | {c.note} |"
        )
    return "\n".join(lines)


def _show(x: Any) -> str:
    if isinstance(x, list | tuple):
        return "[" + ", ".join(str(v) for v in x) + "]"
    return str(x).lower() if isinstance(x, bool) else str(x)


def complete_resolved_config(doc: dict[str, Any]) -> dict[str, Any]:
    """A resolved build configuration (``build_config.json``) completed with the keys it lacks.

    A workspace built by an earlier sepsisrl has no key for a switch added since: it was built
    with the earlier convention, so a missing switch takes its ``legacy`` value; any other
    missing key (a section added since, e.g. ``state``) takes the packaged default.
    """
    from sepsisrl.config import deep_merge
    from sepsisrl.dataset.config import load_build_config

    packaged = load_build_config().model_dump(mode="json")
    for c in REGISTRY:
        if not _has(doc, c.key):
            _set(packaged, c.key, c.legacy)
    if "state" not in doc:
        packaged["state"]["variant"] = "card"
    return deep_merge(packaged, doc)


def _has(doc: dict[str, Any], key: str) -> bool:
    try:
        value_at(doc, key)
    except (KeyError, TypeError):
        return False
    return True


def _set(doc: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = doc
    for part in parents:
        node = node[part]
    node[last] = value
