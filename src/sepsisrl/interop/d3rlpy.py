"""d3rlpy interop (the ``sepsisrl[d3rlpy]`` extra; docs/d3rlpy.md).

:func:`to_d3rlpy` turns one split of a replay folder (docs/contracts.md, "Replay dataset") into
a ``d3rlpy.dataset.MDPDataset``, read through the same checked reader as training and
evaluation (``rl/data.py`` ``load_split``): the state columns in ``meta.feature_names`` order
(the replay's state variant, as stored), the action ids, the ``reward`` column (the replay's
reward variant, as stored), and the episodes rebuilt from ``stay_id``:

  terminal  the episode's last row when ``done`` is true: it carries the outcome (the terminal
            reward), and the project's learners and FQE never bootstrap past it
            (``y = r + gamma (1 - d) ...``), so neither must d3rlpy
  timeout   an episode whose last row is not ``done`` (ended without its outcome); the reader
            refuses such a replay today, so every episode of a contract-following replay is
            terminal and d3rlpy keeps every row as a transition

One dataset per split; train, validation and test are never mixed (:func:`to_d3rlpy_splits`
returns the three side by side).

:class:`D3rlpyPolicy` is a saved d3rlpy discrete-action Q-learning model (``algo.save(path)``,
a ``.d3`` file) as a policy of the ``rl.policies.Policy`` protocol: its greedy action (the
argmax of its Q-function) with probability 1. It is what ``sepsisrl evaluate --d3rlpy`` and
``sepsisrl truth --d3rlpy`` use. A ``.d3`` file is a pickle written by d3rlpy; it is read here
without ``d3rlpy.load_learnable`` (which unpickles arbitrary objects): an unpickler that
refuses every Python class reads its plain dictionary (weights as bytes, configuration as
JSON text, version), the weights are loaded with ``torch.load(..., weights_only=True)``, and
the model's observation size and action count are checked against the replay before anything
is built from it.

Nothing here imports d3rlpy at module import time; each entry point imports it when called
and raises :class:`D3rlpyMissingError` (an ``ImportError``) naming the extra to install.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from sepsisrl.dataset.splits import SPLITS
from sepsisrl.rl.data import ReplayError, load_meta, load_split
from sepsisrl.rl.policies import _Deterministic

#: What to install when d3rlpy is absent.
INSTALL_HINT = 'pip install "sepsisrl[d3rlpy]"'
#: The oldest d3rlpy whose dataset and model format this module follows (pyproject.toml).
MIN_VERSION = (2, 6)
#: The keys of the dictionary ``d3rlpy.base.dump_learnable`` pickles into a ``.d3`` file.
D3_KEYS = {"torch": bytes, "config": str, "version": str}


class D3rlpyMissingError(ImportError):
    """d3rlpy (the ``sepsisrl[d3rlpy]`` extra) is not installed, or is too old."""


class D3rlpyModelError(ValueError):
    """A d3rlpy model file that cannot be used: unreadable, not a discrete-action Q-learning
    model, of another observation size or action count than the replay, or with NaN weights."""


def require_d3rlpy() -> Any:
    """The ``d3rlpy`` module, or a :class:`D3rlpyMissingError` saying what to install."""
    try:
        import d3rlpy
    except ImportError as exc:
        raise D3rlpyMissingError(
            f"the d3rlpy interop needs d3rlpy >= {'.'.join(map(str, MIN_VERSION))}, which is "
            f"not installed ({exc}); install the extra: {INSTALL_HINT}"
        ) from exc
    found = str(getattr(d3rlpy, "__version__", "0"))
    parts = [int(p) if p.isdigit() else 0 for p in found.split(".")[:2]]
    if tuple(parts) < MIN_VERSION:
        raise D3rlpyMissingError(
            f"the d3rlpy interop needs d3rlpy >= {'.'.join(map(str, MIN_VERSION))}, found "
            f"{found}; upgrade it: {INSTALL_HINT}"
        )
    return d3rlpy


# ---------------------------------------------------------------------------- datasets
def to_d3rlpy(replay: str | Path, split: str = "train") -> Any:
    """One split of the replay folder ``replay`` (e.g. ``workspace/replay/sofa_shaped``) as a
    ``d3rlpy.dataset.MDPDataset`` with discrete actions (``action_size`` = the meta's
    ``n_actions``, even when a split never takes some action).

    Observations are the normalised states (``state_dim`` columns in ``meta.feature_names``
    order), rewards the ``reward`` column, one d3rlpy episode per stay, terminal on its last
    row (module docstring). A missing or invalid replay, an unknown split or an empty one is a
    :class:`ReplayError` naming the file; an absent d3rlpy is a :class:`D3rlpyMissingError`.
    """
    d3rlpy = require_d3rlpy()
    if split not in SPLITS:
        raise ReplayError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    meta = load_meta(replay)
    data = load_split(replay, split, "reward", meta)
    if len(data) == 0:
        raise ReplayError(
            f"{Path(replay) / f'replay_{split}.parquet'}: the {split} split has no rows; a d3rlpy "
            "dataset needs at least one episode (rebuild the replay with more stays)"
        )
    stay = data.stay_id
    last = np.ones(len(stay), dtype=bool)
    last[:-1] = stay[1:] != stay[:-1]
    done = data.dones.numpy() > 0.5
    return d3rlpy.dataset.MDPDataset(
        observations=data.states.numpy(),
        actions=data.actions.numpy(),
        rewards=data.rewards.numpy(),
        terminals=(last & done).astype(np.float32),
        timeouts=(last & ~done).astype(np.float32),
        action_space=d3rlpy.ActionSpace.DISCRETE,
        action_size=meta.n_actions,
    )


def to_d3rlpy_splits(replay: str | Path) -> dict[str, Any]:
    """``{"train": ..., "validation": ..., "test": ...}``: one :func:`to_d3rlpy` dataset per
    split, each built on its own (train on the first, select on the second, report the third
    once)."""
    return {split: to_d3rlpy(replay, split) for split in SPLITS}


# ---------------------------------------------------------------------------- models
def _refuse_class(_unpickler: pickle.Unpickler, module: str, name: str) -> Any:
    """The ``find_class`` of :data:`_PlainData`: every Python class or function is refused."""
    raise pickle.UnpicklingError(f"it names the Python object {module}.{name}")


#: An unpickler that reads only plain data (dicts, text, bytes, numbers): any class or function
#: a pickle names is refused, so reading cannot run code.
_PlainData = type("_PlainData", (pickle.Unpickler,), {"find_class": _refuse_class})


def _read_d3(path: Path) -> dict[str, Any]:
    """The dictionary of a ``.d3`` file (``torch``: weights, ``config``: JSON, ``version``)."""
    advice = (
        "expected a model file written by d3rlpy's algo.save(path) (d3rlpy >= "
        f"{'.'.join(map(str, MIN_VERSION))})"
    )
    try:
        with path.open("rb") as fh:
            doc = _PlainData(fh).load()
    except Exception as exc:  # a damaged or foreign file may fail in any unpickling step
        raise D3rlpyModelError(
            f"{path}: not a readable d3rlpy model ({type(exc).__name__}: {exc}); {advice}"
        ) from None
    wrong = (
        [k for k, kind in D3_KEYS.items() if not isinstance(doc.get(k), kind)]
        if isinstance(doc, dict)
        else sorted(D3_KEYS)
    )
    if wrong:
        found = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise D3rlpyModelError(
            f"{path}: not a d3rlpy model: expected the keys {sorted(D3_KEYS)} (weights, "
            f"configuration, version), found {found} ({wrong} missing or of another type); "
            f"{advice}"
        )
    return doc


def load_d3rlpy_model(
    path: str | Path, state_dim: int, n_actions: int, where: str = "the replay"
) -> Any:
    """The d3rlpy algorithm saved at ``path`` (on the CPU), checked to be a discrete-action
    Q-learning model with observation shape ``(state_dim,)`` and ``n_actions`` actions
    (``where`` names what sets them, for the error). Every problem is a
    :class:`D3rlpyModelError` naming the file, expected vs found."""
    d3rlpy = require_d3rlpy()
    import torch
    from d3rlpy.algos import QLearningAlgoBase
    from d3rlpy.base import LearnableConfigWithShape

    from sepsisrl.rl.checkpoint import first_nonfinite

    path = Path(path)
    if not path.is_file():
        raise D3rlpyModelError(
            f"{path}: no such file (expected a d3rlpy model saved with algo.save(path))"
        )
    doc = _read_d3(path)
    saved = f"saved by d3rlpy {doc['version']}, this is d3rlpy {d3rlpy.__version__}"
    try:
        shaped = LearnableConfigWithShape.deserialize(doc["config"])
    except Exception as exc:  # an algorithm or field this d3rlpy does not know
        raise D3rlpyModelError(
            f"{path}: cannot read its d3rlpy configuration ({type(exc).__name__}: {exc}; {saved})"
        ) from None
    algo_name = type(shaped.config).__name__.removesuffix("Config")
    bare = shaped.config.create(device="cpu:0")
    discrete = bare.get_action_type() == d3rlpy.ActionSpace.DISCRETE
    if not discrete or not isinstance(bare, QLearningAlgoBase):
        what = "discrete actions, not Q-learning" if discrete else "continuous actions"
        raise D3rlpyModelError(
            f"{path}: a {algo_name} model ({what}); sepsisrl evaluates discrete-action "
            "Q-learning models (e.g. DiscreteCQL, DoubleDQN, DiscreteBCQ, DiscreteBC) over "
            f"{n_actions} action ids"
        )
    shape = list(shaped.observation_shape)  # a list of shapes for tuple observations
    if shape != [state_dim] or int(shaped.action_size) != n_actions:
        raise D3rlpyModelError(
            f"{path}: the {algo_name} model does not fit {where}: expected observation shape "
            f"[{state_dim}] and {n_actions} actions, found observation shape {shape} and "
            f"{shaped.action_size} actions; train it on sepsisrl.interop.to_d3rlpy() of this "
            "build's replay (docs/d3rlpy.md)"
        )
    algo = shaped.create(device="cpu:0")
    try:
        weights = torch.load(io.BytesIO(doc["torch"]), map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses anything but tensors and plain data
        raise D3rlpyModelError(
            f"{path}: its weights are not a readable tensor checkpoint ({type(exc).__name__}: "
            f"{exc}; {saved})"
        ) from None
    modules = algo.impl.modules.create_checkpointer("cpu:0").modules
    missing = [k for k in modules if not isinstance(weights, dict) or k not in weights]
    if missing:
        raise D3rlpyModelError(
            f"{path}: its weights lack the module(s) {missing} a {algo_name} model has ({saved})"
        )
    try:
        for key, module in modules.items():
            module.load_state_dict(weights[key])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise D3rlpyModelError(
            f"{path}: its weights do not fit a {algo_name} model of its own configuration "
            f"({exc}; {saved})"
        ) from None
    networks = {k: m for k, m in modules.items() if isinstance(m, torch.nn.Module)}
    bad = first_nonfinite(networks)
    if bad is not None:
        raise D3rlpyModelError(
            f"{path}: tensor {bad!r} holds NaN or inf values (the training diverged); refusing "
            "to use it - retrain the model"
        )
    return algo


class D3rlpyPolicy(_Deterministic):
    """A saved d3rlpy discrete-action model (``.d3``) as a deterministic policy: ``act`` is the
    model's greedy action (``algo.predict``: the argmax of its Q-function), probability 1.

    ``state_dim`` and ``n_actions`` are the replay's (or the build's, for the truth); a model
    of another observation size or action count is refused (:func:`load_d3rlpy_model`). The
    states it receives are the replay's normalised states in ``meta.feature_names`` order,
    exactly what :func:`to_d3rlpy` gives it to train on.
    """

    def __init__(
        self, model: str | Path, state_dim: int, n_actions: int, where: str = "the replay"
    ) -> None:
        self.algo = load_d3rlpy_model(model, state_dim, n_actions, where)
        self.state_dim, self.n_actions = state_dim, n_actions
        self.name = f"d3rlpy:{Path(model).name}"

    def act(self, states: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(states, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.state_dim:
            raise ValueError(
                f"{self.name}: expected states of shape (N, {self.state_dim}), found "
                f"{tuple(x.shape)}"
            )
        if not len(x):
            return np.zeros(0, dtype=np.int64)
        return np.asarray(self.algo.predict(x), dtype=np.int64).reshape(-1)
