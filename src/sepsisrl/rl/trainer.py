"""Training loop shared by every algorithm: seeding, batch order, metrics, checkpoints, resume.

Reproducibility: ``torch.manual_seed(seed)`` is set *before* the networks are built (so the seed
controls weight initialisation) and a dedicated generator seeded with ``seed`` draws the batch
order (one permutation of the train split per epoch). A checkpoint stores the networks, the
optimisers, that generator's state and the position in the current permutation, so a resumed
run continues to exactly the weights of an uninterrupted one.

Run folder (docs/contracts.md, "Training run")::

    RUN/config.json                     resolved config, replay fingerprint, versions
    RUN/metrics.jsonl                   one line per ``log_every`` steps
    RUN/checkpoints/step_XXXXXXXX/      model.safetensors, optim.safetensors, state.json
    RUN/final/                          model.safetensors (all networks), policy.safetensors
                                        (the network that acts), state.json
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from sepsisrl import __version__
from sepsisrl.locks import clean_temporaries, folder_locks
from sepsisrl.rl.checkpoint import (
    first_nonfinite,
    latest_checkpoint,
    load_checkpoint,
    module_tensors,
    save_checkpoint,
)
from sepsisrl.rl.config import TrainConfig
from sepsisrl.rl.data import Transitions, load_meta, load_split
from sepsisrl.rl.registry import Algorithm, Common, algorithm
from sepsisrl.threads import cpu


class RunExistsError(FileExistsError):
    """The run folder already holds a run (use resume=True or another folder)."""


class TrainingDivergedError(ValueError):
    """A loss or a weight became NaN or inf: the run stops without final/ (not complete)."""


def make_algorithm(
    cfg: TrainConfig,
    state_dim: int,
    n_actions: int,
    gamma: float,
    device: str | torch.device = "cpu",
) -> Algorithm:
    """The configured algorithm (``rl.registry``), its networks built on ``device``."""
    common = Common(state_dim, n_actions, gamma, tuple(cfg.hidden_sizes), cfg.grad_clip, device)
    return algorithm(cfg.algo).create(common, getattr(cfg, cfg.algo))


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    seconds: float
    steps_per_second: float
    resumed_from: int | None
    final_metrics: dict[str, float]
    # with ``compile``: the one-off compilation time, not included in ``seconds``
    compile_seconds: float | None = None


def train(
    replay_dir: str | Path,
    cfg: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    on_log: Callable[[int, int, dict[str, float]], None] | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train ``cfg.algo`` on ``replay_dir``'s train split into ``run_dir``.

    ``stop_after`` ends the loop early (after that many total steps) without writing ``final/``
    - used to simulate an interruption in tests.
    """
    relay = None if on_log is None else (lambda _i, step, total, m: on_log(step, total, m))
    return train_stack([StackMember(replay_dir, cfg, run_dir)], resume, overwrite, relay,
                       stop_after)[0]  # fmt: skip


@dataclass
class StackMember:
    """One run of a stack: its replay, resolved config and run folder."""

    replay_dir: str | Path
    cfg: TrainConfig
    run_dir: str | Path


#: Settings every run of a stack shares (the others - seed, the algorithm's section, preset,
#: reward column, replay - may differ from run to run).
STACK_SHARED = ("algo", "batch_size", "hidden_sizes", "grad_clip", "device", "threads",
                "compile", "precision", "log_every", "checkpoint_every",
                "keep_checkpoints")  # fmt: skip


class StackMemberError(ValueError):
    """Runs of a stack failed (diverged); the others completed."""


@dataclass
class _Run:
    """A run's state while its stack trains."""

    run: Path
    cfg: TrainConfig
    data: Transitions
    order: torch.Generator
    perm: torch.Tensor
    pos: int = 0
    epoch: int = 0
    start: int = 0
    replay_dir: Path | None = None
    meta: Any = None
    checkpoint: Path | None = None
    failed: Exception | None = None
    last: dict[str, float] | None = None


def stack_problems(cfgs: list[TrainConfig]) -> list[str]:
    """Why ``cfgs`` cannot train as one stack ([] when they can)."""
    first = cfgs[0].model_dump(mode="json")
    out = []
    if len(cfgs) > 1 and not algorithm(cfgs[0].algo).stackable:
        out.append(f"algorithm {cfgs[0].algo!r} does not train in stacks")
    for cfg in cfgs[1:]:
        doc = cfg.model_dump(mode="json")
        out += [f"{key} differs ({first[key]!r} vs {doc[key]!r})" for key in STACK_SHARED
                if doc[key] != first[key]]  # fmt: skip
        if (cfg.steps, cfg.epochs) != (cfgs[0].steps, cfgs[0].epochs):
            out.append("the number of steps (steps / epochs) differs")
    return sorted(set(out))


def train_stack(
    members: list[StackMember],
    resume: bool = False,
    overwrite: bool = False,
    on_log: Callable[[int, int, int, dict[str, float]], None] | None = None,
    stop_after: int | None = None,
    on_start: Callable[[int, Path], None] | None = None,
    checkpoint_at_stop: bool = False,
) -> list[TrainResult]:
    """Train several runs of one architecture together, as one stacked model (``IQL.stack``).

    Each run keeps its own seed (initial weights and batch order), hyper-parameters, replay and
    reward column, and writes its own run folder - config, metrics, checkpoints, final weights
    - exactly as :func:`train` would for it alone; its weights are the same bytes (at one torch
    thread; with more, BLAS may split a lone product's sums differently). A run that diverges
    stops (no ``final/``) while the others go on; :class:`StackMemberError` then names it.
    ``on_log(i, step, total, metrics)`` reports run ``i``. Resuming needs every run's newest
    checkpoint at one step (a stack writes them together). ``on_start(i, run_dir)`` is called
    once run ``i``'s folder is set up (a new run's ``config.json`` written, or a checkpoint
    loaded). ``checkpoint_at_stop``: a run stopped early by ``stop_after`` writes a checkpoint
    there (a pause it resumes from, e.g. a rung of successive halving).
    """
    runs = [Path(m.run_dir).absolute() for m in members]
    if len(set(runs)) != len(runs):
        raise ValueError("a stack lists one run folder twice")
    with folder_locks(*((r, "run folder") for r in runs)):
        for r in runs:
            clean_temporaries(r)
        return _train_stack(
            members, runs, resume, overwrite, on_log, stop_after, on_start, checkpoint_at_stop
        )


def _train_stack(
    members, runs, resume, overwrite, on_log, stop_after, on_start, checkpoint_at_stop
) -> list[TrainResult]:
    cfgs = [m.cfg for m in members]
    problems = stack_problems(cfgs)
    if problems:
        raise ValueError(f"these runs cannot train as one stack: {'; '.join(problems)}")
    cfg0 = cfgs[0]
    device = torch.device(cfg0.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA device is available")
    if cfg0.threads:
        torch.set_num_threads(cfg0.threads)
    metas, loaded = [], {}
    for m in members:
        meta = load_meta(m.replay_dir)
        key = (str(Path(m.replay_dir).absolute()), m.cfg.reward_column)
        if key not in loaded:
            loaded[key] = load_split(m.replay_dir, "train", m.cfg.reward_column, meta).to(device)
        metas.append((meta, loaded[key]))
    meta = metas[0][0]
    shapes = {(mt.state_dim, mt.n_actions, mt.gamma, len(d)) for mt, d in metas}
    if len(shapes) > 1:
        raise ValueError("the runs of a stack need replays of one shape (state_dim, n_actions, "
                         f"gamma, train transitions); found {sorted(shapes)}")  # fmt: skip
    n = len(metas[0][1])
    if n < cfg0.batch_size:
        raise ValueError(
            f"train split has {n} transitions, fewer than one batch of {cfg0.batch_size}"
        )
    steps_per_epoch = n // cfg0.batch_size
    total = cfg0.steps or cfg0.epochs * steps_per_epoch

    states: list[_Run] = []
    for m, run, (run_meta, data) in zip(members, runs, metas, strict=True):
        cfg = m.cfg
        checkpoint = latest_checkpoint(run) if resume else None
        if run.exists() and any(run.iterdir()) and not resume:
            if not overwrite:
                raise RunExistsError(
                    f"{run} already holds a run; use --resume to continue it or choose another "
                    "--out"
                )
            shutil.rmtree(run)
        if resume and (run / "final").exists():
            raise RunExistsError(f"{run} is already complete (final/ exists); nothing to resume")
        if checkpoint is not None:  # refuse before touching any tensor
            saved = json.loads((checkpoint / "state.json").read_text())
            if _weights_config(saved["config"]) != _weights_config(cfg.model_dump(mode="json")) or (
                saved["train_fingerprint"] != data.fingerprint
            ):
                raise ValueError(
                    f"{checkpoint}: the run was started with another config or dataset; "
                    f"refusing to resume ({_resume_differences(saved, cfg, data.fingerprint)})"
                )
        order = torch.Generator().manual_seed(cfg.seed)  # batch order (CPU generator)
        states.append(_Run(run, cfg, data, order, torch.randperm(n, generator=order),
                           replay_dir=Path(m.replay_dir).absolute(), meta=run_meta,
                           checkpoint=checkpoint))  # fmt: skip
    steps_at = {s.run.name: int(s.checkpoint.name[5:]) if s.checkpoint else 0 for s in states}
    if len(set(steps_at.values())) > 1:
        raise ValueError(
            "the runs of a stack resume from one step, but their newest checkpoints are at "
            f"{steps_at}; resume them in separate stacks (or alone)"
        )

    models = []
    for i, st in enumerate(states):
        st.run.mkdir(parents=True, exist_ok=True)
        (st.run / "checkpoints").mkdir(exist_ok=True)
        torch.manual_seed(st.cfg.seed)  # before any network is built: it sets initialisation
        model = make_algorithm(st.cfg, meta.state_dim, meta.n_actions, meta.gamma, device)
        if st.checkpoint is not None:
            state, extra = load_checkpoint(st.checkpoint, model.modules(), model.optimizers())
            st.start, st.pos, st.epoch = state["step"], state["position"], state["epoch"]
            st.order.set_state(extra["generator_state"])
            st.perm = extra["permutation"]
            _truncate_metrics(st.run / "metrics.jsonl", st.start)
        else:
            doc = _config_doc(st, total, steps_per_epoch, device, i, len(states))
            (st.run / "config.json").write_text(json.dumps(doc, indent=2) + "\n")
            (st.run / "metrics.jsonl").write_text("")
        if on_start is not None:
            on_start(i, st.run)
        models.append(model)
    spec = algorithm(cfg0.algo)
    algo = models[0] if len(models) == 1 else spec.implementation.stack(models)
    if cfg0.precision == "bf16":
        algo.set_matmul_dtype(torch.bfloat16)
    stacked = spec.stackable

    def batch() -> tuple[torch.Tensor, ...]:
        """The next batch of every run (its own permutation), stacked when the algorithm is."""
        parts = []
        for st in states:
            if st.pos + cfg0.batch_size > n:
                st.perm = torch.randperm(n, generator=st.order)
                st.pos, st.epoch = 0, st.epoch + 1
            idx = st.perm[st.pos : st.pos + cfg0.batch_size].to(device)
            st.pos += cfg0.batch_size
            parts.append(st.data.batch(idx))
        if not stacked:
            return parts[0]
        return tuple(torch.stack(xs) for xs in zip(*parts, strict=True))

    start = states[0].start
    compile_seconds = _compile(algo, states, cfg0, device, stacked) if cfg0.compile else None
    sums: torch.Tensor | None = None  # running sums of the step metrics, (metrics, runs)
    window_start = time.perf_counter()
    started = time.perf_counter()
    end = min(total, stop_after) if stop_after is not None else total
    logs = [open(st.run / "metrics.jsonl", "a") for st in states]  # noqa: SIM115
    try:
        for step in range(start, end):
            metrics = algo.update(*batch())
            step_values = torch.stack(tuple(metrics.values())).view(len(metrics), -1)
            sums = step_values if sums is None else sums.add_(step_values)
            done_steps = step + 1
            if done_steps % cfg0.log_every == 0 or done_steps == total:
                elapsed = time.perf_counter() - window_start
                count = (
                    cfg0.log_every
                    if done_steps % cfg0.log_every == 0
                    else done_steps % cfg0.log_every
                )
                table = sums.t().tolist()
                for i, (st, log) in enumerate(zip(states, logs, strict=True)):
                    if st.failed is not None:
                        continue
                    last = {k: v / count for k, v in zip(metrics, table[i], strict=True)}
                    try:
                        _check_losses(st.run, last, done_steps, count)
                    except TrainingDivergedError as exc:
                        st.failed = exc
                        continue
                    st.last = last
                    line = {"step": done_steps, "epoch": st.epoch}
                    line.update({k: round(v, 6) for k, v in last.items()})
                    line["steps_per_second"] = round(count / max(elapsed, 1e-9), 1)
                    log.write(json.dumps(line) + "\n")
                    log.flush()
                    if on_log:
                        on_log(i, done_steps, total, last)
                _stop_if_all_failed(states)
                sums = None
                window_start = time.perf_counter()
            if done_steps % cfg0.checkpoint_every == 0 and done_steps < total:
                for i, st in enumerate(states):
                    if st.failed is None:
                        _checkpoint(st, algo.member(i) if len(states) > 1 else algo, done_steps)
                _stop_if_all_failed(states)
        if checkpoint_at_stop and start < end < total and end % cfg0.checkpoint_every:
            for i, st in enumerate(states):
                if st.failed is None:
                    _checkpoint(st, algo.member(i) if len(states) > 1 else algo, end)
    finally:
        for log in logs:
            log.close()
    seconds = time.perf_counter() - started
    done = end - start
    results = []
    for i, st in enumerate(states):
        model = algo.member(i) if len(states) > 1 else algo
        if st.failed is None and end > start:  # the steps since the last log line
            try:
                _check_weights(st.run, model, end)
            except TrainingDivergedError as exc:
                st.failed = exc
        if st.failed is None and end == total:
            _write_final(st.run, model, st.cfg, total, st.last or {})
        results.append(TrainResult(
            st.run, end, seconds, done / max(seconds, 1e-9),
            st.start if st.checkpoint else None, st.last or {}, compile_seconds,
        ))  # fmt: skip
    failed = [st for st in states if st.failed is not None]
    if failed and len(states) == 1:
        raise failed[0].failed
    if failed:
        raise StackMemberError(
            f"{len(failed)} of the {len(states)} runs of a stack failed (the others completed): "
            + "; ".join(f"{st.run.name}: {st.failed}" for st in failed)
        )
    return results


def snapshot(run_dir: str | Path, step: int, out: str | Path) -> Path:
    """The policy of ``run_dir`` at its checkpoint of ``step`` as a run folder of its own
    (``config.json`` and ``final/``, as a complete run), written atomically to ``out``: what
    ``sepsisrl evaluate`` and ``sepsisrl truth`` read. Global RNG state is left untouched."""
    from sepsisrl.rl.checkpoint import load_module_tensors, read_tensors
    from sepsisrl.workspace import atomic_folder

    run, out = Path(run_dir), Path(out)
    checkpoint = run / "checkpoints" / f"step_{step:08d}"
    if not (checkpoint / "model.safetensors").is_file():
        raise FileNotFoundError(f"{checkpoint}: no checkpoint of step {step} to take a snapshot of")
    doc = json.loads((run / "config.json").read_text())
    cfg = TrainConfig.model_validate(doc["config"])
    dims = doc["replay"]
    with torch.random.fork_rng(devices=[]):
        algo = make_algorithm(cfg, dims["state_dim"], dims["n_actions"], dims["gamma"])
    model = checkpoint / "model.safetensors"
    load_module_tensors(algo.modules(), read_tensors(model), model)
    with atomic_folder(out) as tmp:
        (tmp / "config.json").write_text(
            json.dumps({**doc, "run_dir": str(out), "snapshot_of": {"run": str(run.absolute()),
                        "step": step}}, indent=2) + "\n"
        )  # fmt: skip
        log = run / "metrics.jsonl"  # the training curve up to the snapshot
        lines = log.read_text().splitlines() if log.is_file() else []
        kept = [x for x in lines if x.strip() and json.loads(x)["step"] <= step]
        (tmp / "metrics.jsonl").write_text("".join(x + "\n" for x in kept))
        _write_final(tmp, algo, cfg, step, {})
    return out


def _stop_if_all_failed(states: list[_Run]) -> None:
    if all(st.failed is not None for st in states):
        if len(states) == 1:
            raise states[0].failed
        raise StackMemberError(
            "every run of the stack diverged: "
            + "; ".join(f"{st.run.name}: {st.failed}" for st in states)
        )


def _checkpoint(st: _Run, model, step: int) -> None:
    try:
        _check_weights(st.run, model, step)
    except TrainingDivergedError as exc:
        st.failed = exc
        return
    save_checkpoint(
        st.run / "checkpoints" / f"step_{step:08d}",
        model.modules(),
        model.optimizers(),
        {"generator_state": st.order.get_state(), "permutation": st.perm},
        {
            "step": step,
            "position": st.pos,
            "epoch": st.epoch,
            "config": st.cfg.model_dump(mode="json"),
            "train_fingerprint": st.data.fingerprint,
        },
    )
    _prune(st.run / "checkpoints", st.cfg.keep_checkpoints)


def _config_doc(st: _Run, total: int, steps_per_epoch: int, device, i: int, k: int):
    cfg, meta = st.cfg, st.meta
    return {
        "schema_version": "1",
        "run_dir": str(st.run),
        "algo": cfg.algo,
        "seed": cfg.seed,
        "preset": cfg.preset,
        "config": cfg.model_dump(mode="json"),
        "total_steps": total,
        "steps_per_epoch": steps_per_epoch,
        "replay": {
            "path": str(st.replay_dir),
            "variant": meta.variant,
            "state_dim": meta.state_dim,
            "n_actions": meta.n_actions,
            "gamma": meta.gamma,
            "feature_names": meta.feature_names,
            "action_labels": meta.doc.action_labels,
            "train_transitions": len(st.data),
            "train_episodes": st.data.n_episodes,
            "train_fingerprint": st.data.fingerprint,
            "source": meta.source(),
        },
        "policy_module": algorithm(cfg.algo).policy_module,
        # trained together with k - 1 other runs (rl.stack); the weights do not depend on it
        "stack": {"runs": k, "position": i},
        "created_by": f"sepsisrl {__version__}",
        "torch": torch.__version__,
        "device": str(device),
        "platform": platform.platform(),
        # the kernels torch dispatched to on this CPU (AVX2, AVX512, ...): the same seed gives
        # the same weights on CPUs with the same capability, not across them (docs/train.md)
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # ... which two different CPUs can share: the CPU itself (threads.cpu)
        "cpu": cpu(),
    }


def _diverged(run: Path, step: int, what: str) -> TrainingDivergedError:
    return TrainingDivergedError(
        f"training diverged at step {step}: {what}. The run {run} is not complete (no final/; "
        "checkpoints before the divergence are kept). Check the replay for extreme state or "
        "reward values, or lower the learning rates; then train again with --overwrite"
    )


def _check_losses(run: Path, window: dict[str, float], step: int, count: int) -> None:
    """Stop on a metric window whose mean is NaN or inf (any step in it was)."""
    bad = [k for k, v in window.items() if not math.isfinite(v)]
    if bad:
        first = next((k for k in bad if k.endswith("loss")), bad[0])
        span = f"step {step}" if count == 1 else f"steps {step - count + 1}..{step}"
        raise _diverged(
            run, step, f"loss {first} is {window[first]} (mean over {span}; non-finite: "
            f"{', '.join(bad)})"
        )  # fmt: skip


def _check_weights(run: Path, algo, step: int) -> None:
    """Stop before a checkpoint or final/ would store NaN or inf weights."""
    bad = first_nonfinite(algo.modules())
    if bad is not None:
        raise _diverged(run, step, f"weight tensor {bad} holds NaN or inf values")


def _compile(algo, states: list[_Run], cfg, device, stacked: bool) -> float:
    """Compile the algorithm's gradient step now, on a batch of the right shape.

    Only gradients are computed (no weight changes), so the run's numbers do not depend on
    it; a failure (e.g. no C++ compiler for torch.compile on CPU) is reported before any
    training step, with what to do instead.
    """
    t0 = time.perf_counter()
    algo.compile_step()
    parts = [st.data.batch(st.perm[: cfg.batch_size].to(device)) for st in states]
    batch = tuple(torch.stack(xs) for xs in zip(*parts, strict=True)) if stacked else parts[0]
    try:
        algo.compute_gradients(*batch)
    except Exception as exc:  # torch.compile raises many types; all mean "cannot compile here"
        raise ValueError(
            f"compile=true: torch.compile failed ({type(exc).__name__}: {str(exc)[:300]}). On "
            "CPU it needs a C++ compiler (g++ or clang++) on PATH; install one, or train "
            "without compile (--set compile=false)."
        ) from exc
    return time.perf_counter() - t0


def _write_final(run: Path, algo, cfg: TrainConfig, total: int, last: dict[str, float]) -> None:
    tmp = run / f".final.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    modules = algo.modules()
    save_file(module_tensors(modules), str(tmp / "model.safetensors"))
    spec = algorithm(cfg.algo)
    policy = spec.policy_module
    exported = getattr(algo, "exported", modules.__getitem__)  # the released layout
    save_file(_tensors(exported(policy)), str(tmp / "policy.safetensors"))
    for name in spec.exports:  # other networks the greedy policy needs (BCQ's behaviour model)
        save_file(_tensors(exported(name)), str(tmp / f"{name}.safetensors"))
    (tmp / "state.json").write_text(
        json.dumps({"step": total, "final_metrics": last, "policy_module": policy}, indent=2) + "\n"
    )
    final = run / "final"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _resume_differences(saved: dict[str, Any], cfg: TrainConfig, fingerprint: str) -> str:
    """Which settings (dotted keys, checkpoint vs now) or which dataset stop a resume."""

    def flat(doc: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(doc, dict):
            return {prefix: doc}
        return {k: v for key, sub in doc.items() for k, v in flat(sub, f"{prefix}{key}.").items()}

    was = flat(_weights_config(saved["config"]))
    now = flat(_weights_config(cfg.model_dump(mode="json")))
    keys = sorted(k for k in was.keys() | now.keys() if was.get(k) != now.get(k))
    found = [f"{k.rstrip('.')}: checkpoint {was.get(k)!r}, now {now.get(k)!r}" for k in keys]
    if saved["train_fingerprint"] != fingerprint:
        found.append("the replay's train split differs from the one the run was started on")
    return "; ".join(found) + "; resume with the same settings, or train again with --overwrite"


#: Settings that do not change the weights; a run may resume with other values for them.
_NON_WEIGHT_SETTINGS = ("threads", "log_every", "checkpoint_every", "keep_checkpoints")


def _weights_config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _NON_WEIGHT_SETTINGS}


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def _prune(folder: Path, keep: int) -> None:
    done = sorted(p for p in folder.glob("step_*") if p.is_dir())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _truncate_metrics(path: Path, step: int) -> None:
    if not path.is_file():
        return
    lines = [
        ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step
    ]
    path.write_text("".join(ln + "\n" for ln in lines))
