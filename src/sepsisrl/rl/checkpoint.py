"""Checkpoints without pickle: tensors in safetensors files, everything else in JSON.

A checkpoint folder holds ``model.safetensors`` (every network, keys ``<module>.<param>``),
``optim.safetensors`` (optimiser tensors, keys ``<optimizer>.<param index>.<state>``) and
``state.json`` (step, data order position, optimiser hyper-parameters, metadata). The batch
order generator state and the current epoch's permutation are tensors in ``optim.safetensors``.
Folders are written to a temporary name and renamed, so a checkpoint is complete or absent.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "state.json"


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
    modules: dict[str, torch.nn.Module], tensors: dict[str, torch.Tensor]
) -> None:
    for name, mod in modules.items():
        prefix = f"{name}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        missing = set(mod.state_dict()) - set(state)
        if missing:
            raise KeyError(f"checkpoint lacks {name}: {sorted(missing)[:3]}")
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
    tmp = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(module_tensors(modules), str(tmp / "model.safetensors"))
    opt_tensors, opt_meta = optimizer_payload(optimizers)
    opt_tensors.update({f"__extra__.{k}": v.contiguous().cpu() for k, v in extra_tensors.items()})
    save_file(opt_tensors, str(tmp / "optim.safetensors"))
    (tmp / STATE_FILE).write_text(json.dumps({**state, "optimizers": opt_meta}, indent=2) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def load_checkpoint(
    folder: Path, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    state = json.loads((folder / STATE_FILE).read_text())
    load_module_tensors(modules, load_file(str(folder / "model.safetensors")))
    tensors = load_file(str(folder / "optim.safetensors"))
    extra = {k[len("__extra__.") :]: v for k, v in tensors.items() if k.startswith("__extra__.")}
    load_optimizers(
        optimizers,
        {k: v for k, v in tensors.items() if not k.startswith("__extra__.")},
        state["optimizers"],
    )
    return state, extra


def latest_checkpoint(run_dir: Path) -> Path | None:
    folder = run_dir / "checkpoints"
    done = (
        sorted(p for p in folder.glob("step_*") if (p / STATE_FILE).is_file())
        if folder.is_dir()
        else []
    )
    return done[-1] if done else None
