"""Replay datasets as tensors (any dataset that follows the replay contract of docs/contracts.md).

The replay files hold one row per decision step, sorted by (stay_id, step). The next state of
a non-final row is the state of the following row; it is not stored twice - ``next_index``
points at it (a final row points at itself and is masked by ``done``). Everything a training
step needs stays resident as tensors; a batch is a handful of index operations.

Loading checks the contract and refuses what would silently train or evaluate on garbage:
``gamma`` outside (0, 1], episodes whose steps are not 0..n-1, non-finite states, and state
values outside the range the build recorded (``meta.json`` ``state_bounds``: every normalised
value of a build lies within its feature's clip range mapped through the train-fitted transform
and z-score, ``StatePreprocessor.normalised_range``). A replay written before ``state_bounds``
existed gets the range derived from its workspace's ``features/preprocessing.json``; a replay
with neither (an external dataset) is checked for finite values only.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from sepsisrl import contracts
from sepsisrl.contracts import ContractError
from sepsisrl.rl.actions import ActionGrid, grid_of_meta

SUPPORTED_SCHEMA = {"1"}

#: The largest SOFA score (0..24): a SOFA-delta shaping term is at most 24 * |weight|.
SOFA_MAX = 24.0
#: Denominator floor of the lactate-clearance term (``dataset/replay.py``) and a lactate value
#: beyond any measurement (mmol/L), for a replay whose build statistics are not at hand.
LACTATE_FLOOR = 1e-6
LACTATE_MAX = 1000.0

#: Slack of the state range check, relative to the bound (at least this much in z units):
#: covers float32 rounding of a value that lies exactly on a clip bound.
BOUNDS_TOLERANCE = 1e-5


class ReplayError(ContractError):
    """The replay folder does not follow the replay contract (docs/contracts.md)."""


@dataclass
class ReplayMeta:
    """A replay folder and its checked ``meta.json`` (``doc``: the contract's
    :class:`sepsisrl.contracts.ReplayMeta`), with what derives from it."""

    path: Path
    doc: contracts.ReplayMeta

    @property
    def state_dim(self) -> int:
        return self.doc.state_dim

    @property
    def n_actions(self) -> int:
        return self.doc.n_actions

    @property
    def feature_names(self) -> list[str]:
        return list(self.doc.feature_names)

    @property
    def gamma(self) -> float:
        return float(self.doc.gamma)

    @property
    def action_grid(self) -> ActionGrid | None:
        """The vasopressor x IV-fluid grid its ``action_labels`` spell (``rl.actions``); None
        when they are plain action names or absent (an external dataset)."""
        return grid_of_meta(self.doc, str(self.path / "meta.json"))

    @property
    def preprocessing(self) -> Path | None:
        """The build's ``features/preprocessing.json`` the meta names (relative to the
        workspace); None for a replay that names none (an external dataset)."""
        ref = self.doc.preprocessing
        return None if ref is None else self.path.parent.parent / ref

    def source(self) -> dict[str, Any] | None:
        """The meta's ``source`` section as written (None: an external dataset names none)."""
        src = self.doc.source
        return None if src is None else src.model_dump(mode="python", exclude_unset=True)

    def state_bounds(self) -> tuple[np.ndarray, np.ndarray, str] | None:
        """(low, high, where from) of every state column in feature order (+-inf: unbounded),
        or None when neither the meta nor the build's preprocessing statistics record one."""
        names = self.feature_names
        recorded = self.doc.state_bounds
        if recorded is not None:
            feats = recorded.features
            rng = {n: feats[n] for n in names if n in feats}
            source = f"{self.path / 'meta.json'} state_bounds"
            for n, v in rng.items():
                if not (
                    len(v) == 2 and not math.isnan(v[0]) and not math.isnan(v[1]) and v[0] <= v[1]
                ):
                    raise ReplayError(
                        f"{source}: the range of {n!r} must be [low, high] with low <= high, "
                        f"found {v!r}"
                    )
        else:  # written before state_bounds existed, or an external dataset
            path = self.preprocessing
            if path is None or not path.is_file():
                return None
            from sepsisrl.dataset.preprocessing import StatePreprocessor

            try:
                prep = StatePreprocessor.from_json(json.loads(path.read_text()))
                rng = prep.normalised_range()
            except (KeyError, TypeError, ValueError) as exc:
                raise ReplayError(
                    f"{path}: cannot derive the state range of {self.path} from it ({exc})"
                ) from exc
            rng.update({n: (0.0, 1.0) for n in names if n.endswith("_missing") and n not in rng})
            source = f"derived from {path} (meta.json has no state_bounds)"
        low = np.array([float(rng[n][0]) if n in rng else -np.inf for n in names])
        high = np.array([float(rng[n][1]) if n in rng else np.inf for n in names])
        return low, high, source

    def reward_bound(self) -> tuple[float, str] | None:
        """The largest |reward| the meta's reward spec can produce, and how it was derived:
        the larger terminal plus every shaping term at its extreme (SOFA delta <= 24 points,
        MAP deficit <= map_target, lactate clearance <= max lactate / 1e-6). None when the
        meta records no terminal rewards (an external dataset, whose reward spec may name only
        its ``variant``): then rewards are only checked to be finite. A shaping term the spec
        does not name is absent (weight 0); one it gives as null or non-finite leaves the
        reward unbounded (None)."""
        spec = self.doc.reward

        def num(key: str, absent: float | None = None) -> float | None:
            v = getattr(spec, key) if key in spec.model_fields_set else absent
            if v is None or not math.isfinite(v):
                return None
            return float(v)

        t_surv, t_died = num("terminal_survived"), num("terminal_died")
        w_sofa, w_lac = num("sofa_delta_weight", 0.0), num("lactate_clearance_weight", 0.0)
        w_map, target = num("map_deficit_weight", 0.0), num("map_target", 0.0)
        if None in (t_surv, t_died, w_sofa, w_lac, w_map, target):
            return None
        terminal = max(abs(t_surv), abs(t_died))
        shaping = abs(w_sofa) * SOFA_MAX + abs(w_map) * abs(target)
        if w_lac:
            shaping += abs(w_lac) * max(1.0, LACTATE_MAX / LACTATE_FLOOR)
        return terminal + shaping, (
            f"meta.json reward: max |terminal| {terminal:g} + shaping {shaping:g}"
        )

    @property
    def variant(self) -> str:
        return self.doc.reward.variant

    @property
    def state_variant(self) -> str:
        """The build's state layout (``state.variant``); a replay written before it was
        recorded, or an external one, has the card layout."""
        return "card" if self.doc.state_variant is None else self.doc.state_variant


def load_meta(replay_dir: str | Path) -> ReplayMeta:
    """Read and check ``<replay_dir>/meta.json``: the replay contract (``contracts.ReplayMeta``:
    a missing, misspelt or ill-typed key is an error naming it) and what a type cannot say
    (a supported ``schema_version``, counts >= 1, ``gamma`` in (0, 1], one unique name per
    state column). Every problem is a :class:`ReplayError` naming the file."""
    folder = Path(replay_dir)
    path = folder / "meta.json"
    if not path.is_file():
        raise ReplayError(
            f"{folder}: no meta.json (expected a replay folder such as "
            "workspace/replay/sofa_shaped)"
        )
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReplayError(f"{path}: not valid JSON ({exc}); rebuild the replay") from None
    if not isinstance(raw, dict):
        raise ReplayError(f"{path}: expected a JSON object, found {type(raw).__name__}")
    # the checks with a message of their own come first (on the keys that are there); the
    # contract then refuses what is missing, misspelt or of another type
    if "schema_version" in raw and str(raw["schema_version"]) not in SUPPORTED_SCHEMA:
        raise ReplayError(
            f"{path}: schema_version {str(raw['schema_version'])!r} is not supported "
            f"(expected one of {sorted(SUPPORTED_SCHEMA)})"
        )
    for key, what in (("n_actions", "the number of discrete actions"),
                      ("state_dim", "the number of state features")):  # fmt: skip
        if key not in raw:
            continue
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ReplayError(f"{path}: {key} must be an integer >= 1 ({what}), found {value!r}")
    if "feature_names" in raw:
        names = raw["feature_names"]
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise ReplayError(
                f"{path}: feature_names must be a list of non-empty strings, found {names!r:.80}"
            )
    if "gamma" in raw:
        gamma = raw["gamma"]
        if (
            isinstance(gamma, bool)
            or not isinstance(gamma, (int, float))
            or not (0.0 < float(gamma) <= 1.0)
        ):
            raise ReplayError(
                f"{path}: gamma must be a number in (0, 1] (the discount of the returns), "
                f"found {gamma!r}"
            )
    try:
        doc = contracts.ReplayMeta.parse(raw, path)
    except ContractError as exc:
        raise ReplayError(str(exc)) from None
    dupes = sorted({n for n in doc.feature_names if doc.feature_names.count(n) > 1})
    if dupes:
        raise ReplayError(f"{path}: feature_names lists {dupes[:5]} more than once")
    if len(doc.feature_names) != doc.state_dim:
        raise ReplayError(
            f"{path}: {len(doc.feature_names)} feature_names but state_dim {doc.state_dim}"
        )
    return ReplayMeta(folder, doc)


@dataclass
class Transitions:
    """One split of a replay dataset, as tensors on one device."""

    states: torch.Tensor  # (N, state_dim) float32
    actions: torch.Tensor  # (N,) int64
    rewards: torch.Tensor  # (N,) float32
    dones: torch.Tensor  # (N,) float32 (1 on each episode's last step)
    next_index: torch.Tensor  # (N,) int64 row of the next state (self on final rows)
    stay_id: np.ndarray
    step: np.ndarray
    subject_id: np.ndarray
    fingerprint: str

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    @property
    def n_episodes(self) -> int:
        return int(self.dones.sum().item())

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(s, a, r, s', done) for the rows ``idx``."""
        return (
            self.states[idx],
            self.actions[idx],
            self.rewards[idx],
            self.states[self.next_index[idx]],
            self.dones[idx],
        )

    def initial_mask(self) -> np.ndarray:
        return self.step == 0

    def to(self, device: str | torch.device) -> Transitions:
        return Transitions(
            self.states.to(device), self.actions.to(device), self.rewards.to(device),
            self.dones.to(device), self.next_index.to(device), self.stay_id, self.step,
            self.subject_id, self.fingerprint,
        )  # fmt: skip


def load_split(
    replay_dir: str | Path,
    split: str,
    reward_column: str = "reward",
    meta: ReplayMeta | None = None,
) -> Transitions:
    """Read ``replay_<split>.parquet`` into tensors, checking the contract as it goes."""
    meta = meta or load_meta(replay_dir)
    path = Path(replay_dir) / f"replay_{split}.parquet"
    if not path.is_file():
        raise ReplayError(f"{path} not found")
    try:
        cols = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as exc:
        raise ReplayError(
            f"{path}: not a readable Parquet file - truncated or damaged ({exc}); "
            "rebuild the replay"
        ) from None
    state_cols = [f"s_{n}" for n in meta.feature_names]
    missing = [
        c
        for c in ("stay_id", "step", "action", "done", reward_column, *state_cols)
        if c not in cols
    ]
    if missing:
        raise ReplayError(
            f"{path}: missing column(s) {missing[:8]}{' ...' if len(missing) > 8 else ''}"
        )
    extra = ["subject_id"] if "subject_id" in cols else []
    try:
        table = pq.read_table(
            path, columns=["stay_id", "step", "action", "done", reward_column, *extra, *state_cols]
        )
    except (pa.ArrowException, OSError) as exc:
        raise ReplayError(
            f"{path}: not a readable Parquet file - truncated or damaged ({exc}); "
            "rebuild the replay"
        ) from None
    stay = table["stay_id"].to_numpy()
    step = table["step"].to_numpy().astype(np.int64)
    order = np.lexsort((step, stay))
    if not (order == np.arange(len(order))).all():
        raise ReplayError(f"{path}: rows are not sorted by (stay_id, step)")
    done = table["done"].to_numpy(zero_copy_only=False).astype(bool)
    last = np.ones(len(stay), dtype=bool)
    last[:-1] = stay[1:] != stay[:-1]
    _check_steps(path, stay, step, last)
    if not (done == last).all():
        raise ReplayError(f"{path}: done must be true exactly on each episode's last row")
    actions = _actions(path, table["action"], stay, step, meta.n_actions)
    states = (
        np.column_stack([table[c].to_numpy().astype(np.float32) for c in state_cols])
        if len(stay)
        else np.zeros((0, meta.state_dim), np.float32)
    )
    _check_states(path, split, states, state_cols, stay, step, meta.state_bounds())
    rewards = _rewards(path, table[reward_column], reward_column, stay, step, meta)
    next_index = np.where(done, np.arange(len(stay)), np.arange(len(stay)) + 1)
    h = hashlib.sha256()
    for arr in (stay, step, actions, rewards, states):
        h.update(np.ascontiguousarray(arr).tobytes())
    return Transitions(
        states=torch.from_numpy(states),
        actions=torch.from_numpy(actions),
        rewards=torch.from_numpy(rewards),
        dones=torch.from_numpy(done.astype(np.float32)),
        next_index=torch.from_numpy(next_index.astype(np.int64)),
        stay_id=stay,
        step=step,
        subject_id=table["subject_id"].to_numpy() if extra else stay,
        fingerprint=h.hexdigest(),
    )


def _where(stay: np.ndarray, step: np.ndarray, i: int) -> str:
    return f"row {i} (stay_id {stay[i]}, step {int(step[i])})"


def _actions(
    path: Path, column: pa.ChunkedArray, stay: np.ndarray, step: np.ndarray, n_actions: int
) -> np.ndarray:
    """The ``action`` column as int64 ids in 0..n_actions-1, refusing text, nulls, fractions
    and ids outside the action set (naming the file, column, an example row and value)."""
    kind = column.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        example = column.slice(0, 1).to_pylist()
        raise ReplayError(
            f"{path}: column 'action' must hold integer action ids 0..{n_actions - 1}, found "
            f"type {kind}{f' (row 0 = {example[0]!r})' if example else ''}; rebuild the replay"
        )
    if column.null_count:
        i = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise ReplayError(
            f"{path}: column 'action' has {column.null_count} missing value(s), e.g. "
            f"{_where(stay, step, i)}; expected integer action ids 0..{n_actions - 1}"
        )
    values = column.to_numpy()
    if pa.types.is_floating(kind):
        whole = np.isfinite(values) & (values == np.round(values))
        if not whole.all():
            bad = np.flatnonzero(~whole)
            i = int(bad[0])
            raise ReplayError(
                f"{path}: column 'action' holds {len(bad)} non-integer value(s), e.g. "
                f"{_where(stay, step, i)} = {values[i].item()!r}; expected integer action ids "
                f"0..{n_actions - 1} - the replay was altered or not written by this build"
            )
    inside = (values >= 0) & (values < n_actions)
    if not inside.all():
        bad = np.flatnonzero(~inside)
        i = int(bad[0])
        raise ReplayError(
            f"{path}: actions outside 0..{n_actions - 1} (meta.json n_actions {n_actions}): "
            f"column 'action' has {len(bad)} such value(s), e.g. {_where(stay, step, i)} = "
            f"{values[i].item()!r}"
        )
    return values.astype(np.int64)


def _rewards(
    path: Path,
    column: pa.ChunkedArray,
    name: str,
    stay: np.ndarray,
    step: np.ndarray,
    meta: ReplayMeta,
) -> np.ndarray:
    """The reward column as float32, refusing nulls, NaN, inf and values beyond what the
    meta's reward spec can produce (``ReplayMeta.reward_bound``)."""
    if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
        raise ReplayError(
            f"{path}: column {name!r} must hold numbers, found type {column.type}; "
            "rebuild the replay"
        )
    rewards = column.to_numpy(zero_copy_only=False).astype(np.float32)
    finite = np.isfinite(rewards)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        i = int(bad[0])
        raise ReplayError(
            f"{path}: column {name!r} contains NaN, inf or nulls: {len(bad)} value(s), e.g. "
            f"{_where(stay, step, i)} = {rewards[i]}"
        )
    bound = meta.reward_bound()
    if bound is None or not len(rewards):
        return rewards
    limit, source = bound
    outside = np.abs(rewards.astype(np.float64)) > limit * (1 + BOUNDS_TOLERANCE) + 1e-6
    if outside.any():
        bad = np.flatnonzero(outside)
        i = int(bad[0])
        raise ReplayError(
            f"{path}: column {name!r} has {len(bad)} value(s) beyond the attainable reward, "
            f"e.g. {_where(stay, step, i)} = {float(rewards[i]):.6g}; expected |reward| <= "
            f"{limit:.6g} ({source}); the replay was altered or not written by this build - "
            "rebuild it"
        )
    return rewards


def _check_steps(path: Path, stay: np.ndarray, step: np.ndarray, last: np.ndarray) -> None:
    """Every episode's steps are 0, 1, ..., n-1 (rows already sorted by stay, step)."""
    if not len(stay):
        return
    first = np.ones(len(stay), dtype=bool)
    first[1:] = last[:-1]
    expected = np.empty_like(step)
    expected[first] = 0
    expected[~first] = step[np.flatnonzero(~first) - 1] + 1
    bad = np.flatnonzero(step != expected)
    if len(bad):
        i = int(bad[0])
        after = "at its start" if first[i] else f"after step {int(step[i - 1])}"
        raise ReplayError(
            f"{path}: episode stay_id {stay[i]} has a gap in its steps: expected step "
            f"{int(expected[i])} {after}, found step {int(step[i])} (row {i}); an episode's "
            f"steps must be 0..n-1 without gaps ({len(bad)} such row(s) in the file)"
        )


def _check_states(
    path: Path,
    split: str,
    states: np.ndarray,
    cols: list[str],
    stay: np.ndarray,
    step: np.ndarray,
    bounds: tuple[np.ndarray, np.ndarray, str] | None,
) -> None:
    """Finite states inside the recorded range, else a ReplayError naming the file, split,
    column, an example row and value, expected vs found."""
    if not len(states):
        return
    finite = np.isfinite(states)
    if not finite.all():
        j = int(np.flatnonzero(~finite.all(axis=0))[0])
        rows = np.flatnonzero(~finite[:, j])
        i = int(rows[0])
        raise ReplayError(
            f"{path} (split {split}): states contain NaN or inf: column {cols[j]} has "
            f"{len(rows)} non-finite value(s), e.g. row {i} (stay_id {stay[i]}, step "
            f"{int(step[i])}) = {states[i, j]}; expected finite normalised values"
        )
    if bounds is None:
        return
    low, high, source = bounds
    slack_lo = BOUNDS_TOLERANCE * np.maximum(1.0, np.abs(np.nan_to_num(low, posinf=0, neginf=0)))
    slack_hi = BOUNDS_TOLERANCE * np.maximum(1.0, np.abs(np.nan_to_num(high, posinf=0, neginf=0)))
    outside = (states < (low - slack_lo).astype(np.float32)) | (
        states > (high + slack_hi).astype(np.float32)
    )
    if outside.any():
        j = int(np.flatnonzero(outside.any(axis=0))[0])
        rows = np.flatnonzero(outside[:, j])
        i = int(rows[0])
        raise ReplayError(
            f"{path} (split {split}): column {cols[j]} has {len(rows)} value(s) outside the "
            f"build's range, e.g. row {i} (stay_id {stay[i]}, step {int(step[i])}) = "
            f"{float(states[i, j]):.6g}; expected {low[j]:.6g} <= value <= {high[j]:.6g} "
            f"({source}); the replay was altered or not written by this build - rebuild it"
        )
