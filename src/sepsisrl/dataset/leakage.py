"""Leakage audit: the build fails when any of these checks fails (``audit/leakage.json``).

1. patient_in_one_split      no subject_id appears in two splits (manifest and replay files)
2. fitted_on_train_only      imputation medians, normalisation and action bins were fitted on
                             exactly the train rows (fingerprints) and refitting them from the
                             train rows reproduces the persisted values
3. no_outcome_features       no state feature is derived from the outcome (death, discharge,
                             reward, length of stay ...)
4. causal_states             every state used only data charted before its decision time, and
                             cumulative treatments exclude the current action window; each lab
                             feature observed in a decision window has a lab usable in that
                             window by ``labs.time`` (drawn, or resulted under ``storetime``),
                             checked against the ingested labevents rows
5. aligned_transitions       each episode's rows are steps 0..n-1 in order, ``done`` only on the
                             last, rewards match the SOFA deltas of consecutive states and the
                             terminal reward matches the recorded outcome
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow.parquet as pq

from sepsisrl.contracts import ReplayMeta, RewardSpec
from sepsisrl.dataset.actions import DoseBins, rows_sha256
from sepsisrl.dataset.config import LAB_MEASUREMENT_CONCEPTS, BuildConfig
from sepsisrl.dataset.measurements import GAS_TIME
from sepsisrl.dataset.preprocessing import StatePreprocessor
from sepsisrl.dataset.splits import SPLITS
from sepsisrl.dataset.sqlfiles import Raw, execute, identifier
from sepsisrl.workspace import read_json, write_json

OUTCOME_TOKENS = (
    "death", "died", "dead", "dod", "mortality", "expire", "survival", "survive", "outcome",
    "reward", "discharge", "dischtime", "outtime", "los", "length_of_stay", "hospice",
)  # fmt: skip


class LeakageError(RuntimeError):
    """The leakage audit found a violation; the message names each one."""


def _check(name: str, ok: bool, detail: str, **extra: Any) -> dict[str, Any]:
    return {"check": name, "passed": bool(ok), "detail": detail, **extra}


def _outcome_like(feature: str) -> bool:
    tokens = re.split(r"[^a-z0-9]+", feature.lower())
    joined = "_".join(tokens)
    return any(t in tokens for t in OUTCOME_TOKENS) or any(
        tok in joined for tok in ("length_of_stay", "died_", "death_")
    )


def audit_workspace(
    ws: Path, cfg: BuildConfig, variants: list[str] | None = None
) -> dict[str, Any]:
    """Run every check on a built workspace; returns the report (does not raise)."""
    manifest = pq.read_table(ws / "splits" / "manifest.parquet")
    variants = variants or list(cfg.rewards.variants)
    state = pq.read_table(ws / "features" / "state_raw.parquet")
    acts = pq.read_table(ws / "actions" / "step_actions.parquet")
    train_stays = set(
        manifest.filter(manifest["split"].to_numpy(zero_copy_only=False) == "train")[
            "stay_id"
        ].to_pylist()
    )
    results = [
        _patient_in_one_split(ws, manifest, variants),
        _fitted_on_train_only(ws, cfg, state, acts, train_stays),
        _no_outcome_features(ws, variants),
        _causal_states(ws, cfg, state, acts),
        _aligned_transitions(ws, cfg, state, variants),
    ]
    return {"passed": all(x["passed"] for x in results), "checks": results}


def _patient_in_one_split(ws: Path, manifest: Any, variants: list[str]) -> dict[str, Any]:
    """Check 1: no subject_id in two splits, in the manifest and in every replay file."""
    subj_split: dict[int, set[str]] = {}
    for v in variants:
        for split in SPLITS:
            t = pq.read_table(ws / "replay" / v / f"replay_{split}.parquet", columns=["subject_id"])
            for s in np.unique(t["subject_id"].to_numpy()).tolist():
                subj_split.setdefault(s, set()).add(split)
    for s, sp in zip(
        manifest["subject_id"].to_pylist(), manifest["split"].to_pylist(), strict=True
    ):
        subj_split.setdefault(s, set()).add(sp)
    multi = sorted(s for s, sp in subj_split.items() if len(sp) > 1)
    return _check(
        "patient_in_one_split",
        not multi,
        "every patient is in exactly one split"
        if not multi
        else f"{len(multi)} patient(s) in more than one split, e.g. subject_id {multi[:5]}",
    )


def _fitted_on_train_only(
    ws: Path, cfg: BuildConfig, state: Any, acts: Any, train_stays: set[int]
) -> dict[str, Any]:
    """Check 2: imputation medians, normalisation and action bins carry the fingerprint of
    exactly the train rows, and refitting them from those rows reproduces them."""
    stay = state["stay_id"].to_numpy()
    step = state["step"].to_numpy().astype(np.int64)
    train = np.array([s in train_stays for s in stay.tolist()])
    expected_sha = rows_sha256(stay[train], step[train])
    prep_doc = read_json(ws / "features" / "preprocessing.json")
    bins_doc = read_json(ws / "actions" / "bins.json")
    problems = []
    if prep_doc.get("fitted_on", {}).get("rows_sha256") != expected_sha:
        problems.append("preprocessing.json was not fitted on exactly the train rows")
    if bins_doc.get("fitted_on", {}).get("rows_sha256") != expected_sha:
        problems.append("bins.json was not fitted on exactly the train rows")
    prep = StatePreprocessor.from_json(prep_doc)
    raw = np.column_stack([state[n].to_numpy() for n in prep.names])
    refit = StatePreprocessor(prep.names, prep.clip, prep.log1p)
    refit.fit_scaler(raw[train])
    for n in prep.names:
        if not np.isclose(refit.mean[n], prep.mean[n], rtol=1e-9, atol=1e-9) or not np.isclose(
            refit.std[n], prep.std[n], rtol=1e-9, atol=1e-9
        ):
            problems.append(f"normalisation of {n} differs from a train-only refit")
    for f in cfg.features:
        obs_col = f"obs_{f.name}"
        if (
            f.impute == "ff"
            and obs_col in state.column_names
            and f.name not in ("pf_ratio", "shock_index")
        ):
            obs = state[obs_col].to_numpy(zero_copy_only=False)
            vals = state[f.name].to_numpy()[train & obs]
            if len(vals) and not np.isclose(np.median(vals), prep.median[f.name], rtol=1e-9):
                problems.append(
                    f"imputation median of {f.name} differs from the median of observed train values"
                )
    a_train = np.array([s in train_stays for s in acts["stay_id"].to_numpy().tolist()])
    for key, col in (("vasopressor", "vaso_ne_rate"), ("iv_fluid", "fluid_ml")):
        refit_bins = DoseBins(len(bins_doc[key]["edges"]) + 2).fit(acts[col].to_numpy()[a_train])
        if not np.allclose(refit_bins.edges, bins_doc[key]["edges"], rtol=1e-9):
            problems.append(f"{key} bin edges differ from a train-only refit")
    return _check(
        "fitted_on_train_only",
        not problems,
        "medians, normalisation and action bins reproduce from train rows only"
        if not problems
        else "; ".join(problems),
    )


def _no_outcome_features(ws: Path, variants: list[str]) -> dict[str, Any]:
    """Check 3: no state feature (meta.json and the replay's ``s_`` columns) is named like an
    outcome (death, discharge, reward, length of stay ...)."""
    meta_names: set[str] = set()
    for v in variants:
        meta = ReplayMeta.load(ws / "replay" / v / "meta.json")
        meta_names.update(meta.feature_names)
        cols = pq.read_schema(ws / "replay" / v / "replay_train.parquet").names
        meta_names.update(c[2:] for c in cols if c.startswith("s_"))
    leaky = sorted(n for n in meta_names if _outcome_like(n))
    return _check(
        "no_outcome_features",
        not leaky,
        "no state feature is derived from the outcome"
        if not leaky
        else f"outcome-derived feature(s) in the state: {leaky}",
    )


def _causal_states(ws: Path, cfg: BuildConfig, state: Any, acts: Any) -> dict[str, Any]:
    """Check 4: every state's data was charted before its decision time, cumulative doses
    exclude the current action window, the running_treatment features read the previous step,
    and each observed lab feature has a lab usable in its window (``_lab_time_problems``)."""
    stay = state["stay_id"].to_numpy()
    step = state["step"].to_numpy().astype(np.int64)
    tau = state["tau"].cast("int64").to_numpy()
    src = state["max_source_time"].cast("int64").to_numpy(zero_copy_only=False)
    has_src = state["max_source_time"].is_valid().to_numpy(zero_copy_only=False)
    late = has_src & (src >= tau)
    problems = []
    if late.any():
        i = int(np.flatnonzero(late)[0])
        problems.append(
            f"{int(late.sum())} state(s) use data charted at or after their decision time "
            f"(e.g. stay {stay[i]} step {step[i]})"
        )
    a = acts.sort_by([("stay_id", "ascending"), ("step", "ascending")])
    a_stay = a["stay_id"].to_numpy()
    first = np.ones(len(a_stay), dtype=bool)
    first[1:] = a_stay[1:] != a_stay[:-1]
    fluid = a["fluid_ml"].to_numpy()
    csum = np.cumsum(fluid)
    starts = np.maximum.accumulate(np.where(first, np.arange(len(fluid)), 0))
    before = csum - fluid - np.where(starts > 0, csum[starts - 1], 0.0)
    lo, hi = next(f.clip for f in cfg.features if f.name == "cum_iv_fluid_ml")
    s_sorted = state.sort_by([("stay_id", "ascending"), ("step", "ascending")])
    cum_state = s_sorted["cum_iv_fluid_ml"].to_numpy()
    if not np.allclose(cum_state, np.clip(before, lo, hi), atol=1e-6):
        problems.append("cumulative IV fluid in the state is not the sum of earlier action windows")
    if "prev_vaso_bin" in state.column_names:  # state variant running_treatment
        problems += _running_treatment_problems(s_sorted, a, first, cfg)
    problems += _lab_time_problems(ws, cfg)
    return _check(
        "causal_states",
        not problems,
        "every state uses only data charted before its decision time; cumulative doses exclude "
        "the current action"
        if not problems
        else "; ".join(problems),
    )


def _aligned_transitions(
    ws: Path, cfg: BuildConfig, state: Any, variants: list[str]
) -> dict[str, Any]:
    """Check 5: in every replay file, each episode's rows are steps 0..n-1 in order, ``done``
    only on the last, terminal rewards match the recorded outcome and shaped rewards match
    the next state (``_transition_problems``)."""
    cohort = pq.read_table(ws / "cohort" / "cohort.parquet", columns=["stay_id", "died_90d"])
    died_of = dict(zip(cohort["stay_id"].to_pylist(), cohort["died_90d"].to_pylist(), strict=True))
    raw_of = {
        (int(a), int(b)): (lac, mp)
        for a, b, lac, mp in zip(
            state["stay_id"].to_numpy().tolist(),
            state["step"].to_numpy().tolist(),
            state["lactate"].to_numpy().tolist(),
            state["map"].to_numpy().tolist(),
            strict=True,
        )
    }
    problems: list[str] = []
    for v in variants:
        meta = ReplayMeta.load(ws / "replay" / v / "meta.json")
        for split in SPLITS:
            t = pq.read_table(ws / "replay" / v / f"replay_{split}.parquet")
            if t.num_rows:
                problems += _transition_problems(
                    t, meta.reward, f"{v}/replay_{split}", died_of, raw_of, cfg
                )
    return _check(
        "aligned_transitions",
        not problems,
        "steps, done flags and rewards are aligned with next states and outcomes"
        if not problems
        else "; ".join(problems[:5]),
    )


def _recorded(reward: RewardSpec, key: str, where: str) -> float:
    """A shaping weight of the meta's ``reward`` section: optional in the replay contract (an
    external dataset may leave it out), always recorded by ``sepsisrl build``."""
    value = getattr(reward, key)
    if value is None:
        raise ValueError(
            f"{where}: its meta.json reward section has no {key!r} (sepsisrl build records it)"
        )
    return value


def _transition_problems(
    t: Any,
    reward: RewardSpec,
    where: str,
    died_of: dict[int, Any],
    raw_of: dict[tuple[int, int], tuple[float, float]],
    cfg: BuildConfig,
) -> list[str]:
    """The alignment problems of one replay file ``t`` (rows sorted by stay and step) whose
    meta.json ``reward`` section gives the shaping weights."""
    r = cfg.rewards
    w_sofa = _recorded(reward, "sofa_delta_weight", where)
    w_lac = _recorded(reward, "lactate_clearance_weight", where)
    w_map = _recorded(reward, "map_deficit_weight", where)
    problems = []
    s = t["stay_id"].to_numpy()
    k = t["step"].to_numpy().astype(np.int64)
    done = t["done"].to_numpy(zero_copy_only=False)
    rew = t["reward"].to_numpy().astype(np.float64)
    # the SOFA column the variant's shaping uses (sofa_state_shaped: sofa_state)
    # replays built before ``sofa_column`` was recorded shape with ``sofa``
    sofa_column = "sofa" if reward.sofa_column is None else reward.sofa_column
    sofa = t[sofa_column].to_numpy().astype(np.float64)
    start = np.ones(len(s), dtype=bool)
    start[1:] = s[1:] != s[:-1]
    end = np.ones(len(s), dtype=bool)
    end[:-1] = s[1:] != s[:-1]
    if len(np.unique(s[start])) != int(start.sum()):
        problems.append(f"{where}: an episode's rows are not contiguous")
    expected_k = np.arange(len(s)) - np.maximum.accumulate(np.where(start, np.arange(len(s)), 0))
    if not (k == expected_k).all():
        problems.append(f"{where}: steps are not 0..n-1 in order within episodes")
    if not (done == end).all():
        problems.append(f"{where}: done is not set exactly on each episode's last step")
    died = np.array([bool(died_of.get(x, False)) for x in s.tolist()])
    terminal = np.where(died, r.terminal_died, r.terminal_survived)
    if not np.allclose(t["reward_eval"].to_numpy(), np.where(end, terminal, 0.0)):
        problems.append(f"{where}: terminal rewards do not match the recorded 90-day outcomes")
    nxt = np.minimum(np.arange(len(s)) + 1, len(s) - 1)
    shaping = w_sofa * (sofa[nxt] - sofa)
    if w_lac or w_map:
        raw = np.array(
            [raw_of[(int(a), int(b))] for a, b in zip(s.tolist(), k.tolist(), strict=True)]
        )
        lac, mp = raw[:, 0], raw[:, 1]
        shaping = shaping + w_lac * (lac - lac[nxt]) / np.maximum(lac, 1e-6)
        target = _recorded(reward, "map_target", where)
        shaping = shaping - w_map * np.maximum(0.0, target - mp[nxt])
    expected = np.where(end, terminal, shaping)
    if not np.allclose(rew, expected, atol=1e-5):
        bad = int(np.flatnonzero(~np.isclose(rew, expected, atol=1e-5))[0])
        problems.append(
            f"{where}: reward is not aligned with the next state (first at stay {s[bad]} "
            f"step {k[bad]})"
        )
    return problems


def _running_treatment_problems(
    state: Any, acts: Any, first: np.ndarray, cfg: BuildConfig
) -> list[str]:
    """The running_treatment features of step k read step k - 1's action window, never the
    current one: the previous bins are the previous step's, and for k >= 1 the fluid of the
    4 h before tau is the previous window's volume (both sorted by stay and step)."""
    problems = []
    clip = {f.name: f.clip for f in cfg.state_features}
    later = ~first
    for name, col in (("prev_vaso_bin", "vaso_bin"), ("prev_fluid_bin", "fluid_bin")):
        got = state[name].to_numpy()
        bins = acts[col].to_numpy().astype(np.float64)
        expected = np.where(first, 0.0, np.roll(bins, 1))
        if not np.array_equal(got, np.clip(expected, *clip[name])):
            problems.append(f"{name} in the state is not the previous step's action bin")
    fluid = state["iv_fluid_4h_before_tau"].to_numpy()
    prev_fluid = np.clip(np.roll(acts["fluid_ml"].to_numpy(), 1), *clip["iv_fluid_4h_before_tau"])
    if not np.allclose(fluid[later], prev_fluid[later], rtol=1e-9, atol=1e-6):
        problems.append(
            "iv_fluid_4h_before_tau in the state is not the previous action window's volume"
        )
    return problems


def _lab_time_problems(ws: Path, cfg: BuildConfig) -> list[str]:
    """A lab feature observed in the window [tau - step, tau) of a state must have a lab of
    its items, attributed to the stay as ``labs.attribution`` says, whose usable time
    (``labs.time``: charttime, or storetime - for a blood gas's PaO2 and FiO2 the later of the
    specimen's) lies in that window. Read from the ingested labevents rows, independently of
    the measurements table: a state that read a lab before its result was stored fails."""
    labs, icu = ws / "ingest" / "labs.parquet", ws / "ingest" / "icustays.parquet"
    state_path = ws / "features" / "state_raw.parquet"
    columns = set(pq.read_schema(state_path).names)
    names = [
        f.name
        for f in cfg.state_features
        if f.name in LAB_MEASUREMENT_CONCEPTS
        and f.agg in ("last", "min", "max")
        and f"obs_{f.name}" in columns
    ]
    if not names or not labs.exists() or not icu.exists():
        return []
    when = cfg.labs.time
    items = ", ".join(
        f"({int(i)}, '{identifier(n)}')" for n in [*names, "fio2_bg"] for i in cfg.items.get(n, [])
    )
    by_patient = set(cfg.labs.by_patient) if cfg.labs.attribution == "hadm_id" else set(names)
    observed = " UNION ALL ".join(
        f"SELECT stay_id, step, tau, '{n}' AS concept FROM read_parquet($state) "
        f"WHERE obs_{identifier(n)}"
        for n in names
    )
    con = duckdb.connect()
    try:
        con.execute("SET threads = 1")
        bad, example = execute(
            con,
            "leakage_lab_time",
            bind={"labs": labs, "icustays": icu, "state": state_path},
            items=Raw(items),
            when=Raw(when),
            gas_time=Raw(GAS_TIME if when == "storetime" else "t"),
            patient=sorted(by_patient) or ["<none>"],
            observed=Raw(observed),
            step=int(cfg.episodes.step_hours),
        ).fetchone()
    finally:
        con.close()
    if not bad:
        return []
    return [
        f"{bad} lab feature value(s) in states have no lab usable in their window by "
        f"labs.time = {when} (e.g. stay {example[0]} step {example[1]})"
    ]


def run_leakage_audit(ws: Path, cfg: BuildConfig, out: Path) -> dict[str, Any]:
    report = audit_workspace(ws, cfg)
    write_json(out / "leakage.json", report)
    if not report["passed"]:
        failed = [f"{c['check']}: {c['detail']}" for c in report["checks"] if not c["passed"]]
        raise LeakageError("leakage audit failed:\n  - " + "\n  - ".join(failed))
    return report
