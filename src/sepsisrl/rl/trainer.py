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
from sepsisrl.locks import holds_lock
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


@holds_lock("run_dir", "run folder")  # one writer per run folder (sepsisrl.locks)
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
    run = Path(run_dir).absolute()
    meta = load_meta(replay_dir)
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA device is available")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data: Transitions = load_split(replay_dir, "train", cfg.reward_column, meta).to(device)
    n = len(data)
    if n < cfg.batch_size:
        raise ValueError(
            f"train split has {n} transitions, fewer than one batch of {cfg.batch_size}"
        )
    steps_per_epoch = n // cfg.batch_size
    total = cfg.steps or cfg.epochs * steps_per_epoch

    checkpoint = latest_checkpoint(run) if resume else None
    if run.exists() and any(run.iterdir()) and not resume:
        if not overwrite:
            raise RunExistsError(
                f"{run} already holds a run; use --resume to continue it or choose another --out"
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
    run.mkdir(parents=True, exist_ok=True)
    (run / "checkpoints").mkdir(exist_ok=True)

    torch.manual_seed(cfg.seed)  # before any network is built: the seed controls initialisation
    algo = make_algorithm(cfg, meta.state_dim, meta.n_actions, meta.gamma, device)
    order = torch.Generator().manual_seed(cfg.seed)  # batch order (CPU generator, any device)
    perm = torch.randperm(n, generator=order)
    start, pos, epoch = 0, 0, 0
    config_doc = {
        "schema_version": "1",
        "run_dir": str(run),
        "algo": cfg.algo,
        "seed": cfg.seed,
        "preset": cfg.preset,
        "config": cfg.model_dump(mode="json"),
        "total_steps": total,
        "steps_per_epoch": steps_per_epoch,
        "replay": {
            "path": str(Path(replay_dir).absolute()),
            "variant": meta.variant,
            "state_dim": meta.state_dim,
            "n_actions": meta.n_actions,
            "gamma": meta.gamma,
            "feature_names": meta.feature_names,
            "action_labels": meta.doc.action_labels,
            "train_transitions": n,
            "train_episodes": data.n_episodes,
            "train_fingerprint": data.fingerprint,
            "source": meta.source(),
        },
        "policy_module": algorithm(cfg.algo).policy_module,
        "created_by": f"sepsisrl {__version__}",
        "torch": torch.__version__,
        "device": str(device),
        "platform": platform.platform(),
    }
    if checkpoint is not None:
        state, extra = load_checkpoint(checkpoint, algo.modules(), algo.optimizers())
        start, pos, epoch = state["step"], state["position"], state["epoch"]
        order.set_state(extra["generator_state"])
        perm = extra["permutation"]
        _truncate_metrics(run / "metrics.jsonl", start)
    else:
        (run / "config.json").write_text(json.dumps(config_doc, indent=2) + "\n")
        (run / "metrics.jsonl").write_text("")

    compile_seconds = (
        _compile(algo, data, perm[: cfg.batch_size].to(device)) if cfg.compile else None
    )
    sums: torch.Tensor | None = None  # running sums of the step metrics, one vector
    window_start = time.perf_counter()
    started = time.perf_counter()
    last: dict[str, float] = {}
    end = min(total, stop_after) if stop_after is not None else total
    with open(run / "metrics.jsonl", "a") as log:
        for step in range(start, end):
            if pos + cfg.batch_size > n:
                perm = torch.randperm(n, generator=order)
                pos, epoch = 0, epoch + 1
            idx = perm[pos : pos + cfg.batch_size].to(device)
            pos += cfg.batch_size
            metrics = algo.update(*data.batch(idx))
            step_values = torch.stack(tuple(metrics.values()))
            sums = step_values if sums is None else sums.add_(step_values)
            done_steps = step + 1
            if done_steps % cfg.log_every == 0 or done_steps == total:
                elapsed = time.perf_counter() - window_start
                count = (
                    cfg.log_every if done_steps % cfg.log_every == 0 else done_steps % cfg.log_every
                )
                last = {k: v / count for k, v in zip(metrics, sums.tolist(), strict=True)}
                _check_losses(run, last, done_steps, count)
                line = {"step": done_steps, "epoch": epoch}
                line.update({k: round(v, 6) for k, v in last.items()})
                line["steps_per_second"] = round(count / max(elapsed, 1e-9), 1)
                log.write(json.dumps(line) + "\n")
                log.flush()
                sums = None
                window_start = time.perf_counter()
                if on_log:
                    on_log(done_steps, total, last)
            if done_steps % cfg.checkpoint_every == 0 and done_steps < total:
                _check_weights(run, algo, done_steps)
                save_checkpoint(
                    run / "checkpoints" / f"step_{done_steps:08d}",
                    algo.modules(),
                    algo.optimizers(),
                    {"generator_state": order.get_state(), "permutation": perm},
                    {
                        "step": done_steps,
                        "position": pos,
                        "epoch": epoch,
                        "config": cfg.model_dump(mode="json"),
                        "train_fingerprint": data.fingerprint,
                    },
                )
                _prune(run / "checkpoints", cfg.keep_checkpoints)
    seconds = time.perf_counter() - started
    done = end - start
    if end > start:  # the steps since the last log line are not checked by it
        _check_weights(run, algo, end)
    if end == total:
        _write_final(run, algo, cfg, total, last)
    return TrainResult(
        run, end, seconds, done / max(seconds, 1e-9), start if checkpoint else None, last,
        compile_seconds,
    )  # fmt: skip


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


def _compile(algo, data: Transitions, idx: torch.Tensor) -> float:
    """Compile the algorithm's gradient step now, on a batch of the right shape.

    Only gradients are computed (no weight changes), so the run's numbers do not depend on
    it; a failure (e.g. no C++ compiler for torch.compile on CPU) is reported before any
    training step, with what to do instead.
    """
    t0 = time.perf_counter()
    algo.compile_step()
    try:
        algo.compute_gradients(*data.batch(idx))
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
    save_file(_tensors(modules[policy]), str(tmp / "policy.safetensors"))
    for name in spec.exports:  # other networks the greedy policy needs (BCQ's behaviour model)
        save_file(_tensors(modules[name]), str(tmp / f"{name}.safetensors"))
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
