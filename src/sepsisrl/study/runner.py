"""``sepsisrl run``: raw data (or a new synthetic world) to a selected, evaluated, released policy.

Phases, each cached and resumable (a rerun skips every unit whose inputs, config and code are
unchanged; an interrupted unit is resumed or redone):

1. data      - the synthetic world in ``<ws>/raw`` (unless ``--source``), then ``build``
2. behaviour - the behaviour model b(a|s), fit once on train (validation picks its family)
3. stage 1   - every sweep candidate with the stage-1 seed: train, evaluate on VALIDATION
4. stage 2   - the finalists with the stage-2 seeds: train, evaluate on VALIDATION
5. select    - the documented rule (``selection.py``) -> ``study/selection.json``
6. final     - baselines trained; ONE test evaluation of the selected configuration's seeds
               and of every baseline -> ``study/final.json`` (records the selection's hash)
7. truth     - synthetic worlds only: the true outcome (``sepsisrl truth``) of every candidate
               run and baseline on fresh patients, and how each estimator agrees with it ->
               ``study/truth.json`` (never read by the selection or the final record). Its
               units run as soon as their policies exist, beside other phases' units: the
               population with the clinicians' validation evaluation, the candidates' truths
               with the baseline tuning, the baselines' with the final test
8. export    - ``release/sepsisrl-<selected>/`` with the test metrics of all seeds (and the
               exported run's truth on a synthetic world)
9. report    - ``report/index.html`` and ``report/report.md``

Training and evaluation units run in ``workers`` processes with ``threads_per_worker`` torch
threads each; the results do not depend on the number of workers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sepsisrl import __version__
from sepsisrl.config import flatten_dotted
from sepsisrl.contracts import Artifact, EvaluationMetrics, FinalRecord, Selection
from sepsisrl.locks import holds_lock
from sepsisrl.study import selection as sel
from sepsisrl.study.config import StudyConfig, baseline_fixed, baseline_grid
from sepsisrl.study.executors import LocalPool, check_executor, make_executor
from sepsisrl.threads import cpp_compiler, limited_threads, machine
from sepsisrl.workspace import (
    atomic_folder,
    code_fingerprint,
    read_json,
    remove_partials,
    stable_hash,
    write_json,
)

#: on_event(phase, done, total, message)
Events = Callable[[str, int, int, str], None]


class StudyError(ValueError):
    """The study cannot go on (bad source, inconsistent workspace, failed unit)."""


@dataclass
class StudyResult:
    workspace: Path
    selected: dict[str, Any]
    release: Path
    report: Path
    seconds: float
    phases: dict[str, dict[str, Any]]


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- what a unit finds done
# One definition of "finished with the same key" per kind of work, read by the unit itself
# (``_ensure_*``) and by the driver before it hands a unit to a worker (``unit_done``).
def _same_key(marker: Path, key: str) -> bool:
    return marker.is_file() and read_json(marker).get("key") == key


def _run_done(spec: dict[str, Any]) -> bool:
    """A training run complete with the same key (a halving rung's spec: never, from here)."""
    run = Path(spec["run_dir"])
    if spec.get("pause_at"):
        return False  # its snapshot and checkpoint are the unit's to check (_ensure_stack)
    return (
        _same_key(run / "study.json", spec["key"])
        and (run / "final" / "policy.safetensors").is_file()
    )


def _eval_key(spec: dict[str, Any]) -> str:
    policy_id = spec["spec"]
    if spec["kind"] == "run":
        policy_id = _file_sha(Path(spec["spec"]) / "final" / "policy.safetensors")
    # the behaviour model is an input too: a refit one (new code, config) redoes the evaluation
    behaviour_id = _file_sha(Path(spec["behaviour"]) / "behaviour.safetensors")
    return stable_hash({"base": spec["key"], "policy": policy_id, "behaviour": behaviour_id})


def _eval_done(spec: dict[str, Any], key: str) -> bool:
    out = Path(spec["out"])
    return (out / "metrics.json").is_file() and _same_key(out / "study.json", key)


def _truth_key(spec: dict[str, Any]) -> str:
    policy_id = spec["policy"]
    if spec["kind"] in ("run", "held_sample"):
        policy_id = _file_sha(Path(spec["policy"]) / "final" / "policy.safetensors")
        if spec["kind"] == "held_sample":
            policy_id = f"held_sample:{policy_id}"
    interface = spec.get("interface", "held")
    return stable_hash({"base": spec["key"], "policy": policy_id, "interface": interface})


def _truth_done(spec: dict[str, Any], key: str) -> bool:
    out = Path(spec["out"])
    return (out / "truth.json").is_file() and _same_key(out / "study.json", key)


def _population_done(spec: dict[str, Any]) -> bool:
    """Whether the truth's fresh population of ``spec`` is already simulated (and whole)."""
    from sepsisrl.truth.harness import population_folder
    from sepsisrl.truth.world import TruthContext

    ctx = TruthContext.load(spec["workspace"])
    folder = population_folder(ctx, spec["patients"], spec["seed"])
    return (folder / "population.json").is_file()


def _ensure_population(spec: dict[str, Any]) -> bool:
    """Simulate the truth's fresh population unless it is cached. True if simulated."""
    from sepsisrl.truth.harness import population_for
    from sepsisrl.truth.world import TruthContext

    if _population_done(spec):
        return False
    population_for(TruthContext.load(spec["workspace"]), spec["patients"], spec["seed"])
    return True


_WORK = ("train", "stack", "eval", "evals", "truth", "truths", "population")


def unit_done(job: dict[str, Any]) -> bool:
    """Whether every part of a unit is already done with the same key, so that running it
    would only find that out (the driver then records it as cached without starting a
    worker). Conservative: a unit with no work, a halving rung, or anything unreadable is
    handed to a worker, which decides as before."""
    if not any(job.get(k) for k in _WORK):
        return False
    try:
        runs = job.get("stack") or ([job["train"]] if job.get("train") else [])
        if not all(_run_done(spec) for spec in runs):
            return False
        evals = ([job["eval"]] if job.get("eval") else []) + list(job.get("evals") or [])
        if not all(_eval_done(spec, _eval_key(spec)) for spec in evals):
            return False
        truths = ([job["truth"]] if job.get("truth") else []) + list(job.get("truths") or [])
        if job.get("population") and not _population_done(job["population"]):
            return False
        return all(_truth_done(spec, _truth_key(spec)) for spec in truths)
    except (OSError, ValueError, KeyError):
        return False


def cached_answer(job: dict[str, Any]) -> dict[str, Any]:
    """What :func:`execute_unit` answers for a unit that ``unit_done`` (nothing redone)."""
    stacked = bool(job.get("stack"))
    return {
        "label": job["label"],
        "trained": 0 if stacked else (False if job.get("train") else None),
        "evaluated": 0 if stacked else (False if job.get("eval") else None),
        "measured": 0 if job.get("truths") else (False if job.get("truth") else None),
        **({"simulated": False} if job.get("population") else {}),
        "seconds": 0.0,
    }


def write_record(model: type[Artifact], path: Path, doc: dict[str, Any]) -> None:
    """Write a study record through its contract (``sepsisrl.contracts``): a document that
    drifts from it (a key renamed, left out or added) fails here, naming the key, and nothing
    is written; a good one is written atomically in the format every reader expects."""
    model.parse(doc, path).write(path)


# ---------------------------------------------------------------- units (run in worker processes)
def _ensure_run(spec: dict[str, Any]) -> bool:
    """Train unless complete with the same key; resume an interrupted run. True if trained."""
    return _ensure_stack([spec]) > 0


def _ensure_stack(specs: list[dict[str, Any]]) -> int:
    """Train the runs of ``specs`` (``Study.train_unit`` jobs) as stacks
    (``rl.trainer.train_stack``): those complete with the same key are skipped, interrupted
    ones resume (runs at one checkpoint step resume together), the rest start afresh. Each
    run's weights are those it gets alone. A spec with ``pause_at`` (a rung of successive
    halving) trains only to that step, checkpoints there and takes a snapshot of its policy
    into ``snapshot`` (``rl.trainer.snapshot``). Returns the number of runs trained."""
    from sepsisrl.rl.checkpoint import latest_checkpoint
    from sepsisrl.rl.config import TrainConfig
    from sepsisrl.rl.trainer import StackMember, train_stack

    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for spec in specs:
        run = Path(spec["run_dir"])
        same = _same_key(run / "study.json", spec["key"])
        if same and (run / "final" / "policy.safetensors").is_file():
            continue
        checkpoint = latest_checkpoint(run) if same else None
        if checkpoint is None and run.exists():
            shutil.rmtree(run)
        at = int(checkpoint.name[5:]) if checkpoint is not None else -1
        pause = spec.get("pause_at") or 0
        if pause and at >= pause:
            continue  # already trained to (or past) the rung
        groups.setdefault((checkpoint.name if checkpoint else "", pause), []).append(spec)
    for (step, pause), group in sorted(groups.items()):
        members = [StackMember(s["replay"], TrainConfig.model_validate(s["config"]),
                               s["run_dir"]) for s in group]  # fmt: skip

        def mark(i: int, _run: Path, group=group) -> None:
            """The key as soon as the run starts: an interrupted run resumes next time."""
            s = group[i]
            write_json(Path(s["run_dir"]) / "study.json",
                       {"key": s["key"], "overrides": s["overrides"]})  # fmt: skip

        train_stack(members, resume=bool(step), overwrite=False, on_start=mark,
                    stop_after=pause or None, checkpoint_at_stop=bool(pause))  # fmt: skip
    for spec in specs:
        if spec.get("pause_at"):
            _ensure_snapshot(spec)
    return sum(len(g) for g in groups.values())


def _ensure_snapshot(spec: dict[str, Any]) -> None:
    """The policy of a paused run at its rung (``spec["pause_at"]``) in ``spec["snapshot"]``,
    unless a snapshot of the same run key and step is there."""
    from sepsisrl.rl.trainer import snapshot

    out, step = Path(spec["snapshot"]), spec["pause_at"]
    marker = {"key": spec["key"], "step": step}
    done = (out / "final" / "policy.safetensors").is_file() and (out / "study.json").is_file()
    if done and read_json(out / "study.json") == marker:
        return
    run = Path(spec["run_dir"])
    if not (run / "checkpoints" / f"step_{step:08d}").is_dir():
        raise StudyError(
            f"{run}: the checkpoint of step {step} (successive halving's rung) is gone, so its "
            f"snapshot {out} cannot be made again; delete {run} to train it anew"
        )
    snapshot(run, step, out)
    write_json(out / "study.json", marker)


def _ensure_eval(spec: dict[str, Any]) -> bool:
    """Evaluate unless ``out`` holds an evaluation with the same key. True if evaluated."""
    from sepsisrl.config import validate_dataclass
    from sepsisrl.ope.behaviour import BehaviourModel
    from sepsisrl.ope.evaluate import EvalConfig, evaluate, record_final_folder

    out = Path(spec["out"])
    key = _eval_key(spec)
    if _eval_done(spec, key):
        return False
    cfg = validate_dataclass(EvalConfig, spec["cfg"], "evaluation")  # resolved, as keyed
    with atomic_folder(out) as tmp:
        evaluate(
            spec["spec"], spec["replay"], tmp, kind=spec["kind"], final=spec["final"], cfg=cfg,
            behaviour=BehaviourModel.load(Path(spec["behaviour"])),
        )  # fmt: skip
        write_json(tmp / "study.json", {"key": key})
        if spec["final"] and spec["kind"] == "run":
            record_final_folder(Path(spec["spec"]), tmp, out)
    return True


def _config_differences(was: Any, now: dict[str, Any]) -> str:
    """``; synth config differs in KEY (world V, study W), ...`` or "" (dotted keys)."""

    def flat(doc: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(doc, dict):
            return {prefix.rstrip("."): doc}
        return {k: v for key, sub in doc.items() for k, v in flat(sub, f"{prefix}{key}.").items()}

    a, b = flat(was or {}), flat(now)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    if not keys:
        return ""
    return "; synth config differs in " + ", ".join(
        f"{k} (world {a.get(k)!r}, study {b.get(k)!r})" for k in keys
    )


def _rows(policies: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    split = key.removesuffix("_estimates")
    return [{"policy": p["name"], "truth": p["true_value"], "estimates": p[key],
             "episodes": p.get(f"{split}_episodes"),
             "sensitivity": p.get(f"{split}_sensitivity"),
             "intensity": p.get(f"{split}_intensity")} for p in policies]  # fmt: skip


def _ensure_truth(spec: dict[str, Any]) -> bool:
    """Measure a policy's truth unless ``out`` holds one with the same key. True if measured."""
    return _ensure_truths([spec]) == 1


def _ensure_truths(specs: list[dict[str, Any]]) -> int:
    """Measure the truth of each policy whose ``out`` does not hold one with the same key, the
    missing ones together in lockstep (``truth/lockstep.py``). Returns how many were measured
    (all specs share the workspace, population and interface)."""
    from sepsisrl.truth.harness import compute_truths, population_for
    from sepsisrl.truth.policies import held_sample, world_policy
    from sepsisrl.truth.world import TruthContext

    todo = []
    for spec in specs:
        key = _truth_key(spec)
        if not _truth_done(spec, key):
            todo.append((spec, key))
    if not todo:
        return 0
    first = todo[0][0]
    if any((s["workspace"], s["patients"], s["seed"], s.get("interface", "held"))
           != (first["workspace"], first["patients"], first["seed"],
               first.get("interface", "held")) for s, _ in todo):  # fmt: skip
        raise StudyError("a truth unit's policies must share workspace, patients, seed, interface")
    ctx = TruthContext.load(first["workspace"])
    pop = population_for(ctx, first["patients"], first["seed"])
    jobs = []
    for spec, _ in todo:
        named = spec["kind"] == "named"
        if spec["kind"] == "held_sample":  # the clinicians' own actions, held for 4 hours
            policy = held_sample(spec["policy"], ctx.feature_names, spec["seed"], ctx.workspace)
        else:
            policy = world_policy(
                spec["policy"] if named else None, None if named else spec["policy"], None,
                ctx.feature_names, ctx.n_actions, spec["seed"], workspace=ctx.workspace,
            )  # fmt: skip
        jobs.append((policy, Path(spec["out"])))
    compute_truths(ctx.workspace, jobs, first["patients"], first["seed"], ctx=ctx,
                   population=pop, interface=first.get("interface", "held"))  # fmt: skip
    for spec, key in todo:
        write_json(Path(spec["out"]) / "study.json", {"key": key})
    return len(todo)


def truth_units(
    specs: list[dict[str, Any]], workers: int, lockstep: int, threads: int
) -> list[dict[str, Any]]:
    """The truth phase's units: the policies dealt round-robin into as many groups as workers
    (more when a group would exceed ``lockstep``), each group measured in lockstep
    (``truth/lockstep.py``). The grouping changes the time a unit takes, never an outcome
    (tests/test_truth_lockstep.py)."""
    n = len(specs)
    if n == 0:
        return []
    groups = max(min(max(workers, 1), n), math.ceil(n / lockstep))
    units = []
    for g in range(groups):
        part = specs[g::groups]
        names = [s["name"] for s in part]
        label = names[0] if len(names) == 1 else f"{names[0]} and {len(names) - 1} more"
        units.append({"label": f"{label} (truth)", "threads": threads, "truths": part})
    return units


def _training_cost(spec: dict[str, Any], train_sizes: dict[str, int]) -> float:
    """A training job's expected time in BC-step units: its gradient steps (to ``pause_at``
    for a successive-halving rung) times its algorithm's ``step_cost``."""
    from sepsisrl.rl.registry import algorithm

    cfg = spec["config"]
    steps = cfg["steps"]
    if not steps:
        replay = spec["replay"]
        if replay not in train_sizes:
            meta = read_json(Path(replay) / "meta.json")
            train_sizes[replay] = meta["splits"]["train"]["n_transitions"]
        steps = cfg["epochs"] * max(1, train_sizes[replay] // cfg["batch_size"])
    steps = min(steps, spec.get("pause_at") or steps)
    return steps * algorithm(cfg["algo"]).step_cost


def longest_first(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The jobs in the order to start them: those that train longest first (longest-processing-
    time-first), then the truth's units (a lockstep group of rollouts: a minute or more), then
    the rest (evaluations: seconds each), each kind in its own order. With fewer workers than
    units this keeps short units, not a long one, for the end of a phase: in the card's
    baseline tuning the three CQL runs start before the two BC runs, and in its final test the
    baselines' truths start before the seven evaluations, which then fill the worker that
    finishes first. The order changes when a unit finishes, never what it computes."""
    sizes: dict[str, int] = {}

    def cost(job: dict[str, Any]) -> float:
        specs = job.get("stack") or ([job["train"]] if job.get("train") else [])
        return sum(_training_cost(spec, sizes) for spec in specs)

    costs = [cost(job) for job in jobs]
    short = [not (job.get("truths") or job.get("population")) for job in jobs]
    order = sorted(range(len(jobs)), key=lambda i: (-costs[i], short[i]))  # stable for ties
    return [jobs[i] for i in order]


def utilisation(busy: float, seconds: float, slots: int | None) -> dict[str, float]:
    """Where a phase's worker time went: ``unit_seconds``, the time spent inside its units
    (each unit's own timing, in its worker), and with ``slots`` workers ``busy_fraction``, that
    time's share of the phase's wall time x ``slots``. The rest was idle: a worker waiting for
    the phase's last units (fewer units than workers, or uneven ones), or starting. Its sum over
    the phases bounds what running independent phases side by side could save."""
    out = {"unit_seconds": round(busy, 1)}
    if slots and seconds > 0:
        out["busy_fraction"] = round(min(1.0, busy / (seconds * slots)), 3)
    return out


def execute_unit(job: dict[str, Any]) -> dict[str, Any]:
    """One unit of work: optionally train a run, then optionally evaluate a policy or measure
    its truth."""
    started = time.perf_counter()
    with limited_threads(job["threads"]):  # torch and BLAS: the bytes do not depend on cores
        trained = _ensure_run(job["train"]) if job.get("train") else None
        evaluated = _ensure_eval(job["eval"]) if job.get("eval") else None
        if job.get("stack"):  # stacked runs, then each run's evaluation
            trained = _ensure_stack(job["stack"])
            evaluated = sum(_ensure_eval(spec) for spec in job["evals"])
        measured = _ensure_truth(job["truth"]) if job.get("truth") else None
        if job.get("truths"):  # several policies' truths, measured in lockstep
            measured = _ensure_truths(job["truths"])
        # the truth's fresh patients, simulated beside another unit (``Study.truth_population``)
        simulated = _ensure_population(job["population"]) if job.get("population") else None
    return {"label": job["label"], "trained": trained, "evaluated": evaluated,
            "measured": measured, **({"simulated": simulated} if simulated is not None else {}),
            # not rounded: the phase's busy fraction sums these against its own wall time
            # (the same monotonic clock), and a rounded-up short unit could exceed it
            "seconds": time.perf_counter() - started}  # fmt: skip


WorkerPool = LocalPool  # the local executor's former name (sepsisrl.study.executors)


# ---------------------------------------------------------------- orchestration
class Study:
    def __init__(self, workspace: Path, cfg: StudyConfig, on_event: Events | None) -> None:
        self.ws = workspace
        self.cfg = cfg
        check_executor(cfg.executor)  # e.g. Ray missing: say so before any work
        check_compiler(cfg)
        self.emit = on_event or (lambda *a: None)
        self.phases: dict[str, dict[str, Any]] = {}
        self.train_code = code_fingerprint("train")
        self.eval_code = code_fingerprint("evaluate")
        self.truth_code = code_fingerprint("truth")
        self.pool: Any = None  # the executor (sepsisrl.study.executors), started on demand
        self._replay_key: str | None = None
        self.workers = cfg.workers or max(1, min(2, os.cpu_count() or 1))
        self._truth_ctx: Any = None  # the synthetic world's truth context (truth_context)
        self._truth_skipped: str | None = None  # why there is none (real MIMIC-IV tables)

    # -- helpers
    def rel(self, p: Path | str) -> str:
        return str(Path(p).relative_to(self.ws))

    def replay_dir(self, reward: str) -> Path:
        return self.ws / "replay" / reward

    def replay_key(self) -> str:
        """The replay build's cache key (read once the build has run; it keys every unit)."""
        if self._replay_key is None:
            self._replay_key = read_json(self.ws / "replay" / "stage.json")["key"]
        return self._replay_key

    def train_unit(self, name: str, reward: str, seed: int, overrides: dict[str, Any]):
        """A training run's folder and job. Its key covers the fully resolved TrainConfig
        (configs/train.yaml with every override), the replay and the training code; a run
        whose ``study.json`` holds another key is stale and trained again."""
        run = self.ws / "runs" / f"{name}_seed{seed}"
        full = self.cfg.run_overrides(name, seed, overrides)
        config = self.cfg.train_config(full, f"run {run.name}").model_dump(mode="json")
        key = stable_hash({"config": config, "replay": self.replay_key(), "reward": reward,
                           "code": self.train_code})  # fmt: skip
        return run, {"replay": str(self.replay_dir(reward)), "overrides": full,
                     "config": config, "run_dir": str(run), "key": key}  # fmt: skip

    def eval_unit(self, spec: str, kind: str, reward: str, out_name: str, final: bool):
        """An evaluation's folder and job; its key covers the fully resolved EvalConfig
        (configs/evaluate.yaml with the study's settings) and the evaluation code."""
        cfg = json.loads(json.dumps(asdict(self.cfg.eval_config())))
        out = self.ws / "eval" / out_name
        key = stable_hash({"cfg": cfg, "replay": self.replay_key(), "reward": reward,
                           "final": final, "code": self.eval_code})  # fmt: skip
        return out, {"spec": spec, "kind": kind, "replay": str(self.replay_dir(reward)),
                     "out": str(out), "final": final, "cfg": cfg,
                     "behaviour": str(self.ws / "study" / "behaviour"), "key": key}  # fmt: skip

    def run_units(self, phase: str, jobs: list[dict[str, Any]]) -> None:
        started = time.perf_counter()
        done, total = 0, len(jobs)
        units = sum(len(j["stack"]) if j.get("stack") else 1 for j in jobs)  # runs in stacks
        stats = {"units": units, "trained": 0, "evaluated": 0, "measured": 0}
        busy = 0.0  # seconds spent inside the units that ran (a cached unit: 0)
        self.emit(phase, 0, total, "starting")

        def record(res: dict[str, Any]) -> None:
            nonlocal done, busy
            done += 1
            busy += float(res.get("seconds") or 0.0)
            stats["trained"] += int(res["trained"] or 0)  # a stack unit: how many runs
            stats["evaluated"] += int(res["evaluated"] or 0)
            stats["measured"] += int(res.get("measured") or 0)
            done_now = [
                res[k]
                for k in ("trained", "evaluated", "measured", "simulated")
                if res.get(k) is not None
            ]
            cached = bool(done_now) and not any(done_now)
            note = "cached" if cached else f"{res['seconds']:.0f} s"
            self.emit(phase, done, total, f"{res['label']} ({note})")

        # units already done with the same keys are recorded here: a resumed or repeated
        # study starts no worker (and no Ray task) for a phase that has nothing left to do
        todo = []
        for job in jobs:
            if unit_done(job):
                record(cached_answer(job))
            else:
                todo.append(job)
        # the worker slots the phase's units could use: the local pool's processes (the study's
        # own process without workers); a Ray cluster's size is not the study's to know
        slots = self.workers if self.cfg.executor == "local" else None
        if self.cfg.executor == "local" and self.workers == 1:
            for job in todo:
                record(execute_unit(job))
        elif todo:
            # with workers, every unit runs in one (a single unit too): the driver stays lean,
            # and a phase that simulates starts on fresh workers, or on workers still lean, so
            # that it does not carry the memory an earlier phase's units left behind
            # (LocalPool.recycle, docs/run.md)
            if self.pool is None:
                self.pool = make_executor(self.cfg.executor, self.workers,
                                          self.ws / "study" / "workers.log",
                                          self.cfg.ray_address,
                                          self.cfg.ray_gpus_per_unit)  # fmt: skip
            elif self.cfg.recycle_workers_above_gib == 0 or any(
                "truths" in j or "population" in j for j in todo
            ):
                # before a phase that simulates (the truth's rollouts and population, about
                # 2.5 GB a unit): no worker brings more than the limit into it. A phase of
                # training and evaluation units keeps its workers: what they hold is what such
                # units use (the FQE's factors, allocator arenas), reused rather than added,
                # and they keep their compiled steps and the FQE's setup
                self.pool.recycle(int(self.cfg.recycle_workers_above_gib * 2**30))
            futures = {self.pool.submit(job): job for job in longest_first(todo)}
            for fut in as_completed(futures):
                try:
                    record(fut.result())
                except StudyError as exc:  # it names the unit
                    raise StudyError(f"{phase}: {exc}") from exc
                except Exception as exc:
                    raise StudyError(
                        f"{phase}: unit {futures[fut]['label']} failed: {exc}"
                    ) from exc
        seconds = time.perf_counter() - started
        stats["seconds"] = round(seconds, 1)
        if todo:
            stats.update(utilisation(busy, seconds, slots))
        self.phases[phase] = stats

    def close(self, abort: bool = False) -> None:
        if self.pool is not None:
            self.pool.close(abort)
            self.pool = None

    def clean_partials(self) -> None:
        """Remove temporary folders left by an interrupted or killed earlier run (only those of
        ended processes)."""
        folders = [self.ws / d for d in ("eval", "study", "runs", "release", "truth", "report")]
        folders += [self.ws / "truth" / "study", self.ws / "truth" / "populations"]
        folders += [p for p in sorted((self.ws / "runs").glob("*")) if p.is_dir()]
        for folder in folders:
            remove_partials(folder)

    # -- phases
    def data(self, source: Path | None) -> Path:
        from sepsisrl.dataset.builder import build

        started = time.perf_counter()
        if source is None:
            source = self.synthetic_world()
        self.emit("build", 0, 1, f"building from {source}")
        summary = build(
            source,
            self.ws,
            self.cfg.build_config(),
            on_stage=lambda stage, status: self.emit("build", 0, 1, f"{stage} {status}"),
        )
        self.emit("build", 1, 1, "done")
        self.phases["data"] = {"seconds": round(time.perf_counter() - started, 1),
                               "counts": summary.report["counts"]}  # fmt: skip
        return source

    def synthetic_world(self) -> Path:
        from sepsisrl.config import config_hash
        from sepsisrl.synth.config import load_synth_config
        from sepsisrl.synth.world import generate_world

        s = self.cfg.synth
        raw = self.ws / "raw"
        synth_cfg = load_synth_config(None, {"charting.density": s.density})
        world = self.ws / "raw_truth" / "world.json"
        if world.is_file():
            doc = read_json(world)
            if (doc["seed"], doc["n_stays"], doc["config_sha256"]) == (
                s.seed, s.stays, config_hash(synth_cfg),
            ):  # fmt: skip
                self.emit("synth", 1, 1, f"{raw} is current (cached)")
                return raw
            raise StudyError(
                f"{raw} holds another synthetic world (seed {doc['seed']}, {doc['n_stays']} "
                f"stays) than this study asks for (seed {s.seed}, {s.stays} stays"
                f"{_config_differences(doc.get('config'), synth_cfg.model_dump(mode='json'))}); "
                "use another --workspace or delete raw/ and raw_truth/"
            )
        self.emit("synth", 0, s.stays, f"simulating {s.stays} ICU stays")
        generate_world(
            raw, s.stays, seed=s.seed, cfg=synth_cfg, overwrite=True,
            progress=lambda d, t: self.emit("synth", d, t, "simulating ICU stays"),
        )  # fmt: skip
        return raw

    def behaviour(self) -> None:

        from sepsisrl.ope.behaviour import BehaviourModel
        from sepsisrl.ope.evaluate import EVAL_REWARD
        from sepsisrl.rl.data import load_meta, load_split

        started = time.perf_counter()
        replay = self.replay_dir(self.cfg.sweep.rewards[0])
        meta = load_meta(replay)
        tr = load_split(replay, "train", EVAL_REWARD, meta)
        folder = self.ws / "study" / "behaviour"
        cfg = self.cfg.eval_config().behaviour
        # the model's key: its resolved config, the train data, the thread count and the code
        device = self.cfg.evaluation.device
        key = stable_hash({"config": json.loads(json.dumps(asdict(cfg))),
                           "train": tr.fingerprint, "threads": self.cfg.threads_per_worker,
                           "code": self.eval_code,
                           **({} if device == "cpu" else {"device": device})})  # fmt: skip
        marker = folder / "study.json"
        if (folder / "behaviour.json").is_file() and marker.is_file():
            info = read_json(folder / "behaviour.json")
            if (info.get("fitted_on", {}).get("fingerprint") == tr.fingerprint
                    and read_json(marker).get("key") == key):  # fmt: skip
                self.emit("behaviour", 1, 1, "cached")
                self.phases["behaviour"] = {"seconds": 0.0, "cached": True}
                return
        self.emit("behaviour", 0, 1, "fitting b(a|s) on train")
        va = load_split(replay, "validation", EVAL_REWARD, meta)
        # fitted with the workers' thread count: float reductions depend on it, and the same
        # study must give the same bytes whatever the calling process's torch setting
        with limited_threads(self.cfg.threads_per_worker):
            model = BehaviourModel.fit(
                tr.states.numpy(), tr.actions.numpy(), va.states.numpy(), va.actions.numpy(),
                meta.n_actions, cfg, tr.fingerprint, device=device,
            )  # fmt: skip
        with atomic_folder(folder) as tmp:
            model.save(tmp)
            write_json(tmp / "study.json", {"key": key})
        self.emit("behaviour", 1, 1, f"{model.kind}, validation log-loss "
                  f"{model.info['validation_log_loss']:.3f}")  # fmt: skip
        self.phases["behaviour"] = {"seconds": round(time.perf_counter() - started, 1),
                                    "kind": model.kind}  # fmt: skip

    def sweep_jobs(self, cands: list[dict[str, Any]], seeds: list[int]) -> list[dict[str, Any]]:
        jobs = []
        for c in cands:
            for seed in seeds:
                run, tspec = self.train_unit(c["name"], c["reward"], seed,
                                             self.cfg.sweep_overrides(c))  # fmt: skip
                _, espec = self.eval_unit(
                    str(run), "run", c["reward"], f"{run.name}-validation", final=False
                )
                c["seeds"].append({"seed": seed, "run": self.rel(run),
                                   "eval": self.rel(espec["out"])})  # fmt: skip
                jobs.append({"label": run.name, "threads": self.cfg.threads_per_worker,
                             "train": tspec, "eval": espec})  # fmt: skip
        return self.stacked(jobs)

    def stacked(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Training jobs whose runs can share a stack (``rl.trainer.stack_problems``), merged
        into one stack unit per worker (a stack trains its runs with batched matrix products;
        each run's weights are those it gets alone, so the cache keys do not change)."""
        from sepsisrl.rl.config import TrainConfig
        from sepsisrl.rl.trainer import STACK_SHARED, stack_problems

        if not self.cfg.stack or not jobs:
            return jobs
        if self.cfg.stack == "auto":
            first = jobs[0]["train"]["config"]
            if first["precision"] == "fp32" and not first["device"].startswith("cuda"):
                return jobs
        groups: dict[str, list[dict[str, Any]]] = {}
        for job in jobs:
            cfg = job["train"]["config"]
            meta = read_json(Path(job["train"]["replay"]) / "meta.json")  # one train size
            key = json.dumps([cfg[k] for k in (*STACK_SHARED, "steps", "epochs")]
                             + [meta["splits"]["train"]["n_transitions"]])  # fmt: skip
            groups.setdefault(key, []).append(job)
        out = []
        for group in groups.values():
            cfgs = [TrainConfig.model_validate(j["train"]["config"]) for j in group]
            if len(group) == 1 or stack_problems(cfgs):
                out += group
                continue
            parts = min(self.workers, len(group))
            for i in range(parts):
                chunk = group[i::parts]  # balanced: sizes differ by at most one
                names = ", ".join(j["label"] for j in chunk)
                out.append({"label": f"stack of {len(chunk)} ({names})",
                            "threads": self.cfg.threads_per_worker,
                            "stack": [j["train"] for j in chunk],
                            "evals": [j["eval"] for j in chunk]})  # fmt: skip
        return out

    def collect(self, cands: list[dict[str, Any]]) -> None:
        estimator = self.cfg.selection.estimator
        for c in cands:
            for row in c["seeds"]:
                doc = EvaluationMetrics.load(self.ws / row["eval"] / "metrics.json")
                if doc.split != "validation":
                    raise StudyError(f"{row['eval']}: selection may only use validation")
                row.update(sel.selection_metrics(doc, estimator))
            sel.aggregate(c, self.cfg.selection)

    def select(self) -> dict[str, Any]:
        rule = self.cfg.selection
        cands = sel.candidates(self.cfg)
        for c in cands:
            c["seeds"], c["stage"] = [], 1
        write_json(self.ws / "study" / "plan.json", {
            "schema_version": "1", "profile": self.cfg.profile,
            "config": self.cfg.model_dump(mode="json"),
            "candidates": [{k: c[k] for k in ("name", "reward", "lr_regime", "iql_setting",
                                              "hyperparameters")} for c in cands],
        })  # fmt: skip
        kept, left = self.halving(cands)
        self.run_units("stage 1", self.sweep_jobs(kept, [self.cfg.sweep.stage1_seed]))
        self.collect(kept)
        ranked = sel.rank(kept)
        finalists = ranked[: rule.finalists]
        for i, c in enumerate(left, len(ranked) + 1):  # after every fully trained candidate
            c["rank"] = i
        ranked += left
        for c in finalists:
            c["stage"] = 2
            c["seeds"] = c["seeds"][:1]
        if self.cfg.sweep.stage2_seeds:
            self.run_units("stage 2", self.sweep_jobs(finalists, self.cfg.sweep.stage2_seeds))
        self.collect(finalists)
        stage1_ranks = {c["name"]: c["rank"] for c in ranked}
        selected = sel.choose(finalists, rule)
        selected["versus_clinicians"] = self.versus_clinicians(finalists, selected)
        for c in cands:
            c["stage1_rank"] = stage1_ranks[c["name"]]
            c.setdefault("stopped_at_step", None)  # successive halving: where it was left
        doc = {
            "schema_version": "1",
            "profile": self.cfg.profile,
            "split": "validation",
            "rule": sel.rule_document(self.cfg),
            "candidates": sorted(cands, key=lambda c: (-c["stage"], c["rank"])),
            "finalists": [c["name"] for c in finalists],
            "finalists_passing_stage1": sum(c["passed"] for c in ranked[: rule.finalists]),
            "selected": selected,
            "halving": self.rungs,
        }
        write_record(Selection, self.ws / "study" / "selection.json", doc)
        return doc

    def halving(self, cands: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list]:
        """Successive halving over stage 1 (``sweep.halving``, :meth:`halve`), keeping at least
        ``selection.finalists``. Returns (the candidates left for the full stage 1, those left
        behind - best first, later rungs first - each with ``stopped_at_step`` and its rung's
        snapshot and evaluation as its seed row). Without halving: (all, [])."""
        h = self.cfg.sweep.halving
        self.rungs = []
        if not h.enabled or h.rungs < 2:
            return cands, []
        seed = self.cfg.sweep.stage1_seed
        units = {
            c["name"]: self.train_unit(c["name"], c["reward"], seed, self.cfg.sweep_overrides(c))
            for c in cands
        }
        kept, left, records = self.halve(
            "stage 1", {"": cands}, units, self.cfg.selection.finalists
        )
        self.rungs = records[""]
        return kept[""], left[""]

    def total_steps(self, tspec: dict[str, Any]) -> int:
        """A training job's gradient steps in full (``steps``, or ``epochs`` over its train
        split)."""
        cfg = tspec["config"]
        if cfg["steps"]:
            return int(cfg["steps"])
        meta = read_json(Path(tspec["replay"]) / "meta.json")
        return int(cfg["epochs"] * (meta["splits"]["train"]["n_transitions"] // cfg["batch_size"]))

    def halve(
        self,
        label: str,
        groups: dict[str, list[dict[str, Any]]],
        units: dict[str, tuple[Path, dict[str, Any]]],
        least: int,
    ) -> tuple[dict[str, list], dict[str, list], dict[str, list[dict[str, Any]]]]:
        """Successive halving (``sweep.halving``), VALIDATION only, over each group of
        candidates (``units``: each candidate's run folder and training job): rung r of R
        trains the candidates still in to eta^(r - R) of their steps (a checkpoint there),
        scores each rung's policy by the selection rule and, per group, stops the evaluable
        ones beaten by the best 1/eta (at least ``least``; ``sel.rung_record``). A group
        with no more candidates than it keeps has no rung: it could stop nobody. Every
        group's rung runs in one phase. Returns, per group, the candidates still in (their
        ``seeds`` emptied), those left behind (best first, later rungs first; each with
        ``stopped_at_step`` and its rung's snapshot and evaluation as its seed row) and the
        rungs' records."""
        h = self.cfg.sweep.halving
        seed = self.cfg.sweep.stage1_seed
        kept = {g: list(cs) for g, cs in groups.items()}
        left: dict[str, list] = {g: [] for g in groups}
        records: dict[str, list[dict[str, Any]]] = {g: [] for g in groups}
        totals = {g: self.total_steps(units[cs[0]["name"]][1]) for g, cs in groups.items() if cs}
        noisy = "spared_within_noise" if h.stop == "credible" else "stopped_within_noise"
        for r in range(1, h.rungs):
            jobs, keeps, steps = [], {}, {}
            for g, cs in kept.items():
                keep = max(least, -(-len(cs) // h.eta))
                if len(cs) <= keep:
                    continue
                keeps[g] = keep
                steps[g] = step = max(1, round(totals[g] * h.eta ** (r - h.rungs)))
                for c in cs:
                    run, tspec = units[c["name"]]
                    snap = run.with_name(f"{run.name}_step{step}")
                    _, espec = self.eval_unit(str(snap), "run", c["reward"],
                                              f"{snap.name}-validation", final=False)  # fmt: skip
                    c["seeds"] = [{"seed": seed, "run": self.rel(snap),
                                   "eval": self.rel(espec["out"])}]  # fmt: skip
                    jobs.append({"label": snap.name, "threads": self.cfg.threads_per_worker,
                                 "train": {**tspec, "pause_at": step, "snapshot": str(snap)},
                                 "eval": espec})  # fmt: skip
            if not jobs:
                continue
            shown = "/".join(str(n) for n in sorted(set(steps.values())))
            phase = f"{label} rung {r}/{h.rungs} ({shown} steps)"
            self.run_units(phase, self.stacked(jobs))
            tally = {"evaluable": 0, "stopped": 0, noisy: 0}
            for g, keep in keeps.items():
                self.collect(kept[g])
                ranked = sel.rank(kept[g])
                record = sel.rung_record(r, h.rungs, steps[g], ranked, keep, self.paired, h.stop)
                records[g].append(record)
                stop = set(record["stopped"])
                tally["evaluable"] += record["passed"]
                tally["stopped"] += len(stop)
                tally[noisy] += len(record["within_noise"])
                for c in ranked:
                    if c["name"] in stop:
                        c["stopped_at_step"] = steps[g]
                left[g] = [c for c in ranked if c["name"] in stop] + left[g]
                kept[g] = [c for c in ranked if c["name"] not in stop]
                for c in kept[g]:
                    c["seeds"] = []
            self.phases[phase].update(tally)
        return kept, left, records

    def paired(self, a: dict[str, Any], b: dict[str, Any]) -> list[float] | None:
        """The paired 95 % CI [estimate, low, high] of candidate ``a``'s value minus ``b``'s
        on validation (their one seed's evaluations), by the selection's estimator when it is
        the FQE (``ope/paired.py``); None otherwise or when not computable."""
        from sepsisrl.ope.paired import paired_fqe

        if self.cfg.selection.estimator != "fqe" or len(a["seeds"]) != 1 or len(b["seeds"]) != 1:
            return None
        ci = paired_fqe(self.ws / a["seeds"][0]["eval"], self.ws / b["seeds"][0]["eval"])
        return None if ci is None else [ci.estimate, ci.low, ci.high]

    def versus_clinicians(
        self, finalists: list[dict[str, Any]], selected: dict[str, Any]
    ) -> dict[str, Any]:
        """The selected configuration against the clinicians, on VALIDATION, by the selection's
        estimator (the clinicians' own logged policy, evaluated by the same code)."""
        chosen = next(c for c in finalists if c["name"] == selected["name"])
        out, espec = self.eval_unit("clinician", "named", chosen["reward"],
                                    "clinician-validation", final=False)  # fmt: skip
        self.run_units("clinicians (validation)", [
            {"label": "clinician", "threads": self.cfg.threads_per_worker, "eval": espec},
            *self.population_job(),
        ])  # fmt: skip
        doc = EvaluationMetrics.load(out / "metrics.json")
        if doc.split != "validation":
            raise StudyError(f"{self.rel(out)}: selection may only use validation")
        clin = sel.selection_metrics(doc, self.cfg.selection.estimator)
        clin["observed_return"] = doc.metrics.observed_return_mean
        # the exported seed's WDR bounds under unobserved confounding (ope/sensitivity.py)
        from sepsisrl.truth.compare import sensitivities_of

        row = next(r for r in chosen["seeds"] if r["run"] == selected["run"])
        exported = EvaluationMetrics.load(self.ws / row["eval"] / "metrics.json")
        sens = sensitivities_of(exported).get(self.cfg.selection.estimator)
        return sel.versus_clinicians(
            chosen, clin, self.cfg.selection.estimator, self.rel(out), sens, selected["run"],
            self.cfg.selection.confounding_lambda,
        )  # fmt: skip

    def final(self, selection: dict[str, Any]) -> dict[str, Any]:
        """The only phase that reads the test split; runs after selection.json is written."""
        sel_path = self.ws / "study" / "selection.json"
        selected = selection["selected"]
        chosen = next(c for c in selection["candidates"] if c["name"] == selected["name"])
        reward = chosen["reward"]
        jobs, baselines = [], []
        evals = []
        for row in chosen["seeds"]:
            run = self.ws / row["run"]
            out, espec = self.eval_unit(str(run), "run", reward, f"{run.name}-test", final=True)
            evals.append(self.rel(out))
            jobs.append({"label": f"{run.name} (test)", "threads": self.cfg.threads_per_worker,
                         "eval": espec})  # fmt: skip
        for name in self.cfg.baselines.named:
            out, espec = self.eval_unit(name, "named", reward, f"{name}-test", final=True)
            baselines.append({"name": name, "kind": "named", "eval": self.rel(out)})
            jobs.append({"label": f"{name} (test)", "threads": self.cfg.threads_per_worker,
                         "eval": espec})  # fmt: skip
        # the candidates' truths need only their runs: they fill the baseline tuning's workers
        # (its stacks are few and uneven) instead of a phase of their own after the final test
        along = self.truth_jobs(self.candidate_policies(selection))
        for name, tuned in self.tune_baselines(reward, along).items():
            run = self.ws / tuned["run"]
            out, espec = self.eval_unit(str(run), "run", reward, f"{run.name}-test", final=True)
            baselines.append({"name": name, "kind": "run", "run": tuned["run"],
                              "eval": self.rel(out), "tuning": tuned})  # fmt: skip
            jobs.append({"label": f"{run.name} (test)", "threads": self.cfg.threads_per_worker,
                         "eval": espec})  # fmt: skip
        # the baselines' truths, measured beside their test evaluations (neither reads the other)
        self.run_units("final test", jobs + self.truth_jobs(self.baseline_policies(baselines)))
        doc = {
            "schema_version": "1",
            "split": "test",
            "selection_sha256": _file_sha(sel_path),
            "selected": {
                "name": selected["name"],
                "seeds": [r["seed"] for r in chosen["seeds"]],
                "runs": [r["run"] for r in chosen["seeds"]],
                "evals": evals,
                "exported_seed": selected["seed"],
            },
            "baselines": baselines,
            "release": f"release/sepsisrl-{selected['name']}",
        }
        write_record(FinalRecord, self.ws / "study" / "final.json", doc)
        return doc

    def tune_baselines(
        self, reward: str, along: list[dict[str, Any]] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Every trained baseline's ``grid`` trained (stage-1 seed) and evaluated on VALIDATION,
        then chosen by the selection rule itself (same estimator, lower bound and gates) - the
        baselines get the tuning the IQL candidates get. Reads no test data. ``along``: other
        units (the candidates' truths) run in the same phase, after the training units."""
        grids: dict[str, list[dict[str, Any]]] = {}
        units: dict[str, tuple[Path, dict[str, Any]]] = {}
        seed = self.cfg.sweep.stage1_seed
        for name, spec in self.cfg.baselines.trained.items():
            fixed = baseline_fixed(spec)
            points = []
            for point in baseline_grid(spec):
                label = "_".join(f"{k.split('.')[-1]}{v:g}" for k, v in point.items())
                unit = f"{fixed['algo']}_{reward}" + (f"_{label}" if label else "")
                units[unit] = self.train_unit(unit, reward, seed, {**fixed, **point,
                                                                   "preset": name})  # fmt: skip
                points.append({"name": unit, "reward": reward, "hyperparameters": point})
            grids[name] = points
        # successive halving (sweep.halving.baselines): each grid halved as stage 1 is
        h = self.cfg.sweep.halving
        left: dict[str, list[dict[str, Any]]] = {name: [] for name in grids}
        rungs: dict[str, list[dict[str, Any]]] = {name: [] for name in grids}
        halved = h.enabled and h.baselines and h.rungs >= 2
        if halved:
            grids, left, rungs = self.halve("baseline tuning", grids, units, 1)
        jobs = []
        for points in grids.values():
            for c in points:
                run, tspec = units[c["name"]]
                _, espec = self.eval_unit(str(run), "run", reward, f"{run.name}-validation",
                                          final=False)  # fmt: skip
                c["seeds"] = [{"seed": seed, "run": self.rel(run),
                               "eval": self.rel(espec["out"])}]  # fmt: skip
                jobs.append({"label": f"{run.name} (baseline tuning)",
                             "threads": self.cfg.threads_per_worker, "train": tspec,
                             "eval": espec})  # fmt: skip
        self.run_units("baseline tuning", self.stacked(jobs) + list(along or []))
        out = {}
        for name, points in grids.items():
            self.collect(points)
            ranked = sel.rank(points)
            for i, c in enumerate(left[name], len(ranked) + 1):  # after every full run
                c["rank"] = i
            ranked += left[name]
            best = ranked[0]
            of = f"the {len(points)} grid point(s)" + (
                f" trained in full ({len(left[name])} more stopped early by successive halving)"
                if left[name]
                else ""
            )
            how = (
                f"{best['name']} passes every gate and has the best validation "
                f"{self.cfg.selection.estimator} 95% CI lower bound of {of}"
                if best["passed"]
                else f"fallback: no grid point of {of} passed every gate; {best['name']} comes "
                f"first in the safety-first order (failed: {', '.join(sel.failed_gates(best))})"
            )
            out[name] = {
                "run": best["seeds"][0]["run"],
                "chosen": best["name"],
                "hyperparameters": best["hyperparameters"],
                "fallback": not best["passed"],
                "reason": how,
                "grid": [{"name": c["name"], "hyperparameters": c["hyperparameters"],
                          "score": c["score"], "estimate": c["estimate"],
                          "gates": c["gates"], "rank": c["rank"],
                          **({"stopped_at_step": c.get("stopped_at_step")} if halved else {})}
                         for c in ranked],
                **({"halving": rungs[name]} if halved else {}),
            }  # fmt: skip
        return out

    def truth(self, selection: dict[str, Any], final: dict[str, Any]) -> dict[str, Any] | None:
        """The true outcome of every candidate run and baseline (synthetic worlds only).

        Its units run once their policies exist, after ``selection.json`` is written: the
        population beside the clinicians' validation evaluation, the candidates' truths beside
        the baseline tuning, the baselines' beside the final test (this phase measures only what
        is left, e.g. on a resumed study). Neither ``selection.json`` nor ``final.json`` reads
        a truth: the selection cannot depend on it. Writes ``study/truth.json``.
        """
        from sepsisrl.truth.compare import (
            compare,
            episode_returns,
            estimates_of,
            intensity_of,
            selection_regret,
            sensitivities_of,
        )
        from sepsisrl.truth.harness import population_for

        t = self.cfg.truth
        ctx = self.truth_context()
        if ctx is None:
            if self._truth_skipped:  # real MIMIC-IV: there is no truth to measure
                self.emit("truth", 1, 1, f"skipped: {self._truth_skipped}")
            return None
        started = time.perf_counter()
        policies = self.candidate_policies(selection) + self.baseline_policies(final["baselines"])
        # normally all measured already, beside the baseline tuning and the final test
        self.run_units("truth", self.truth_jobs(policies))
        pop = population_for(ctx, t.patients, t.seed)  # cached: simulated in an earlier phase
        test_eval = dict(zip(final["selected"]["runs"], final["selected"]["evals"], strict=True))
        for p in policies:
            if p["role"] == "candidate":
                p["test_eval"] = test_eval.get(p["spec"])
        for p in policies:
            doc = read_json(self.ws / p["truth"] / "truth.json")
            p["true_value"] = doc["value"]["mean"]
            p["true_value_ci95"] = doc["value"]["ci95"]
            p["true_mortality_90d"] = doc["mortality_90d"]["mean"]
            p["true_mortality_90d_ci95"] = doc["mortality_90d"]["ci95"]
            p["difference_from_clinicians"] = doc["difference_from_clinicians"]
            for split in ("validation", "test"):
                rel = p.get(f"{split}_eval")
                if rel:
                    ev = EvaluationMetrics.load(self.ws / rel / "metrics.json")
                    p[f"{split}_estimates"] = estimates_of(ev)
                    p[f"{split}_episodes"] = ev.episodes
                    p[f"{split}_sensitivity"] = sensitivities_of(ev)
                    p[f"{split}_intensity"] = intensity_of(
                        self.ws / rel / "cases.csv", ctx.stats.n_fluid_bins
                    )
        cands = [p for p in policies if p["role"] == "candidate"]
        tests = [p for p in policies if p.get("test_estimates")]
        by_config: dict[str, list[float]] = {}
        for p in cands:
            by_config.setdefault(p["candidate"], []).append(p["true_value"])
        config_truth = {k: float(np.mean(v)) for k, v in by_config.items()}
        selected = selection["selected"]
        exported = next(p for p in cands if p["spec"] == selected["run"])
        clinician = read_json(self.ws / policies[0]["truth"] / "truth.json")["clinicians"]
        # per-episode true returns (paired): how far the truth's own ranking can be trusted
        returns = episode_returns({p["name"]: self.ws / p["truth"] for p in policies})
        doc = {
            "schema_version": "1",
            "note": "measured after selection.json was written (the baselines' truths after "
            "their tuning on validation); neither selection.json nor final.json reads it",
            "interface": t.interface,
            "population": {
                "patients": t.patients,
                "seed": t.seed,
                "episodes": pop.episodes().num_rows,
                "folder": self.rel(pop.folder),
            },
            "clinicians": clinician,
            "policies": policies,
            "validation_vs_truth": compare(_rows(cands, "validation_estimates"), returns),
            "test_vs_truth": compare(_rows(tests, "test_estimates"), returns),
            "selection": {
                "selected": selected["name"],
                "selected_true_value": config_truth[selected["name"]],
                "best_candidate": max(config_truth, key=config_truth.get),
                "best_true_value": max(config_truth.values()),
                "regret": selection_regret(config_truth, selected["name"]),
                "exported_run": exported["name"],
                "exported_true_value": exported["true_value"],
                "exported_true_mortality_90d": exported["true_mortality_90d"],
                "candidate_true_values": config_truth,
            },
        }
        write_json(self.ws / "study" / "truth.json", doc)
        self.phases["truth"]["population_and_assembly_seconds"] = round(
            time.perf_counter() - started - self.phases["truth"]["seconds"], 1
        )
        return doc

    def truth_context(self) -> Any:
        """The synthetic world's truth context (``truth/world.py``), loaded once; None when the
        truth is off or the workspace was built from real MIMIC-IV tables."""
        from sepsisrl.truth.world import TruthContext, TruthError

        if not self.cfg.truth.enabled:
            return None
        if self._truth_ctx is None and self._truth_skipped is None:
            try:
                self._truth_ctx = TruthContext.load(self.ws)
            except TruthError as exc:
                self._truth_skipped = str(exc)
        return self._truth_ctx

    def population_job(self) -> list[dict[str, Any]]:
        """The truth's fresh patients as a unit of their own (none without a truth). The
        clinicians' validation phase takes it along: a phase of one evaluation, so the second
        worker would wait, and the truth units would otherwise simulate it first."""
        if self.truth_context() is None:
            return []
        t = self.cfg.truth
        return [{"label": f"truth population ({t.patients} patients)",
                 "threads": self.cfg.threads_per_worker,
                 "population": {"workspace": str(self.ws), "patients": t.patients,
                                "seed": t.seed}}]  # fmt: skip

    def candidate_policies(self, selection: dict[str, Any]) -> list[dict[str, Any]]:
        """Every candidate run of the selection (stopped halving snapshots included), as the
        truth measures it (``test_eval`` is added by :meth:`truth`)."""
        return [{
            "name": Path(row["run"]).name, "kind": "run", "spec": row["run"],
            "role": "candidate", "candidate": c["name"], "stage": c["stage"],
            "seed": row["seed"], "validation_eval": row["eval"], "test_eval": None,
        } for c in selection["candidates"] for row in c["seeds"]]  # fmt: skip

    def baseline_policies(self, baselines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The final record's baselines, as the truth measures them, and the clinicians' own
        (behaviour-cloned) actions drawn at each 4-hour decision and held: what the action
        interface alone costs, beside the clinicians themselves."""
        policies = [{
            "name": b["name"], "kind": b["kind"],
            "spec": b["run"] if b["kind"] == "run" else b["name"], "role": "baseline",
            "test_eval": b["eval"],
        } for b in baselines]  # fmt: skip
        bc = next((b for b in baselines
                   if b["name"] == "behaviour_cloning" and b["kind"] == "run"), None)  # fmt: skip
        if bc is not None:
            policies.append({"name": "clinicians_held_4h", "kind": "held_sample",
                             "spec": bc["run"], "role": "reference"})  # fmt: skip
        return policies

    def truth_jobs(self, policies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The units measuring ``policies``' truths in lockstep groups (none without a truth);
        sets each policy's ``truth`` folder. A unit's key covers the population, the truth's
        code, the build and the policy's weights, so a unit done in an earlier phase or run is
        found done."""
        from sepsisrl.truth.harness import population_folder

        ctx = self.truth_context()
        if ctx is None or not policies:
            return []
        t = self.cfg.truth
        folder = population_folder(ctx, t.patients, t.seed)
        base = stable_hash({"population": folder.name, "code": self.truth_code,
                            "build": ctx.build_fingerprint()})  # fmt: skip
        specs = []
        for p in policies:
            out = self.ws / "truth" / "study" / p["name"]
            p["truth"] = self.rel(out)
            spec = str(self.ws / p["spec"]) if p["kind"] in ("run", "held_sample") else p["spec"]
            specs.append({"workspace": str(self.ws), "kind": p["kind"], "policy": spec,
                          "out": str(out), "patients": t.patients, "seed": t.seed, "key": base,
                          "interface": t.interface, "name": p["name"]})  # fmt: skip
        return truth_units(specs, self.workers, t.lockstep, self.cfg.threads_per_worker)

    def export(self, final: dict[str, Any], selection: dict[str, Any]) -> Path:
        from sepsisrl.release.bundle import export_run

        self.emit("export", 0, 1, "writing the model repository")
        run = self.ws / selection["selected"]["run"]
        truth = self.ws / "truth" / "study" / run.name / "truth.json"
        out = export_run(
            run,
            self.ws / final["release"],
            [self.ws / e for e in final["selected"]["evals"]],
            name=f"sepsisrl-{selection['selected']['name']}",
            overwrite=True,
            truth=truth if (self.ws / "study" / "truth.json").is_file() else None,
            selection={
                "profile": selection["profile"],
                "score": selection["rule"]["score"],
                "candidates": len(selection["candidates"]),
                "finalists": selection["finalists"],
                "halving": selection.get("halving", []),
            },
        )
        self.emit("export", 1, 1, self.rel(out))
        return out

    def report(self) -> Path:
        from sepsisrl.study.report import write_report

        self.emit("report", 0, 1, "rendering")
        folder = write_report(self.ws)
        self.emit("report", 1, 1, self.rel(folder / "index.html"))
        return folder


@holds_lock("workspace", "workspace")  # one writer per workspace; its workers lock only runs
def run_study(
    workspace: str | Path,
    cfg: StudyConfig,
    source: str | Path | None = None,
    on_event: Events | None = None,
) -> StudyResult:
    """Run (or resume) the whole study in ``workspace``; see the module docstring."""
    started = time.perf_counter()
    ws = Path(workspace).absolute()
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "study").mkdir(exist_ok=True)
    study = Study(ws, cfg, on_event)
    study.clean_partials()
    try:
        study.data(Path(source).absolute() if source is not None else None)
        study.behaviour()
        selection = study.select()
        final = study.final(selection)
        study.truth(selection, final)
    except BaseException:
        study.close(abort=True)
        raise
    study.close()
    t = time.perf_counter()
    release = study.export(final, selection)
    report = study.report()
    study.phases["export_report"] = {"seconds": round(time.perf_counter() - t, 1)}
    seconds = time.perf_counter() - started
    write_json(ws / "study" / "run.json", {
        "schema_version": "1", "profile": cfg.profile, "workers": study.workers,
        "seconds": round(seconds, 1), "phases": study.phases,
        "selected": selection["selected"], "machine": machine(),
        "created_by": f"sepsisrl {__version__}",
    })  # fmt: skip
    return StudyResult(ws, selection["selected"], release, report, seconds, study.phases)


def check_compiler(cfg: StudyConfig) -> None:
    """Fail at once, before any work, when the study's IQL runs compile their step on a CPU
    (``train.compile``, set by the card profile) and no C++ compiler is on PATH."""
    train = flatten_dotted(cfg.train)
    if not train.get("compile") or str(train.get("device", "cpu")).startswith("cuda"):
        return
    if cpp_compiler() is None:
        raise StudyError(
            f"train.compile is true (profile {cfg.profile}): torch.compile needs a C++ compiler "
            "on a CPU and none was found ($CXX, g++ or clang++ on PATH). Install one (e.g. "
            "apt-get install g++), or run without it: --set train.compile=false (the same "
            "study, about 1.1x slower to train; docs/run.md)"
        )


__all__ = ["StudyError", "StudyResult", "check_compiler", "run_study"]
