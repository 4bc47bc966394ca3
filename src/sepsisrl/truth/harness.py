"""``sepsisrl truth``: the true 90-day mortality and value of a policy in the synthetic world.

    population (cached)  fresh patients of the workspace's world, simulated under the
                         clinicians, charted hour by hour, built to episodes
    rollout              the same patients again, the policy in control on the replay's grid
    truth.json           mortality and value with 95 % CIs, the paired difference from the
                         clinicians (the population's own outcomes), counts, fingerprints

The clinicians' outcome of each episode is the population's (its cohort's ``died_90d`` and
number of steps, exactly as the replay would record them); a policy's outcome is paired with
it patient by patient (common random numbers), so the difference is the policy's effect.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sepsisrl import __version__
from sepsisrl.truth.lockstep import SharedStateFunction, run_lockstep
from sepsisrl.truth.policies import WorldPolicy
from sepsisrl.truth.rollout import INTERFACES, RolloutOutcome, rollout_population, wilson
from sepsisrl.truth.world import (
    Population,
    TruthContext,
    TruthError,
    fresh_entropy,
    population_key,
    simulate_population,
)
from sepsisrl.workspace import atomic_folder, write_json

Z95 = 1.959963984540054
DEFAULT_PATIENTS = 2000
#: The 90-day mortality margin (a fraction) within which a policy counts as no worse than the
#: clinicians (the card, the report, bench/noninferiority.py): the upper end of the paired
#: 95 % CI of its difference from theirs must not exceed it.
NONINFERIORITY_MARGIN = 0.01
INTERFACE_LIMITS = {
    "held": [
        "The world's clock is hourly: a decision at tau acts from the first full hour at or "
        "after tau, for 4 hours; within them the dose is constant (clinicians titrate every "
        "hour).",
        "An action bin is given as one representative dose (the median logged dose inside the "
        "bin in the build's train data): the vasopressor as the stay's first-line agent at that "
        "norepinephrine-equivalent rate, with no vasopressin, epinephrine add-on, dobutamine or "
        "bolus; the fluid as normal saline at a constant rate.",
    ],
    "titrated": [
        "The world's clock is hourly: a decision at tau sets the bins from the first full hour "
        "at or after tau, for 4 hours; within them the simulated team titrates every hour on what "
        "it sees (its bedside volume assessment included), kept inside the bins.",
        "Inside a bin means between the midpoints of the bin's median logged dose and its edges "
        "(bin 0: none; the top bin: no ceiling): the team's vasopressor rate is clipped into that "
        "range, every agent scaled alike (its first-line agent at the floor when it chose none); "
        "its fluid in every hour within a quarter of the window's range (a bolus larger than "
        "that is given in part; normal saline at the floor when it chose none).",
    ],
}
LIMITS = [
    "The cohort and each episode's decision grid are those of the patients under the "
    "clinicians (as in the replay); a policy cannot move the Sepsis-3 onset or leave the cohort.",
    "Antibiotics, ventilation and all care outside the grid stay with the simulated clinicians.",
    "The truth is the truth of this simulator, not of real patients.",
]


def limits(interface: str) -> list[str]:
    """What the truth of ``interface`` does not capture (``truth.json`` ``limits``)."""
    return [*INTERFACE_LIMITS[interface], *LIMITS]


def population_for(
    ctx: TruthContext,
    n_patients: int = DEFAULT_PATIENTS,
    seed: int = 0,
    cache: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Population:
    """The fresh population of ``ctx``'s world for ``seed`` (cached under the workspace)."""
    entropy = fresh_entropy(ctx.world_seed, seed)
    folder = population_folder(ctx, n_patients, seed, cache)
    return simulate_population(ctx, entropy, n_patients, folder, progress)


def population_folder(
    ctx: TruthContext, n_patients: int = DEFAULT_PATIENTS, seed: int = 0, cache: Path | None = None
) -> Path:
    """Where :func:`population_for` keeps that population (``population.json`` once whole)."""
    root = Path(cache) if cache else ctx.workspace / "truth" / "populations"
    return root / population_key(ctx, fresh_entropy(ctx.world_seed, seed), n_patients)


def mean_ci(x: np.ndarray) -> dict[str, float]:
    n = len(x)
    m = float(np.mean(x)) if n else math.nan
    se = float(np.std(x, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return {"mean": m, "ci95": [m - Z95 * se, m + Z95 * se], "se": se}


def clinician_reference(pop: Population, ctx: TruthContext) -> pa.Table:
    """The clinicians' outcome per episode: the population's cohort and episodes."""
    cohort = pop.cohort().select(["stay_id", "died_90d"])
    episodes = pop.episodes().select(["stay_id", "n_steps"])
    died = dict(zip(cohort["stay_id"].to_pylist(), cohort["died_90d"].to_pylist(), strict=True))
    stays = episodes["stay_id"].to_numpy()
    d = np.array([bool(died[s]) for s in stays.tolist()])
    steps = episodes["n_steps"].to_numpy().astype(np.int64)
    terminal = np.where(d, ctx.terminal_died, ctx.terminal_survived)
    return pa.table(
        {
            "stay_id": stays,
            "died_90d": d,
            "steps": steps,
            "return_eval": ctx.gamma ** (np.maximum(steps, 1) - 1) * terminal,
        }
    ).sort_by("stay_id")


def summarise(
    ctx: TruthContext,
    pop: Population,
    policy_name: str,
    result: RolloutOutcome,
    reference: pa.Table,
) -> dict[str, Any]:
    ep = result.episodes.sort_by("stay_id")
    if ep["stay_id"].to_pylist() != reference["stay_id"].to_pylist():
        raise RuntimeError("truth: the rollout's episodes are not the population's")
    died = ep["died_90d"].to_numpy(zero_copy_only=False).astype(bool)
    ret = ep["return_eval"].to_numpy()
    ref_died = reference["died_90d"].to_numpy(zero_copy_only=False).astype(bool)
    ref_ret = reference["return_eval"].to_numpy()
    n = len(died)
    dec = result.decisions
    acts = dec["action"].to_numpy()
    own = acts[acts >= 0]
    realised = (
        dec["logged_action"].to_numpy()[acts >= 0] if "logged_action" in dec.column_names else None
    )
    return {
        "policy": policy_name,
        "patients_simulated": pop.n_patients,
        "episodes": n,
        "decisions": len(acts),
        "decisions_deferred_to_clinicians": int((acts < 0).sum()),
        "mortality_90d": {
            "mean": float(died.mean()) if n else math.nan,
            "ci95": list(wilson(int(died.sum()), n)),
        },
        "value": mean_ci(ret),
        "clinicians": {
            "mortality_90d": {
                "mean": float(ref_died.mean()) if n else math.nan,
                "ci95": list(wilson(int(ref_died.sum()), n)),
            },
            "value": mean_ci(ref_ret),
        },
        "difference_from_clinicians": {
            "paired": True,
            "mortality_90d": mean_ci(died.astype(float) - ref_died.astype(float)),
            "value": mean_ci(ret - ref_ret),
        },
        "mean_steps": float(ep["steps"].to_numpy().mean()) if n else math.nan,
        # the share of the policy's decisions whose window, charted and built like the replay,
        # records the action chosen (what the interface delivers, read back as the build reads)
        "realised_action_agreement": (
            float((realised == own).mean()) if realised is not None and len(own) else None
        ),
        "policy_actions": {
            "mean_vaso_bin": float((own // ctx.stats.n_fluid_bins).mean()) if len(own) else None,
            "mean_fluid_bin": float((own % ctx.stats.n_fluid_bins).mean()) if len(own) else None,
        },
        "evaluation_reward": {
            "terminal_survived": ctx.terminal_survived,
            "terminal_died": ctx.terminal_died,
            "gamma": ctx.gamma,
            "return": "gamma^(T-1) * terminal, T = decisions while in the ICU",
        },
    }


def compute_truth(
    workspace: str | Path,
    policy: WorldPolicy,
    out: str | Path,
    n_patients: int = DEFAULT_PATIENTS,
    seed: int = 0,
    ctx: TruthContext | None = None,
    population: Population | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    interface: str = "held",
) -> dict[str, Any]:
    """Write ``out/truth.json`` (and ``out/episodes.parquet``) for ``policy``; ``interface``:
    how an action reaches the patient (:data:`~sepsisrl.truth.rollout.INTERFACES`)."""
    return compute_truths(
        workspace, [(policy, Path(out))], n_patients, seed, ctx, population, progress, interface
    )[0]


def compute_truths(
    workspace: str | Path,
    jobs: list[tuple[WorldPolicy, Path]],
    n_patients: int = DEFAULT_PATIENTS,
    seed: int = 0,
    ctx: TruthContext | None = None,
    population: Population | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    interface: str = "held",
) -> list[dict[str, Any]]:
    """:func:`compute_truth` of several ``(policy, out)`` on the same patients; with more than
    one, the rollouts run in lockstep and share the state function's calls
    (``truth/lockstep.py``), each outcome the one the policy has alone."""
    started = time.perf_counter()
    ctx = ctx or TruthContext.load(workspace)
    if n_patients < 1:
        raise TruthError(f"--patients must be at least 1, got {n_patients}")
    if interface not in INTERFACES:
        raise TruthError(f"--interface must be one of {list(INTERFACES)}, got {interface!r}")
    if not jobs:
        return []
    t0 = time.perf_counter()
    pop = population or population_for(
        ctx,
        n_patients,
        seed,
        progress=(lambda d, t: progress("population", d, t)) if progress else None,
    )
    pop_seconds = time.perf_counter() - t0
    if pop.cohort().num_rows == 0:
        raise TruthError(f"no cohort episode among the {n_patients} simulated patients")
    docs = []
    with ExitStack() as stack:
        tmps = [stack.enter_context(atomic_folder(Path(out))) for _, out in jobs]
        t1 = time.perf_counter()
        report = (lambda d, t: progress("rollout", d, t)) if progress else None
        if len(jobs) == 1:
            results = [
                rollout_population(
                    ctx, pop, jobs[0][0], tmps[0] / ".work", progress=report, interface=interface
                )
            ]
        else:
            results = _lockstep(ctx, pop, [p for p, _ in jobs], tmps, interface)
        rollout_seconds = time.perf_counter() - t1
        reference = clinician_reference(pop, ctx)
        for (policy, _), tmp, result in zip(jobs, tmps, results, strict=True):
            shutil.rmtree(tmp / ".work", ignore_errors=True)
            doc = summarise(ctx, pop, policy.name, result, reference)
            doc = {
                "schema_version": "1",
                "created_by": f"sepsisrl {__version__}",
                **doc,
                "seed": seed,
                "patients_are_fresh": True,
                "patient_stream": "disjoint from the world's (seed entropy [world seed, "
                f"{hex(fresh_entropy(0, 0)[1])}, seed])",
                "fingerprints": {**ctx.fingerprints, "build": ctx.build_fingerprint()},
                "workspace": str(ctx.workspace),
                "interface": interface,
                "limits": limits(interface),
                "seconds": {
                    "population": round(pop_seconds, 2),
                    "rollout": round(rollout_seconds, 2),
                    "total": round(time.perf_counter() - started, 2),
                    # the rollout's seconds were shared by this many policies (in lockstep)
                    "rollouts_in_lockstep": len(jobs),
                },
            }
            pq.write_table(result.episodes, tmp / "episodes.parquet")
            write_json(tmp / "truth.json", doc)
            docs.append(doc)
    return docs


def _lockstep(
    ctx: TruthContext,
    pop: Population,
    policies: list[WorldPolicy],
    tmps: list[Path],
    interface: str,
) -> list[RolloutOutcome]:
    shared = SharedStateFunction(ctx.build_cfg, ctx.stats, tmps[0] / ".shared", len(policies))

    def target(i: int):
        def run(client) -> RolloutOutcome:
            return rollout_population(
                ctx, pop, policies[i], tmps[i] / ".work", interface=interface,
                state_function=client,
            )  # fmt: skip

        run.wants_sofa = bool(getattr(policies[i], "wants_context", False))
        return run

    try:
        return run_lockstep([target(i) for i in range(len(policies))], shared)
    finally:
        shared.close()
        shutil.rmtree(tmps[0] / ".shared", ignore_errors=True)
