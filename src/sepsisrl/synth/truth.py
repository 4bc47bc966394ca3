"""Ground truth of the synthetic world: true SOFA, suspicion of infection and Sepsis-3 onset.

The truth applies the Sepsis-3 definition of docs/clinical.md ("Sepsis-3") to the
simulator's noise-free hourly values - what a perfect record would contain - so the pipeline's
own Sepsis-3, computed from the noisy, gappy tables, can be validated against it.

Conventions (also written into the sidecar's ``world.json``):
- SOFA hours run over the whole simulated hospital stay. Lab-based components (coagulation,
  liver, creatinine) use every hour; bedside components (respiration, cardiovascular, CNS,
  urine output) only ICU hours, because the tables only chart them in the ICU.
- CNS: the GCS of a ventilated hour is that of the patient's neurological function without
  sedation (what SOFA asks for; the tables cannot show it: the build's default, mimic-code's
  gcs, assumes 15 while intubated).
- Each component is the worst value in the trailing 24 h; the 24 h urine criterion needs a full
  24 h of ICU urine. The cardiovascular component uses MAP, dopamine, dobutamine, epinephrine and
  norepinephrine doses (vasopressin and phenylephrine only act through MAP).
- Suspected infection: culture then antibiotic within 72 h, or antibiotic then culture within
  24 h; time = the earlier event of the first qualifying pair. As in mimic-code (the build's
  default), only antibiotics started during the ICU stay count.
- Onset: first ICU hour with SOFA >= 2 whose end lies in [SI - 48 h, SI + 24 h]; onset =
  min(SI, that hour's end) (mimic-code's sofa endtime; sepsis_onset's defaults keep the
  earlier convention: every hour, at its start).
"""

from __future__ import annotations

import numpy as np

from sepsisrl.synth.population import FIRST_LINE_AGENTS


def _band(values: np.ndarray, edges: list[float], increasing: bool) -> np.ndarray:
    """Score 0..len(edges) by thresholds; ``increasing`` means higher values score higher."""
    v = np.asarray(values, dtype=np.float64)
    score = np.zeros(v.shape, dtype=np.int8)
    for i, edge in enumerate(edges, start=1):
        hit = v >= edge if increasing else v < edge
        score = np.where(hit, i, score)
    return np.where(np.isnan(v), 0, score).astype(np.int8)


def sofa_respiration(pf: np.ndarray, ventilated: np.ndarray) -> np.ndarray:
    s = _band(pf, [400, 300, 200, 100], increasing=False)
    return np.where(ventilated, s, np.minimum(s, 2)).astype(np.int8)


def sofa_coagulation(platelets: np.ndarray) -> np.ndarray:
    return _band(platelets, [150, 100, 50, 20], increasing=False)


def sofa_liver(bilirubin: np.ndarray) -> np.ndarray:
    return _band(bilirubin, [1.2, 2.0, 6.0, 12.0], increasing=True)


def sofa_cns(gcs_total: np.ndarray) -> np.ndarray:
    g = np.asarray(gcs_total, dtype=np.float64)
    s = np.select([g < 6, g < 10, g < 13, g < 15], [4, 3, 2, 1], 0)
    return np.where(np.isnan(g), 0, s).astype(np.int8)


def sofa_cardiovascular(
    mean_ap: np.ndarray,
    dopamine: np.ndarray,
    dobutamine: np.ndarray,
    epinephrine: np.ndarray,
    norepinephrine: np.ndarray,
) -> np.ndarray:
    epi_ne = np.maximum(epinephrine, norepinephrine)
    s = np.select(
        [
            (dopamine > 15) | (epi_ne > 0.1),
            (dopamine > 5) | (epi_ne > 0),
            (dopamine > 0) | (dobutamine > 0),
            mean_ap < 70,
        ],
        [4, 3, 2, 1],
        0,
    )
    return s.astype(np.int8)


def sofa_renal(creatinine: np.ndarray, urine_24h_ml: np.ndarray) -> np.ndarray:
    s = _band(creatinine, [1.2, 2.0, 3.5, 5.0], increasing=True)
    u = np.asarray(urine_24h_ml, dtype=np.float64)
    s = np.where(u < 500, np.maximum(s, 3), s)
    s = np.where(u < 200, 4, s)
    return s.astype(np.int8)


def trailing(values: np.ndarray, group: np.ndarray, hours: int, how: str) -> np.ndarray:
    """Trailing-window max or sum over ``hours`` rows within contiguous groups (rows sorted)."""
    out = values.astype(np.float64).copy()
    for lag in range(1, hours):
        prev = np.full_like(out, np.nan)
        prev[lag:] = values[:-lag]
        same = np.zeros(len(values), dtype=bool)
        same[lag:] = group[lag:] == group[:-lag]
        prev = np.where(same, prev, np.nan)
        out = np.fmax(out, prev) if how == "max" else out + np.nan_to_num(prev)
    return out


def neurological_gcs(brain: np.ndarray) -> np.ndarray:
    """The GCS of neurological function alone (no sedation, verbal assessable): the
    simulator's components for an unventilated patient."""
    neuro = 15.0 - 12.0 * np.asarray(brain, dtype=np.float64) ** 1.1
    eye = np.clip(np.round(1 + 3 * (neuro - 3) / 12), 1, 4)
    verbal = np.clip(np.round(1 + 4 * (neuro - 3) / 12), 1, 5)
    motor = np.clip(np.round(1 + 5 * (neuro - 3) / 12), 1, 6)
    return eye + verbal + motor


def hourly_sofa(hourly: dict[str, np.ndarray], first_line: np.ndarray) -> dict[str, np.ndarray]:
    """True SOFA per simulated hour (components are worst-in-trailing-24 h)."""
    stay = hourly["stay"]
    icu = hourly["in_icu"].astype(bool)
    agent = first_line[stay]
    primary = hourly["vaso_eq"].astype(np.float64)
    is_ = {a: agent == FIRST_LINE_AGENTS.index(a) for a in FIRST_LINE_AGENTS}
    dopamine = np.where(is_["dopamine"], primary / 0.01, 0.0)
    norepi = np.where(is_["norepinephrine"], primary, 0.0)
    epi = np.where(is_["epinephrine"], primary, 0.0) + hourly["epi_add"]
    gcs = hourly["gcs_eye"] + hourly["gcs_verbal"] + hourly["gcs_motor"]
    nan = np.nan
    resp = np.where(icu, sofa_respiration(hourly["pf"], hourly["ventilated"].astype(bool)), nan)
    cardio = np.where(
        icu, sofa_cardiovascular(hourly["map"], dopamine, hourly["dobutamine"], epi, norepi), nan
    )
    # ventilated hours: the GCS of the patient's neurological function without sedation (a
    # sedated patient's charted GCS is not organ dysfunction; SOFA asks for the pre-sedation
    # GCS). The tables cannot show it: mimic-code's convention (the build's default) assumes
    # 15, legacy scored the charted, sedated GCS.
    gcs = np.where(hourly["ventilated"].astype(bool), neurological_gcs(hourly["brain"]), gcs)
    cns = np.where(icu, sofa_cns(gcs), nan)
    coag = sofa_coagulation(hourly["platelets"])
    liver = sofa_liver(hourly["bilirubin"])
    urine_icu = np.where(icu, hourly["urine_ml"], nan)
    urine_sum = trailing(np.nan_to_num(urine_icu), stay, 24, "sum")
    icu_hours = trailing(icu.astype(np.float64), stay, 24, "sum")
    urine_24h = np.where(icu_hours >= 24, urine_sum, nan)
    renal = sofa_renal(hourly["creatinine"], urine_24h)
    comps = {
        "sofa_respiration": resp,
        "sofa_coagulation": coag,
        "sofa_liver": liver,
        "sofa_cardiovascular": cardio,
        "sofa_cns": cns,
        "sofa_renal": renal,
    }
    out = {}
    total = np.zeros(len(stay))
    for name, comp in comps.items():
        worst = np.nan_to_num(trailing(comp.astype(np.float64), stay, 24, "max"))
        out[name] = worst.astype(np.int8)
        total += worst
    out["sofa"] = total.astype(np.int8)
    return out


def suspected_infection_times(
    cultures: list[np.ndarray],
    antibiotics: list[np.ndarray],
    antibiotic_window: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Per stay and (culture, antibiotic) pair: the SI time of the pair, nan if it does not qualify.

    ``antibiotic_window``: (start, end) hours per stay; only antibiotics started in
    [start, end) count (the ICU stay: mimic-code attributes an antibiotic to the ICU stay in
    which it started). Returns an array of shape (n_stays, n_cultures * n_antibiotics).
    """
    out = []
    for c in cultures:
        for a in antibiotics:
            culture_first = (c <= a) & (a - c <= 72.0)
            abx_first = (a < c) & (c - a <= 24.0)
            ok = culture_first | abx_first
            if antibiotic_window is not None:
                start, end = antibiotic_window
                ok &= (a >= start) & (a < np.where(np.isnan(end), np.inf, end))
            out.append(np.where(ok, np.fmin(c, a), np.nan))
    return np.stack(out, axis=1)


def sepsis_onset(
    hourly_stay: np.ndarray,
    hourly_h: np.ndarray,
    sofa: np.ndarray,
    si_times: np.ndarray,
    first_hour: np.ndarray | None = None,
    hour_end: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sepsis-3 onset per stay from candidate SI times (n_stays, k).

    Every qualifying SI is examined (as mimic-code does); the stay's Sepsis-3 is the earliest
    onset over SIs that have an hour with SOFA >= 2 in [SI - 48 h, SI + 24 h].
    ``first_hour``: per stay, the first hour whose SOFA may define onset (the ICU admission
    hour: mimic-code's SOFA exists for ICU hours only); ``hour_end``: an hour h counts at its
    end, h + 1 (mimic-code's sofa endtime), for the window and the onset.
    Returns (onset, SOFA-qualifying hour's time, SI time used); nan when not septic.
    """
    if hour_end:
        hourly_h = hourly_h + 1
    if first_hour is not None:
        keep = hourly_h >= first_hour[hourly_stay] + (1 if hour_end else 0)
        hourly_stay, hourly_h, sofa = hourly_stay[keep], hourly_h[keep], sofa[keep]
    n = si_times.shape[0]
    best_onset = np.full(n, np.nan)
    best_hour = np.full(n, np.nan)
    best_si = np.full(n, np.nan)
    for j in range(si_times.shape[1]):
        si = si_times[:, j]
        si_rows = si[hourly_stay]
        window = (hourly_h >= si_rows - 48.0) & (hourly_h <= si_rows + 24.0) & (sofa >= 2)
        first = np.full(n, np.inf)
        np.minimum.at(first, hourly_stay[window], hourly_h[window].astype(np.float64))
        first = np.where(np.isinf(first), np.nan, first)
        onset = np.where(np.isnan(first), np.nan, np.fmin(si, first))
        better = ~np.isnan(onset) & ~(onset >= best_onset)
        best_onset = np.where(better, onset, best_onset)
        best_hour = np.where(better, first, best_hour)
        best_si = np.where(better, si, best_si)
    return best_onset, best_hour, best_si
