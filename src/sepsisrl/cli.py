"""The ``sepsisrl`` command line.

RESEARCH ONLY - nothing this tool produces is clinical decision support.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sepsisrl import __version__, locks
from sepsisrl.config import ConfigError
from sepsisrl.workspace import atomic_folder, remove_partials

RESEARCH_ONLY = (
    "RESEARCH ONLY: sepsisrl and every policy it produces are research artifacts for "
    "retrospective offline-RL studies. They are not clinical decision support and must "
    "never be used for diagnosis, treatment, triage or any patient care."
)

app = typer.Typer(
    name="sepsisrl",
    help=(
        "From raw MIMIC-IV tables (or the bundled synthetic MIMIC-IV world) to an evaluated "
        f"offline-RL sepsis treatment policy.\n\n{RESEARCH_ONLY}"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)


class UserError(Exception):
    """An error the user can fix; printed without a traceback, exit status 2."""


def _fail(exc: Exception) -> UserError:
    """The user error for a caught exception (a damaged JSON file is named)."""
    if isinstance(exc, json.JSONDecodeError):
        return UserError(_user_message(exc) or str(exc))
    return UserError(str(exc))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sepsisrl {__version__}")
        raise typer.Exit()


#: ``--debug`` / SEPSISRL_DEBUG=1: print the traceback of every error.
#: The policy options of ``evaluate`` and ``truth`` (exactly one of them is given).
RunOption = Annotated[Path | None, typer.Option("--run", help="A training run folder.")]
BundleOption = Annotated[
    Path | None, typer.Option("--bundle", help="An exported model repository.")
]
PolicyOption = Annotated[
    str | None,
    typer.Option(
        "--policy", help="clinician | no_treatment | random | constant:K | rule:map_lactate"
    ),
]
D3rlpyOption = Annotated[
    Path | None,
    typer.Option(
        "--d3rlpy",
        help="A saved d3rlpy discrete-action model (.d3, algo.save); needs the d3rlpy extra "
        "(docs/d3rlpy.md).",
    ),
]

_OPTIONS = {"debug": False}


@app.callback()
def _main(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help="Print the full traceback of any error (or set SEPSISRL_DEBUG=1)."
        ),
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="When another sepsisrl command is writing the same workspace or folder, wait "
            "for it to finish instead of stopping.",
        ),
    ] = False,
) -> None:
    """sepsisrl command line."""
    _OPTIONS["debug"] = debug or _OPTIONS["debug"]
    locks.WAIT = wait
    if ctx.invoked_subcommand:
        locks.COMMAND = f"sepsisrl {ctx.invoked_subcommand}"
    locks.NOTE = lambda message: err.print(
        f"note: {escape(message)}", highlight=False, soft_wrap=True
    )


#: What an interrupted command leaves and how to go on (exit status 130).
_RESUMABLE = (
    "interrupted; finished stages are kept and the unfinished one was discarded; run the same "
    "command again to resume"
)
_ATOMIC = "interrupted; no half-written output was kept; run the same command again to redo it"
_STUDY = (
    "interrupted: finished units are kept, unfinished ones were discarded or checkpointed; run "
    "the same command again to resume"
)
INTERRUPTED = {
    "build": _RESUMABLE,
    "run": _STUDY,
    "train": "interrupted; the run folder keeps its last checkpoint; run the same command again "
    "with --resume to resume from it",
}


def command(**kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``app.command`` whose interrupt (Ctrl-C, SIGINT, SIGTERM) prints what was kept and how to
    go on, then exits with status 130 (typer would exit 130 silently)."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        message = INTERRUPTED.get(fn.__name__, _ATOMIC)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            try:
                result = fn(*args, **kw)
            except KeyboardInterrupt:
                err.print(message, highlight=False, soft_wrap=True)
                raise typer.Exit(130) from None
            except Exception as exc:
                if _is_duckdb_interrupt(exc):
                    err.print(message, highlight=False, soft_wrap=True)
                    raise typer.Exit(130) from None
                raise
            if _SIGNALLED["hit"]:  # raised where Python could only print "Exception ignored"
                err.print(message, highlight=False, soft_wrap=True)
                raise typer.Exit(130)
            return result

        return app.command(**kwargs)(wrapper)

    return decorate


def _is_duckdb_interrupt(exc: BaseException) -> bool:
    """An error that only reports an interrupt: DuckDB turns a signal that arrives during a
    query into ``RuntimeError('Query interrupted')`` (or ``duckdb.InterruptException``)."""
    if _SIGNALLED["hit"]:
        return True
    duckdb = sys.modules.get("duckdb")
    if duckdb is not None and isinstance(exc, duckdb.InterruptException):
        return True
    return isinstance(exc, RuntimeError) and str(exc).strip() == "Query interrupted"


@contextlib.contextmanager
def _writing(*folders: tuple[Path, str]):
    """Hold the one-writer lock of each (folder, what) and remove the temporaries that killed
    earlier commands left next to them."""
    try:
        with locks.folder_locks(*folders):
            for folder, _ in folders:
                folder = folder.absolute()
                remove_partials(folder.parent, (folder.name,))
            yield
    except locks.FolderLockedError as exc:
        raise UserError(str(exc)) from None


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set expects KEY=VALUE (e.g. charting.density=0.5), got {item!r}")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw)
    return out


@command()
def synth(
    out: Annotated[
        Path, typer.Option("--out", help="Folder to write the MIMIC-IV tree (hosp/, icu/) into.")
    ],
    stays: Annotated[
        int, typer.Option("--stays", min=1, help="Number of ICU stays to simulate.")
    ] = 2000,
    seed: Annotated[
        int, typer.Option("--seed", help="Random seed; the same seed gives the same bytes.")
    ] = 0,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML file overriding configs/synth.yaml.")
    ] = None,
    density: Annotated[
        float | None,
        typer.Option(
            "--density",
            min=0.0,
            help="Charting density: 1.0 adds unrelated items for MIMIC-like chartevents volume "
            "(about 4,600 rows per ICU stay); 0 charts physiology items only.",
        ),
    ] = None,
    truth: Annotated[
        Path | None,
        typer.Option(
            "--truth", help="Ground-truth sidecar folder (default: <out>_truth, next to --out)."
        ),
    ] = None,
    hourly_truth: Annotated[
        bool, typer.Option(help="Write the hourly latent trajectories into the sidecar.")
    ] = True,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override one config value, e.g. --set population.age_mean=70."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing output folders.")] = False,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=0,
            help="Processes simulating chunks side by side (0: one per CPU core, at most 4; "
            "1: none), for large worlds (docs/synthetic_world.md); the files are the same "
            "bytes with any number.",
        ),
    ] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Simulate a synthetic MIMIC-IV world (v3.1 layout) with a ground-truth sidecar.

    The world stands in for MIMIC-IV when you have no credentialed access: the same \
pipeline runs on it, and its known causal model lets you check cohort extraction, \
off-policy estimates and true policy value.
    """
    from sepsisrl.synth.config import load_synth_config
    from sepsisrl.synth.world import WorldExistsError, default_truth_dir, generate_world

    overrides = _parse_overrides(set_ or [])
    if density is not None:
        overrides["charting.density"] = density
    try:
        cfg = load_synth_config(config, overrides)
        sidecar = truth if truth is not None else default_truth_dir(out.absolute())
        with (
            _writing((out, "output folder"), (sidecar, "truth folder")),
            _progress(quiet) as progress,
        ):
            task = progress.add_task("simulating ICU stays", total=stays)
            summary = generate_world(
                out,
                stays,
                seed=seed,
                cfg=cfg,
                truth_dir=truth,
                overwrite=overwrite,
                hourly_truth=hourly_truth,
                progress=lambda done, total: progress.update(task, completed=done),
                workers=workers,
            )
    except (ConfigError, WorldExistsError, ValueError) as exc:
        raise _fail(exc) from exc
    typer.echo(json.dumps(summary.to_json(), indent=2))


@command()
def build(
    source: Annotated[
        Path,
        typer.Option("--source", help="MIMIC-IV folder (hosp/, icu/; csv.gz, csv or parquet)."),
    ],
    workspace: Annotated[Path, typer.Option("--workspace", help="Study workspace to build into.")],
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML file overriding configs/build.yaml.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override one config value, e.g. --set split.seed=7."),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Re-run every stage even when its cache is current.")
    ] = False,
    allow_missing: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-missing",
            metavar="TABLE",
            help="Build even though TABLE (e.g. chartevents) has no data rows or its core "
            "features are nearly never observed; the summary, report and model card then carry "
            "a warning. Repeatable; adds to source.allow_missing.",
        ),
    ] = None,
    conventions: Annotated[
        str | None,
        typer.Option(
            "--conventions",
            metavar="PROFILE",
            help="Clinical conventions profile: mimic-code (the default: MIT-LCP mimic-code's "
            "definitions) or legacy (sepsisrl's earlier ones). Sets every convention switch "
            "(docs/build.md); --set then changes single ones.",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only print the summary.")] = False,
) -> None:
    """Build leakage-safe replay datasets from raw MIMIC-IV tables (or a synthetic world).

    Stages: ingest, measurements, sepsis (suspicion, hourly SOFA, onset), cohort, episodes \
(4 h grid), splits, actions (5 x 5), features (62), replay (sparse, sofa_shaped, \
sofa_state_shaped, full_shaped) and a leakage audit that fails the build on any violation. \
Each stage is cached by its inputs and config and written atomically; rerunning skips what \
is current. A raw table \
without data rows, or a core feature (MAP, heart rate, GCS, ...) without a value in nearly \
every decision window, stops the build unless --allow-missing names its table.
    """
    from sepsisrl.dataset.builder import build as run_build
    from sepsisrl.dataset.config import load_build_config
    from sepsisrl.dataset.leakage import LeakageError
    from sepsisrl.dataset.measurements import UnitError
    from sepsisrl.mimic.source import SourceError

    def report(stage: str, status: str) -> None:
        if not quiet and status != "start":
            err.print(f"  {stage:<13} {status}", highlight=False)

    try:
        overrides = _parse_overrides(set_ or [])
        if conventions is not None:
            from sepsisrl.dataset.conventions import profile_overrides

            overrides = {**profile_overrides(conventions), **overrides}
        cfg = load_build_config(config, overrides)
        if allow_missing:
            tables = list(dict.fromkeys([*cfg.source.allow_missing, *allow_missing]))
            cfg = load_build_config(config, {**overrides, "source.allow_missing": tables})
        if not quiet:
            err.print(f"building {workspace} from {source}", highlight=False)
        with _writing((workspace, "workspace")):
            summary = run_build(source, workspace, cfg, force=force, on_stage=report)
    except (ConfigError, SourceError, UnitError, LeakageError, ValueError) as exc:
        raise _fail(exc) from exc
    for warning in summary.report["warnings"]:
        err.print(
            f"[bold yellow]WARNING:[/] [yellow]{escape(warning['message'])}[/]", soft_wrap=True
        )
    expected = summary.report["expected"]
    if expected["applies"]:
        for name, check in expected["checks"].items():
            if check["within_expected"] is False:
                lo, hi = check["expected_full_mimic_iv"]
                err.print(
                    f"[yellow]warning:[/] {name} = {check['count']:,}; full MIMIC-IV "
                    f"v{expected['version']} gives {lo:,}-{hi:,}. Expected for a subset; "
                    "otherwise check the source tables and the config.",
                    highlight=False,
                )
    typer.echo(
        json.dumps(
            {
                k: summary.report[k]
                for k in ("counts", "leakage_audit", "conventions", "warnings", "seconds")
            },
            indent=2,
        )
    )


@command()
def train(
    replay: Annotated[
        Path, typer.Option("--replay", help="Replay folder (e.g. workspace/replay/sofa_shaped).")
    ],
    algo: Annotated[
        str | None,
        typer.Option("--algo", help="iql | cql | bcq | bc (default: iql, or the preset's)."),
    ] = None,
    preset: Annotated[
        str | None, typer.Option("--preset", help="Named configuration from configs/train.yaml.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed for weight initialisation and batch order.")
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option("--steps", min=1, help="Gradient steps (overrides the epoch count)."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML file overriding configs/train.yaml.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override one value, e.g. --set iql.expectile=0.8."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Run folder (default: <workspace>/runs/<run id>).")
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu | cuda | cuda:N")] = None,
    compile_: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="IQL: torch.compile the gradient step (compiles once, then faster steps; "
            "on CPU needs a C++ compiler).",
        ),
    ] = False,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run from its last checkpoint.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run folder.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train an offline RL policy (discrete IQL, CQL, BCQ or behaviour cloning) on a replay dataset.

    Works on any dataset that follows the replay contract (any state_dim, any n_actions). The run \
folder holds config.json, metrics.jsonl, safetensors checkpoints (optimiser state included) \
and final/. RESEARCH ONLY: the resulting policy is not clinical decision support.
    """
    from sepsisrl.rl.config import load_train_config
    from sepsisrl.rl.data import ReplayError, load_meta
    from sepsisrl.rl.trainer import RunExistsError
    from sepsisrl.rl.trainer import train as run_train

    overrides = _parse_overrides(set_ or [])
    for key, value in (("algo", algo), ("seed", seed), ("steps", steps), ("device", device)):
        if value is not None:
            overrides[key] = value
    if compile_:
        overrides["compile"] = True
    try:
        cfg = load_train_config(config, preset, overrides)
        meta = load_meta(replay)
        if out is None:
            workspace = replay.absolute().parent.parent
            name = cfg.preset or cfg.algo
            out = workspace / "runs" / f"{name}_{meta.variant}_seed{cfg.seed}"
        with _progress(quiet) as progress:
            task = progress.add_task(f"training {cfg.algo}", total=None)

            def on_log(step: int, total: int, metrics: dict[str, float]) -> None:
                losses = "  ".join(f"{k}={v:.3g}" for k, v in metrics.items() if k.endswith("loss"))
                progress.update(
                    task, completed=step, total=total, description=f"{cfg.algo} {losses}"
                )

            result = run_train(replay, cfg, out, resume=resume, overwrite=overwrite, on_log=on_log)
    except (ConfigError, ReplayError, RunExistsError, ValueError) as exc:
        raise _fail(exc) from exc
    typer.echo(json.dumps({
        "run_dir": str(result.run_dir), "steps": result.steps, "seconds": round(result.seconds, 1),
        "steps_per_second": round(result.steps_per_second, 1), "resumed_from": result.resumed_from,
        "compile_seconds": result.compile_seconds and round(result.compile_seconds, 1),
        "final_metrics": result.final_metrics,
    }, indent=2))  # fmt: skip


@command()
def evaluate(
    replay: Annotated[
        Path, typer.Option("--replay", help="Replay folder (e.g. workspace/replay/sofa_shaped).")
    ],
    run: RunOption = None,
    bundle: BundleOption = None,
    policy: PolicyOption = None,
    d3rlpy_model: D3rlpyOption = None,
    final: Annotated[
        bool,
        typer.Option(
            "--final", help="Evaluate the TEST split (once, at the end); recorded in the run."
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output folder (default: <workspace>/eval/<name>-<split>)."),
    ] = None,
    resamples: Annotated[
        int | None,
        typer.Option(
            "--resamples",
            min=100,
            help="Patient bootstrap resamples (default: configs/evaluate.yaml "
            "bootstrap_resamples).",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            help="Bootstrap and model-fitting seed (default: configs/evaluate.yaml bootstrap_seed "
            "and seed).",
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help="Where the behaviour model trains and the FQE solves: cpu (default: "
            "configs/evaluate.yaml device) or cuda[:N]; on a GPU the numbers agree with the "
            "CPU's to rounding. The project never needs a GPU.",
        ),
    ] = None,
) -> None:
    """Off-policy evaluation and safety review of one policy (validation split; test with --final).

    Behaviour model fit on train (chosen by validation log-loss), WIS / per-decision WIS / ESS \
with patient-bootstrap CIs, FQE fitted on train, clinician agreement, support, severe safety \
flags, subgroups and action heatmaps (vasopressor x fluid bins). RESEARCH ONLY.
    """
    from sepsisrl.interop.d3rlpy import D3rlpyMissingError
    from sepsisrl.ope.evaluate import EvalConfig, EvaluationError, record_final_folder
    from sepsisrl.ope.evaluate import evaluate as run_eval
    from sepsisrl.rl.data import ReplayError

    chosen = [x for x in (run, bundle, d3rlpy_model, policy) if x is not None]
    if len(chosen) != 1:
        raise UserError("give exactly one of --run, --bundle, --d3rlpy or --policy")
    cfg = EvalConfig()  # configs/evaluate.yaml
    if resamples is not None:
        cfg = dataclasses.replace(cfg, bootstrap_resamples=resamples)
    if seed is not None:
        cfg = dataclasses.replace(cfg, bootstrap_seed=seed, seed=seed)
    if device is not None:
        try:
            cfg = dataclasses.replace(cfg, device=device)
        except ValueError as exc:
            raise UserError(f"--device {device}: {exc}") from exc
    kind = "run" if run is not None else ("bundle" if bundle is not None else "named")
    kind = "d3rlpy" if d3rlpy_model is not None else kind
    spec = chosen[0]
    name = Path(spec).name if kind != "named" else str(spec).replace(":", "-")
    split = "test" if final else "validation"
    if out is None:
        out = replay.absolute().parent.parent / "eval" / f"{name}-{split}"
    # a final evaluation of a run also appends to the run's final_evaluation.json
    folders = [(out, "evaluation folder")]
    if final and run is not None:
        folders.append((run, "run folder"))
    try:
        # written to a temporary sibling and renamed into place: a failed or interrupted
        # evaluation leaves no folder without metrics.json
        with _writing(*folders), atomic_folder(out) as tmp:
            doc = run_eval(
                spec,
                replay,
                tmp,
                kind=kind,
                final=final,
                cfg=cfg,
            )
            if final and run is not None:
                record_final_folder(run, tmp, out)
    except (EvaluationError, ReplayError, FileNotFoundError, ValueError, D3rlpyMissingError) as exc:
        raise _fail(exc) from exc
    # the bias bounds under unobserved confounding, [Lambda, low, high] (docs/evaluate.md)
    sensitivity = {
        est: [[b["lambda"], round(b["low"], 3), round(b["high"], 3)] for b in sens["bounds"]]
        for est in ("fqe", "wdr")
        if (sens := doc[est].get("sensitivity"))
    }
    summary = {"out": str(out), "split": doc["split"], "metrics": doc["metrics"],
               "sensitivity": sensitivity}  # fmt: skip
    typer.echo(json.dumps(summary, indent=2))


@command()
def truth(
    workspace: Annotated[
        Path, typer.Option("--workspace", help="A workspace built from a synthetic world.")
    ],
    run: RunOption = None,
    bundle: BundleOption = None,
    policy: PolicyOption = None,
    d3rlpy_model: D3rlpyOption = None,
    patients: Annotated[
        int, typer.Option("--patients", min=1, help="Fresh patients to simulate.")
    ] = 2000,
    seed: Annotated[
        int,
        typer.Option("--seed", help="Seed of the fresh patients (disjoint from the world's)."),
    ] = 0,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output folder (default: <workspace>/truth/<name>-s<seed>)."),
    ] = None,
    interface: Annotated[
        str,
        typer.Option(
            "--interface",
            help="How an action reaches the patient: 'held' (the bins' representative doses for "
            "4 h) or 'titrated' (the simulated team titrates hourly inside the policy's bins: "
            "what a logged 4-hour action records). See docs/truth.md.",
        ),
    ] = "held",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """The TRUE 90-day mortality and value of a policy in the synthetic world.

    Fresh patients of the workspace's world (never its training patients) are simulated under \
the clinicians and built with the workspace's configuration to find the cohort and each \
episode's decision grid; then the same patients are simulated again with the policy deciding \
on that grid from states computed by the build's own state function. Writes truth.json: \
mortality and value with 95 % CIs and the paired difference from the clinicians. Only for \
synthetic worlds. RESEARCH ONLY.
    """
    from sepsisrl.interop.d3rlpy import D3rlpyMissingError
    from sepsisrl.truth.harness import compute_truth
    from sepsisrl.truth.policies import PolicySpecError, world_policy
    from sepsisrl.truth.rollout import INTERFACES
    from sepsisrl.truth.world import TruthContext, TruthError

    try:
        ctx = TruthContext.load(workspace)
        pol = world_policy(
            policy, run, bundle, ctx.feature_names, ctx.n_actions, seed, workspace=ctx.workspace,
            d3rlpy=d3rlpy_model,
        )  # fmt: skip
    except (TruthError, PolicySpecError, D3rlpyMissingError) as exc:
        raise _fail(exc) from exc
    name = pol.name.replace(":", "-")
    if interface not in INTERFACES:
        raise _fail(
            TruthError(f"--interface: expected one of {list(INTERFACES)}, got {interface!r}")
        )
    suffix = "" if interface == "held" else f"-{interface}"
    out = out or ctx.workspace / "truth" / f"{name}-s{seed}-n{patients}{suffix}"
    with _writing((out, "truth output folder")), _progress(quiet) as bar:
        tasks: dict[str, Any] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(f"{phase} (patients)", total=total)
            bar.update(tasks[phase], completed=done)

        try:
            doc = compute_truth(workspace, pol, out, patients, seed, ctx=ctx, progress=progress,
                                interface=interface)  # fmt: skip
        except (TruthError, PolicySpecError) as exc:
            raise _fail(exc) from exc
    keys = ("policy", "interface", "episodes", "mortality_90d", "value", "clinicians",
            "difference_from_clinicians", "realised_action_agreement")  # fmt: skip
    typer.echo(json.dumps({"out": str(out), **{k: doc[k] for k in keys}}, indent=2))


@command()
def reference(
    workspace: Annotated[
        Path, typer.Option("--workspace", help="A workspace built from a synthetic world.")
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override configs/reference.yaml, e.g. --set rounds=4."),
    ] = None,
    truth_patients: Annotated[
        int | None,
        typer.Option(
            "--truth-patients",
            min=1,
            help="Patients of the truth measurement (default: the study's truth population, "
            "study/truth.json, so the report pairs them; without a study configs/study.yaml's).",
        ),
    ] = None,
    truth_seed: Annotated[
        int | None,
        typer.Option("--truth-seed", help="Seed of the truth population (default: the study's)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output folder (default: <workspace>/reference/online_dqn)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress messages.")] = False,
) -> None:
    """How good could a policy be? An online agent (double DQN) trained IN the synthetic world.

    Rounds of fresh patients simulated with the agent deciding (epsilon-greedy) at the \
replay's decision times, learning after each round from every transition so far (and the \
replay's train split); then its TRUE value on the truth population, paired with the \
clinicians'. The study report shows it as the headroom over the clinicians. Settings: \
configs/reference.yaml. Only for synthetic worlds. RESEARCH ONLY.
    """
    from sepsisrl.config import ConfigError, validate_dataclass
    from sepsisrl.env.reference import ReferenceConfig, train_reference
    from sepsisrl.truth.world import TruthError

    try:
        cfg = validate_dataclass(ReferenceConfig, _parse_overrides(set_ or []), "reference")
    except ConfigError as exc:
        raise _fail(exc) from exc
    target = out or workspace / "reference" / "online_dqn"
    with _writing((target, "reference folder")):
        try:
            summary = train_reference(
                workspace, cfg, target, truth_patients, truth_seed,
                progress=None if quiet else lambda m: typer.echo(m, err=True),
            )  # fmt: skip
        except TruthError as exc:
            raise _fail(exc) from exc
    typer.echo(json.dumps({"out": str(target), **summary}, indent=2))


@command()
def summarize(
    evals: Annotated[
        list[Path], typer.Argument(help="Evaluation folders (one per seed) of one split.")
    ],
    out: Annotated[Path | None, typer.Option("--out", help="Write the summary JSON here.")] = None,
) -> None:
    """Mean and standard deviation over seeds of every metric, in the model card's table layout."""
    from sepsisrl.ope.summary import card_table
    from sepsisrl.ope.summary import summarize as run_summary

    try:
        summary = run_summary(evals)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(exc) from exc
    if out is not None:
        out.write_text(json.dumps(summary, indent=2) + "\n")
    typer.echo(card_table(summary))


@command()
def export(
    run: Annotated[Path, typer.Option("--run", help="A completed training run (IQL or BC).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the model repository.")],
    eval_: Annotated[
        list[Path] | None,
        typer.Option(
            "--eval",
            help="Evaluation folder(s) for the card metrics (one per seed; default: the run's).",
        ),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Model name in the card.")] = None,
    push: Annotated[
        str | None,
        typer.Option(
            "--push",
            help='Also upload to this Hugging Face repo id (pip install "sepsisrl[hub]").',
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    truth: Annotated[
        Path | None,
        typer.Option(
            "--truth", help="The run's truth.json (sepsisrl truth), shown in the card (synthetic)."
        ),
    ] = None,
) -> None:
    """Write a Hugging Face model repository from a run: model.safetensors, config.json, \
modeling_iql.py, requirements.txt, LICENSE.md and a model card rendered from measured metrics.

    RESEARCH ONLY: the exported policy is not clinical decision support.
    """
    from sepsisrl.release.bundle import ExportError, export_run, push_to_hub
    from sepsisrl.release.hub import check_card

    try:
        with _writing((out, "output folder")):
            folder = export_run(run, out, eval_, name, overwrite, truth=truth)
        # the card's Hub metadata, parsed offline by huggingface_hub (a note when not installed)
        card = check_card(folder)
        pushed = push_to_hub(folder, push) if push else None
    except (ExportError, FileNotFoundError, ValueError) as exc:
        raise _fail(exc) from exc
    typer.echo(
        json.dumps(
            {
                "out": str(folder),
                "files": sorted(p.name for p in folder.iterdir()),
                "card_metadata": card,
                "pushed": pushed,
            },
            indent=2,
        )
    )


@command()
def run(
    source: Annotated[
        Path | None,
        typer.Option(
            "--source",
            help="MIMIC-IV folder (hosp/, icu/). Without it a synthetic world is simulated into "
            "<workspace>/raw.",
        ),
    ] = None,
    profile: Annotated[
        str, typer.Option("--profile", help="quick (about 2k stays, minutes) | card (200 epochs).")
    ] = "quick",
    workspace: Annotated[
        Path, typer.Option("--workspace", help="Study workspace (created if missing).")
    ] = Path("workspace"),
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML file overriding configs/study.yaml.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override one value, e.g. --set selection.finalists=2."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=0, help="Parallel processes (0: min(2, CPU cores))."),
    ] = None,
    executor: Annotated[
        str | None,
        typer.Option(
            "--executor",
            metavar="[local|ray]",
            help="Where units run: local (--workers processes, the default) or ray (a Ray "
            "cluster; Ray is optional: pip install 'sepsisrl\\[ray]'). Same results either way.",
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            help="With --executor ray: the Ray cluster, e.g. ray://host:10001 or auto (default: "
            "a local Ray instance).",
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help="Where runs train and evaluations fit their behaviour model and FQE: cpu "
            "(default) or cuda[:N] (train.device and evaluation.device). The project never "
            "needs a GPU.",
        ),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            "--precision",
            metavar="[fp32|bf16]",
            help="Matrix products of IQL training (train.precision): fp32 (default) or bf16 "
            "(opt-in: about twice the speed on CPUs with AVX512-BF16/AMX, slower on a GPU at "
            "the card's sizes; changes the weights, docs/train.md).",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    """The whole study in one command: data, build, sweep, selection, final test, export, report.

    Stage 1 trains every sweep candidate (2 rewards x 3 learning-rate regimes x 3 IQL \
settings, seed 42) and evaluates it on VALIDATION; the finalists get more seeds (stage 2); a \
documented rule with hard gates selects one configuration; only then are the selected policy \
and the baselines (clinician, no treatment, behaviour cloning, CQL) evaluated once on TEST, \
the model repository exported and the report written to <workspace>/report/index.html. Every \
unit is cached: rerunning resumes where an interrupted run stopped. RESEARCH ONLY: nothing \
this produces is clinical decision support.
    """
    import signal

    from sepsisrl.dataset.leakage import LeakageError
    from sepsisrl.dataset.measurements import UnitError
    from sepsisrl.interrupts import InterruptLatch
    from sepsisrl.mimic.source import SourceError
    from sepsisrl.release.bundle import ExportError
    from sepsisrl.study.config import load_study_config
    from sepsisrl.study.report import ReportError
    from sepsisrl.study.runner import StudyError, run_study

    overrides = _parse_overrides(set_ or [])
    if workers is not None:
        overrides["workers"] = workers
    if executor is not None:
        overrides["executor"] = executor
    if address is not None:
        overrides["ray_address"] = address
    if device is not None:
        overrides["train.device"] = device
        overrides["evaluation.device"] = device
    if precision is not None:
        overrides["train.precision"] = precision
    try:
        cfg = load_study_config(profile, config, overrides)
        if source is not None and not source.is_dir():
            raise UserError(f"--source {source}: not a folder (expected hosp/ and icu/ inside)")
        if not quiet:
            err.print(f"sepsisrl run: profile {profile}, workspace {workspace}", highlight=False)
            err.print(f"[dim]{RESEARCH_ONLY}[/]", highlight=False)
        with _progress(quiet) as progress:
            tasks: dict[str, Any] = {}

            def on_event(phase: str, done: int, total: int, message: str) -> None:
                if phase not in tasks:
                    tasks[phase] = progress.add_task(phase, total=max(total, 1))
                progress.update(
                    tasks[phase], completed=done, total=max(total, 1),
                    description=f"{phase:<10} {message[:60]}",
                )  # fmt: skip
                if not quiet and not err.is_terminal and done == total:
                    err.print(f"  {phase:<10} {done}/{total} {message}", highlight=False)

            # Ctrl-C or SIGTERM (batch schedulers) stops the workers at once; rerun to resume
            with InterruptLatch((signal.SIGINT, signal.SIGTERM)):
                result = run_study(workspace, cfg, source=source, on_event=on_event)
    except KeyboardInterrupt:
        err.print(_STUDY, highlight=False)
        raise typer.Exit(130) from None
    except (
        ConfigError, SourceError, UnitError, LeakageError, StudyError, ExportError,
        ReportError, FileNotFoundError, ValueError,
    ) as exc:  # fmt: skip
        raise _fail(exc) from exc
    typer.echo(json.dumps({
        "workspace": str(result.workspace), "selected": result.selected,
        "release": str(result.release), "report": str(result.report / "index.html"),
        "seconds": round(result.seconds, 1), "phases": result.phases,
    }, indent=2))  # fmt: skip
    if not quiet:
        warning = halving_warning(result.phases)
        if warning:
            err.print(warning, highlight=False)
        err.print(f"report: {result.report / 'index.html'}", highlight=False)


def halving_warning(phases: dict[str, dict]) -> str | None:
    """One line when successive halving stopped candidates that the validation data did not
    show worse (``stopped_within_noise`` of a rung's phase), else None."""
    noisy = {k: v["stopped_within_noise"] for k, v in phases.items()
             if v.get("stopped_within_noise")}  # fmt: skip
    if not noisy:
        return None
    parts = "; ".join(f"{k}: {n} of {phases[k]['stopped']}" for k, n in noisy.items())
    choice = ("the full sweep may select another configuration"
              if any(k.startswith("stage 1") for k in noisy) else "")  # fmt: skip
    if any(not k.startswith("stage 1") for k in noisy):  # sweep.halving.baselines
        choice += ("; " if choice else "") + "the full tuning may choose another baseline"
    return (f"warning: successive halving stopped candidates within the noise ({parts}); "
            f"{choice} (report: Model selection)")  # fmt: skip


@command()
def report(
    workspace: Annotated[
        Path, typer.Option("--workspace", help="A study workspace written by `sepsisrl run`.")
    ] = Path("workspace"),
) -> None:
    """(Re)write the study report: report/index.html (self-contained) and report/report.md.

    Every number is read from the workspace's artifacts. RESEARCH ONLY.
    """
    from sepsisrl.study.report import ReportError, write_report

    try:
        folder = write_report(workspace)
    except ReportError as exc:
        raise _fail(exc) from exc
    typer.echo(json.dumps({"report": str(folder / "index.html"),
                           "markdown": str(folder / "report.md")}, indent=2))  # fmt: skip


@command()
def validate(
    workspace: Annotated[Path, typer.Option("--workspace", help="A built workspace.")],
    truth: Annotated[
        Path | None,
        typer.Option(
            "--truth",
            help="Synthetic-world mode: the world's sidecar folder (<raw>_truth).",
        ),
    ] = None,
    mimic_derived: Annotated[
        Path | None,
        typer.Option(
            "--mimic-derived",
            help="mimic-code mode: mimic-code's derived tables (mimiciv_derived) as a DuckDB "
            "file, or a folder of <table>.csv[.gz] / <table>.parquet files.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="mimic-code mode: folder for agreement.json and the disagreeing rows "
            "(default <workspace>/validation/mimic-derived).",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="mimic-code mode: YAML file overriding configs/validate.yaml."
        ),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="mimic-code mode: e.g. --set mimic_derived.dose_tolerance=0.01."
        ),
    ] = None,
) -> None:
    """Check a build against a reference: a synthetic world's ground truth (--truth) or \
mimic-code's derived tables (--mimic-derived); give exactly one.

    --truth: prints Sepsis-3 recall, precision and onset error (the build itself never reads \
the ground truth).

    --mimic-derived: compares suspicion_of_infection, norepinephrine_equivalent_dose, \
urine_output, sofa (hourly, per component) and sepsis3 (stays, onset) with the build's \
equivalents; prints the agreement figures as a table (stderr) and JSON (stdout), and writes \
agreement.json and <table>_disagreements.parquet / .csv to --out. A table the source lacks is \
reported as "not provided".
    """
    if (truth is None) == (mimic_derived is None):
        raise UserError("give exactly one of --truth DIR (synthetic world) or --mimic-derived SRC")
    if truth is not None:
        if out is not None or config is not None or overrides:
            raise UserError("--out, --config and --set apply to --mimic-derived only")
        from sepsisrl.dataset.validate import validate_sepsis

        for path, what in (
            (workspace / "sepsis" / "onset.parquet", "a built workspace"),
            (truth / "stays.parquet", "a synthetic world's truth folder"),
        ):
            if not path.is_file():
                raise UserError(f"{path} not found: expected {what}")
        typer.echo(json.dumps(validate_sepsis(workspace, truth), indent=2))
        return

    from rich.table import Table

    from sepsisrl.dataset.mimic_derived import (
        DerivedTableError,
        agreement_rows,
        compare_with_mimic_derived,
        load_validate_config,
    )

    try:
        cfg = load_validate_config(config, _parse_overrides(overrides or []))
        report = compare_with_mimic_derived(workspace, mimic_derived, out, cfg.mimic_derived)
    except (ConfigError, DerivedTableError) as exc:
        raise _fail(exc) from exc
    table = Table(title="sepsisrl against mimic-code (mimiciv_derived)")
    table.add_column("figure", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    previous = None
    for name, figure, value in agreement_rows(report):
        if name != previous:
            if previous is not None:
                table.add_section()
            table.add_row(f"[bold]{name}[/]", "")
            previous = name
        table.add_row(f"  {figure}", value)
    err.print(table)
    err.print(f"disagreeing rows and agreement.json: {report['out']}", highlight=False)
    typer.echo(json.dumps(report, indent=2))


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=quiet or not err.is_terminal,
    )


#: Set by the signal handlers: any error after an interrupt is reported as the interrupt.
_SIGNALLED = {"hit": False}


def _interrupt(signum: int, frame: Any) -> None:
    _SIGNALLED["hit"] = True
    raise KeyboardInterrupt


def install_interrupt_handlers() -> None:
    """Honour Ctrl-C / ``kill -INT`` and ``kill -TERM`` in every command, foreground or
    background: a shell starts a background job with SIGINT ignored (and Python then installs
    no KeyboardInterrupt handler), and SIGTERM would otherwise end the process without any
    clean-up. Both raise KeyboardInterrupt: temporary folders are removed, exit status 130."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)


#: OS error numbers and what to do about them (the message names the path).
_OS_FIXES = {
    errno.EACCES: ("permission denied", "make it writable for you or choose another folder"),
    errno.EPERM: ("operation not permitted", "make it writable for you or choose another folder"),
    errno.EROFS: ("read-only file system", "choose a folder on a writable file system"),
    errno.ENOSPC: (
        "no space left on the device",
        "free disk space (or choose a folder on a larger disk), then run the same command again",
    ),
    errno.EFBIG: (
        "file too large: the disk is full or a file-size limit (ulimit -f) was reached",
        "free disk space (or choose a folder on a larger disk, or raise the file-size limit), "
        "then run the same command again",
    ),
    errno.EDQUOT: (
        "disk quota exceeded",
        "free space within your quota (or choose another disk), then run the same command again",
    ),
    errno.ENOTDIR: ("a path component is a file, not a folder", "remove it or choose another path"),
    errno.EISDIR: ("a folder where a file was expected", "give the path of a file"),
    errno.EEXIST: ("already exists", "remove it or choose another path"),
    errno.ENOENT: ("not found", "check the path"),
    errno.ENOTEMPTY: ("folder not empty", "remove it or choose another path"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) and run it again"),
}


def _os_error_message(exc: OSError) -> str:
    from sepsisrl.workspace import no_space_error

    if exc.errno is None and (full := no_space_error(exc)) is not None:
        exc = full  # Arrow's errors give the errno only in their text
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    what, fix = _OS_FIXES.get(exc.errno or -1, (exc.strerror or str(exc), "check the path"))
    if exc.errno == errno.EEXIST and paths and Path(paths[0]).is_file():
        what = "is a file where a folder is needed"
    if exc.errno == errno.ENOTDIR:
        for p in paths:
            found = next((a for a in [Path(p), *Path(p).parents] if a.is_file()), None)
            if found is not None:
                what = f"{found} is a file, not a folder"
                break
    where = " -> ".join(str(p) for p in paths) if paths else "(no path given)"
    return f"{where}: {what}; {getattr(exc, 'hint', None) or fix}"


def _duckdb_message(exc: Exception) -> str:
    from sepsisrl.workspace import no_space_error

    full = no_space_error(exc)
    if full is not None:  # a write of the output failed: name that file, not an input
        return _os_error_message(full)
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else name
    if name == "OutOfMemoryException":
        fix = (
            "lower engine.memory_limit or engine.threads (e.g. --set engine.threads=2), or give "
            "the machine more memory, then run the same command again"
        )
    elif name in ("IOException", "PermissionException"):
        fix = (
            "check that the file exists, is readable, and that the workspace is writable and "
            "its disk has space; then run the same command again"
        )
    else:
        fix = "check the source tables and the file named above"
    return f"DuckDB {name}: {text}; {fix}"


def _json_file(exc: json.JSONDecodeError) -> Path | None:
    """The file whose text failed to parse: a JSONFileError names it; otherwise the traceback
    is searched for a path (or a folder holding a file) with exactly the text that failed."""
    from sepsisrl.workspace import JSONFileError

    if isinstance(exc, JSONFileError):
        return exc.path
    seen: set[Path] = set()
    tb = exc.__traceback__
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in list(frame.f_locals.values()):
            if not isinstance(value, str | Path) or not str(value):
                continue
            path = Path(value)
            with contextlib.suppress(OSError, ValueError):
                candidates = sorted(path.glob("*.json*")) if path.is_dir() else [path]
                for c in candidates:
                    if c in seen or not c.is_file() or c.stat().st_size > 50_000_000:
                        continue
                    seen.add(c)
                    if exc.doc in c.read_text(errors="replace"):
                        return c
    return None


def _user_message(exc: BaseException) -> str | None:
    """The one-line message of an error the user can fix, or None for a bug."""
    if isinstance(exc, UserError | locks.FolderLockedError):
        return str(exc)
    if isinstance(exc, json.JSONDecodeError):
        from sepsisrl.workspace import JSONFileError

        if isinstance(exc, JSONFileError):
            return str(exc)
        path = _json_file(exc)
        where = f"{path} is" if path is not None else "a JSON file sepsisrl read is"
        return (
            f"{where} not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); the "
            "file is damaged or was edited by hand: restore it or recreate it by rerunning the "
            "command that wrote it"
        )
    if isinstance(exc, OSError):
        return _os_error_message(exc)
    duckdb = sys.modules.get("duckdb")
    if duckdb is not None and isinstance(exc, duckdb.Error):
        return _duckdb_message(exc)
    return None


def main() -> None:
    _OPTIONS["debug"] = os.environ.get("SEPSISRL_DEBUG", "") not in ("", "0")
    install_interrupt_handlers()
    try:
        app()
    except KeyboardInterrupt:
        err.print(_ATOMIC, highlight=False, soft_wrap=True)
        sys.exit(130)
    except Exception as exc:
        if _is_duckdb_interrupt(exc):
            err.print(_ATOMIC, highlight=False, soft_wrap=True)
            sys.exit(130)
        message = _user_message(exc)
        if _OPTIONS["debug"] or message is None:
            err.print("".join(traceback.format_exception(exc)), highlight=False, markup=False)
        if message is None:
            err.print(
                "[bold red]internal error:[/] this is a bug in sepsisrl "
                f"{escape(__version__)}; please report it with the traceback above and the "
                "command you ran",
                highlight=False,
                soft_wrap=True,
            )
            sys.exit(1)
        err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
