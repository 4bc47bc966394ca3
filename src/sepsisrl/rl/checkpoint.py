"""Checkpoints without pickle: tensors in safetensors files, everything else in JSON.

A checkpoint folder holds ``model.safetensors`` (every network, keys ``<module>.<param>``),
``optim.safetensors`` (optimiser tensors, keys ``<optimizer>.<param index>.<state>``) and
``state.json`` (step, data order position, optimiser hyper-parameters, metadata). The batch
order generator state and the current epoch's permutation are tensors in ``optim.safetensors``.
Folders are written to a temporary name and renamed, so a checkpoint is complete or absent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

STATE_FILE = "state.json"


class TensorFileError(ValueError):
    """A weights file that cannot be read, or whose tensors do not fit the network."""


def read_tensors(path: Path, advice: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a truncated or damaged file is a TensorFileError
    naming it (``advice`` says what to do)."""
    try:
        return load_file(str(path))
    except SafetensorError as exc:
        raise TensorFileError(
            f"{path}: not a readable safetensors file - truncated or damaged ({exc})"
            + (f"; {advice}" if advice else "")
        ) from None


def check_tensors(
    module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path | str, network: str
) -> None:
    """Refuse tensors that do not fit ``module`` exactly: names missing or unexpected, or a
    shape that differs (``network`` says where the architecture comes from)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in tensors]
    extra = [k for k in tensors if k not in expected]
    if missing or extra:
        what = []
        if missing:
            what.append(f"missing tensor(s) {missing[:5]}")
        if extra:
            what.append(f"unexpected tensor(s) {extra[:5]}")
        raise TensorFileError(
            f"{path}: {' and '.join(what)} for {network} (expected {sorted(expected)[:8]})"
        )
    for key, value in expected.items():
        found = tuple(tensors[key].shape)
        if found != tuple(value.shape):
            raise TensorFileError(
                f"{path}: tensor {key!r} has shape {list(found)} but {network} expects "
                f"{list(value.shape)}"
            )


def module_tensors(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    out = {}
    for name, mod in modules.items():
        for key, value in mod.state_dict().items():
            out[f"{name}.{key}"] = value.detach().contiguous().cpu()
    return out


def first_nonfinite(
    source: dict[str, torch.nn.Module] | dict[str, torch.Tensor],
) -> str | None:
    """The name of the first tensor holding NaN or inf (``<module>.<param>`` for modules),
    or None when every floating-point tensor is finite. One device sync for all tensors."""
    tensors: list[tuple[str, torch.Tensor]] = []
    for name, obj in source.items():
        if isinstance(obj, torch.nn.Module):
            tensors += [(f"{name}.{k}", v) for k, v in obj.state_dict().items()]
        else:
            tensors.append((name, obj))
    tensors = [(k, v) for k, v in tensors if v.is_floating_point() or v.is_complex()]
    if not tensors:
        return None
    flags = [torch.isfinite(v.detach()).all() for _, v in tensors]
    ok = torch.stack([f.to(flags[0].device) for f in flags]).tolist()
    return next((k for (k, _), good in zip(tensors, ok, strict=True) if not good), None)


def load_module_tensors(
    modules: dict[str, torch.nn.Module],
    tensors: dict[str, torch.Tensor],
    path: Path | str = "checkpoint",
) -> None:
    for name, mod in modules.items():
        prefix = f"{name}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        check_tensors(mod, state, path, f"the {name!r} network of the run's config.json")
        mod.load_state_dict(state)


def optimizer_payload(
    optimizers: dict[str, torch.optim.Optimizer],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for idx, state in sd["state"].items():
            for key, value in state.items():
                if torch.is_tensor(value):
                    tensors[f"{name}.{idx}.{key}"] = value.detach().contiguous().cpu()
                else:
                    scalars.setdefault(str(idx), {})[key] = value
        meta[name] = {"param_groups": sd["param_groups"], "scalars": scalars}
    return tensors, meta


def load_optimizers(
    optimizers: dict[str, torch.optim.Optimizer],
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
) -> None:
    for name, opt in optimizers.items():
        state: dict[int, dict[str, Any]] = {}
        prefix = f"{name}."
        for key, value in tensors.items():
            if key.startswith(prefix):
                idx, field = key[len(prefix) :].split(".", 1)
                state.setdefault(int(idx), {})[field] = value
        for idx, scalars in meta[name]["scalars"].items():
            state.setdefault(int(idx), {}).update(scalars)
        opt.load_state_dict({"state": state, "param_groups": meta[name]["param_groups"]})


def save_checkpoint(
    folder: Path,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    extra_tensors: dict[str, torch.Tensor],
    state: dict[str, Any],
) -> None:
    """Write the checkpoint ``folder`` atomically. A full disk (or a file-size limit) ends in an
    ``OSError`` naming the file; the temporary folder is removed and the earlier checkpoints
    stay, so the run can be resumed once there is space."""
    from sepsisrl.workspace import atomic_folder, naming_output

    with atomic_folder(folder) as tmp:
        with naming_output(tmp / "model.safetensors", RESUME_HINT):
            save_file(module_tensors(modules), str(tmp / "model.safetensors"))
        opt_tensors, opt_meta = optimizer_payload(optimizers)
        opt_tensors.update(
            {f"__extra__.{k}": v.contiguous().cpu() for k, v in extra_tensors.items()}
        )
        with naming_output(tmp / "optim.safetensors", RESUME_HINT):
            save_file(opt_tensors, str(tmp / "optim.safetensors"))
        with naming_output(tmp / STATE_FILE, RESUME_HINT):
            (tmp / STATE_FILE).write_text(
                json.dumps({**state, "optimizers": opt_meta}, indent=2) + "\n"
            )


#: What to do after a checkpoint could not be written for lack of space.
RESUME_HINT = (
    "free disk space (or raise the file-size limit, ulimit -f), then run the same train command "
    "with --resume: the run folder keeps its earlier checkpoints"
)


def load_checkpoint(
    folder: Path, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    advice = f"delete the checkpoint folder {folder} to resume from the one before it"
    try:
        state = json.loads((folder / STATE_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TensorFileError(f"{folder / STATE_FILE}: not valid JSON ({exc}); {advice}") from None
    model = folder / "model.safetensors"
    load_module_tensors(modules, read_tensors(model, advice), model)
    tensors = read_tensors(folder / "optim.safetensors", advice)
    extra = {k[len("__extra__.") :]: v for k, v in tensors.items() if k.startswith("__extra__.")}
    load_optimizers(
        optimizers,
        {k: v for k, v in tensors.items() if not k.startswith("__extra__.")},
        state["optimizers"],
    )
    return state, extra


class CheckpointError(ValueError):
    """No checkpoint of a run can be resumed from."""


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (missing, truncated, damaged header),
    or None. Reads the header only: the size the header describes must be the file's size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"truncated ({size} bytes, not even a header)"
            n = int.from_bytes(head, "little")
            if n > size - 8:
                return f"truncated ({size} bytes; its header alone needs {8 + n})"
            header = json.loads(fh.read(n))
        ends = [
            int(v["data_offsets"][1])
            for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict)
        ]
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        return f"damaged header ({type(exc).__name__})"
    need = 8 + n + max(ends, default=0)
    if size != need:
        return f"truncated or damaged ({size} bytes; its header describes {need})"
    return None


def checkpoint_problem(folder: Path) -> str | None:
    """Why the checkpoint ``folder`` cannot be resumed from (naming the file), or None."""
    state = folder / STATE_FILE
    try:
        doc = json.loads(state.read_text())
    except FileNotFoundError:
        return f"{state} is missing"
    except (OSError, ValueError) as exc:
        return f"{state} is not valid JSON ({type(exc).__name__})"
    if not isinstance(doc, dict) or not {"step", "position", "epoch", "optimizers"} <= set(doc):
        return f"{state} lacks step, position, epoch or optimizers"
    for name in ("model.safetensors", "optim.safetensors"):
        problem = _safetensors_problem(folder / name)
        if problem is not None:
            return f"{folder / name} is {problem}"
    return None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest intact checkpoint of ``run_dir`` (None when it has none), for a resume.

    Temporaries of checkpoint writes whose process has ended (a ``kill -9``) are removed first.
    A damaged newest checkpoint (a truncated file) is skipped with a note naming it; when every
    checkpoint is damaged, :class:`CheckpointError` names the newest one's damaged file."""
    from sepsisrl import locks
    from sepsisrl.workspace import remove_partials

    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return None
    remove_partials(folder)
    found = sorted((p for p in folder.glob("step_*") if p.is_dir()), reverse=True)
    damaged: list[str] = []
    for candidate in found:
        problem = checkpoint_problem(candidate)
        if problem is None:
            if damaged:
                locks.NOTE(
                    f"checkpoint {found[0]} cannot be resumed from: {damaged[0]}; resuming from "
                    f"the previous intact checkpoint {candidate.name} instead"
                )
            return candidate
        damaged.append(problem)
    if damaged:
        older = (
            f"its {len(damaged) - 1} older one(s) are damaged too"
            if len(damaged) > 1
            else "it has no older one"
        )
        raise CheckpointError(
            f"{damaged[0]}: the newest checkpoint of {run_dir} cannot be resumed from and "
            f"{older}; train again with --overwrite to start over"
        )
    return None
