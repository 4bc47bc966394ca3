"""Inference wrapper for a sepsisrl IQL policy (model repository file ``modeling_iql.py``).

RESEARCH ONLY - NOT FOR CLINICAL USE. This policy is a research artifact from retrospective
offline reinforcement learning; it is not clinical decision support.

Depends only on torch, safetensors and the Python standard library.

    from modeling_iql import decode_action, load_policy

    policy = load_policy(".")                      # or "model.safetensors", or a folder path
    state = policy.normalize({"heart_rate": 112, "map": 58, ...})   # raw values by name
    action = policy.select_action(state)           # int in 0..n_actions-1
    print(action, policy.decode_action(action))    # (vaso_bin, fluid_bin, label)
    probs = policy.action_probabilities(state)     # list of n_actions floats
    logits = policy(torch.zeros(8, policy.state_dim))  # (batch, n_actions), no autograd

Inputs are the *normalised* state in ``config.json["feature_names"]`` order. When a config has
no ``feature_names`` (the earlier published checkpoint), the alphabetical order of the 62
published feature names is assumed. ``policy.normalize`` builds that vector from raw values:
per feature, a missing value takes the training median, then the value is clipped, optionally
log1p-transformed and z-scored with the training statistics in ``config.json``;
``<feature>_missing`` flags are 1 when the raw value was absent (unless given explicitly).
"""

from __future__ import annotations

import array
import json
import math
import numbers
import operator
import os
import pickle
from collections.abc import Mapping, Sequence

import torch
from torch import nn

__all__ = [
    "PUBLISHED_ACTION_LABELS", "PUBLISHED_FEATURE_NAMES", "IQLPolicy", "action_grid",
    "decode_action", "load_policy",
]  # fmt: skip

#: The 25 actions of the published model (5 vasopressor x 5 IV-fluid bins, id = 5 * vaso +
#: fluid): used when config.json has no action_labels (the earlier published checkpoint).
PUBLISHED_ACTION_LABELS = [
    f"{v}×{f}"
    for v in ["no_vaso", "vaso_Q1", "vaso_Q2", "vaso_Q3", "vaso_Q4"]
    for f in ["no_fluid", "fluid_Q1", "fluid_Q2", "fluid_Q3", "fluid_Q4"]
]

#: The 62 state features of the published model, in alphabetical order (the input order the
#: earlier checkpoint was trained with; used when config.json has no feature_names).
PUBLISHED_FEATURE_NAMES = sorted(
    [
        "heart_rate", "map", "sbp", "dbp", "resp_rate", "temperature", "spo2", "gcs_total",
        "fio2_vent", "peep", "pao2", "paco2", "arterial_ph", "bicarbonate", "base_excess",
        "lactate", "creatinine", "bun", "bilirubin_total", "albumin", "sodium", "potassium",
        "glucose", "inr", "ptt", "wbc", "haemoglobin", "haematocrit", "platelets",
        "cum_iv_fluid_ml", "cum_vasopressor_dose_nor_equiv", "urine_output_4h", "age_years",
        "weight_kg", "pf_ratio", "shock_index", "hours_since_onset",
        "map_missing", "spo2_missing", "gcs_total_missing", "fio2_vent_missing", "peep_missing",
        "pao2_missing", "paco2_missing", "arterial_ph_missing", "bicarbonate_missing",
        "base_excess_missing", "lactate_missing", "creatinine_missing", "bun_missing",
        "bilirubin_total_missing", "albumin_missing", "sodium_missing", "potassium_missing",
        "glucose_missing", "inr_missing", "ptt_missing", "wbc_missing", "haemoglobin_missing",
        "platelets_missing", "urine_output_4h_missing", "pf_ratio_missing",
    ]
)  # fmt: skip


def action_grid(action_labels: Sequence[str]) -> tuple[int, int]:
    """(vasopressor bins, IV-fluid bins) of a model's ``action_labels`` (``"<vaso>×<fluid>"``
    per action id, vasopressor-major); a ValueError when they do not form such a grid."""
    parts = [x.split("×") for x in action_labels if isinstance(x, str)]
    if not parts or len(parts) != len(action_labels) or any(len(p) != 2 for p in parts):
        raise ValueError(
            f"action_labels must be one '<vaso>×<fluid>' label per action, got "
            f"{list(action_labels)[:3]}"
        )
    vaso = list(dict.fromkeys(v for v, _ in parts))
    fluid = list(dict.fromkeys(f for _, f in parts))
    if [f"{v}×{f}" for v in vaso for f in fluid] != list(action_labels):
        raise ValueError(
            f"action_labels do not form a {len(vaso)} x {len(fluid)} grid in vasopressor-major "
            "order"
        )
    return len(vaso), len(fluid)


def decode_action(
    action_id: int, action_labels: Sequence[str] | None = None
) -> tuple[int, int, str]:
    """Action id -> (vasopressor bin, IV-fluid bin, label), with id = n_fluid * vaso + fluid.

    ``action_labels``: the model's (``config.json``, or ``policy.decode_action``); by default
    the published model's 5 x 5 grid (``PUBLISHED_ACTION_LABELS``)."""
    labels = list(PUBLISHED_ACTION_LABELS if action_labels is None else action_labels)
    _, n_fluid = action_grid(labels)
    try:
        if isinstance(action_id, bool):
            raise TypeError
        action_id = operator.index(action_id)  # ints and integer array scalars, not floats
    except TypeError:
        raise ValueError(f"action id must be an integer, got {type(action_id).__name__}") from None
    if not 0 <= action_id < len(labels):
        raise ValueError(f"action id must be in 0..{len(labels) - 1}, got {action_id}")
    vaso, fluid = divmod(action_id, n_fluid)
    return vaso, fluid, labels[action_id]


class IQLPolicy(nn.Module):
    """The actor network: Linear-ReLU-Linear-ReLU-Linear, parameters ``net.0/2/4.*``."""

    def __init__(
        self,
        state_dim: int,
        n_actions: int,
        hidden_sizes: Sequence[int],
        config: Mapping | None = None,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = state_dim
        for h in hidden_sizes:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers.append(nn.Linear(d, n_actions))
        self.net = nn.Sequential(*layers)
        self._linears = [m for m in self.net if isinstance(m, nn.Linear)]
        self.state_dim, self.n_actions = state_dim, n_actions
        self.config = dict(config or {})
        self.feature_names = list(self.config.get("feature_names") or PUBLISHED_FEATURE_NAMES)
        if len(self.feature_names) != state_dim:
            raise ValueError(
                f"config lists {len(self.feature_names)} feature names but the network takes {state_dim} inputs"
            )
        labels = self.config.get("action_labels")
        if labels is None and n_actions == len(PUBLISHED_ACTION_LABELS):
            labels = PUBLISHED_ACTION_LABELS  # the earlier published checkpoint
        if labels is not None and len(labels) != n_actions:
            raise ValueError(
                f"config lists {len(labels)} action labels but the network has {n_actions} actions"
            )
        #: One label per action id, "<vaso>×<fluid>" (None: config.json names no grid).
        self.action_labels = None if labels is None else list(labels)

    def decode_action(self, action_id: int) -> tuple[int, int, str]:
        """Action id -> (vasopressor bin, IV-fluid bin, label) on this model's action grid."""
        if self.action_labels is None:
            raise ValueError(
                "this model's config.json has no action_labels: its action grid is unknown"
            )
        return decode_action(action_id, self.action_labels)

    # ------------------------------------------------------------------ inference
    _CHUNK = 4096  # rows per block: keeps the hidden activations in cache for large batches

    def _block(self, h: torch.Tensor) -> torch.Tensor:
        layers = self._linears
        last = len(layers) - 1
        for i, layer in enumerate(layers):
            h = torch.nn.functional.linear(h, layer.weight, layer.bias)
            if i < last:
                h = h.relu_()
        return h

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """The network on a validated (batch, state_dim) float32 tensor (functional, in-place ReLU:
        the same operations as ``self.net``, without module-call overhead)."""
        if x.shape[0] <= self._CHUNK:
            return self._block(x)
        return torch.cat([self._block(block) for block in x.split(self._CHUNK)])

    @torch.inference_mode()
    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, n_actions) for a real tensor of shape (batch, state_dim).

        Runs under ``torch.inference_mode()``: no autograd graph is kept, so a large batch
        needs only its activations (the result cannot be differentiated)."""
        if not isinstance(states, torch.Tensor):
            raise ValueError(
                f"expected a torch.Tensor, got {type(states).__name__}; use select_action for lists"
            )
        if states.dtype == torch.bool or states.is_complex():
            raise ValueError(f"states must be real numbers, got a {states.dtype} tensor")
        if states.dim() != 2 or states.shape[1] != self.state_dim:
            raise ValueError(f"expected shape (batch, {self.state_dim}), got {tuple(states.shape)}")
        x = states.detach().to(torch.float32)  # beyond float32 range -> inf, refused below
        if not torch.isfinite(x).all():
            bad = (~torch.isfinite(x)).nonzero()[0].tolist()
            raise ValueError(
                f"states contain NaN or inf (or a value beyond float32 range), e.g. row {bad[0]}, "
                f"feature {self.feature_names[bad[1]]!r}"
            )
        return self._logits(x)

    def _one(self, state) -> torch.Tensor:
        """Exactly one state -> a validated float32 vector of length state_dim."""
        if type(state) is list or type(state) is tuple:
            # fast path for plain Python sequences: array.array converts and type-checks in C
            if len(state) != self.state_dim:
                raise ValueError(
                    f"state must have {self.state_dim} values (one state), got {len(state)}"
                )
            try:
                buf = array.array("f", state)
            except (TypeError, OverflowError) as exc:
                raise ValueError(f"state must hold real numbers: {exc}") from None
            if any(t.__name__ in ("bool", "bool_") for t in set(map(type, state))):
                raise ValueError("state must hold real numbers, got bool")
            # float32 values cannot overflow a float64 sum of 62 terms: finite sum <=> all finite
            if not math.isfinite(sum(buf)):
                raise ValueError(self._nonfinite(buf))
            return torch.frombuffer(buf, dtype=torch.float32)
        if isinstance(state, torch.Tensor):
            x = state.detach()
        else:
            kind = getattr(getattr(state, "dtype", None), "kind", None)  # numpy arrays
            if kind is not None and kind not in "fiu":
                raise ValueError(
                    f"state must hold real numbers, got an array of dtype {state.dtype}"
                )
            try:  # numpy arrays and other array-likes
                x = torch.as_tensor(state)
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(
                    f"state must be a list, tuple, array or tensor, got {type(state).__name__}"
                ) from None
        if x.dtype == torch.bool or x.is_complex():
            raise ValueError(f"state must hold real numbers, got dtype {x.dtype}")
        shape = tuple(x.shape)
        if shape not in ((self.state_dim,), (1, self.state_dim)):
            raise ValueError(
                f"select_action takes exactly one state of shape ({self.state_dim},), got shape "
                f"{shape}; use policy(tensor) for a batch of shape (batch, {self.state_dim})"
            )
        x = x.to(torch.float32).reshape(-1)
        if not torch.isfinite(x).all():
            raise ValueError(self._nonfinite(x.tolist()))
        return x

    def _nonfinite(self, values) -> str:
        j = next(i for i, v in enumerate(values) if not math.isfinite(v))
        return (
            f"state contains NaN or inf (or a value beyond float32 range): feature "
            f"{self.feature_names[j]!r} (position {j}) = {values[j]}"
        )

    def _vector_logits(self, v: torch.Tensor) -> torch.Tensor:
        """Logits for one state vector: matrix-vector products (cheaper than 1-row matmuls)."""
        layers = self._linears
        last = len(layers) - 1
        for i, layer in enumerate(layers):
            v = torch.addmv(layer.bias, layer.weight, v)
            if i < last:
                v = v.relu_()
        return v

    @torch.inference_mode()
    def select_action(self, state) -> int:
        """Greedy action id for one normalised state."""
        return int(self._vector_logits(self._one(state)).argmax())

    @torch.inference_mode()
    def action_probabilities(self, state) -> list[float]:
        """Softmax of the actor's logits for one normalised state."""
        return torch.softmax(self._vector_logits(self._one(state)), dim=0).tolist()

    # ------------------------------------------------------------------ preprocessing
    def normalize(self, raw_features: Mapping[str, float | None]) -> list[float]:
        """Raw values by feature name -> the normalised input vector (see module docstring)."""
        if not isinstance(raw_features, Mapping):
            raise ValueError(
                f"raw_features must be a mapping of feature name to value, got {type(raw_features).__name__}"
            )
        stats = self.config.get("normalization")
        if not stats:
            raise ValueError(
                "this model's config.json has no 'normalization' statistics; pass normalised states"
            )
        unknown = sorted(set(raw_features) - set(self.feature_names))
        if unknown:
            raise ValueError(f"unknown feature name(s): {unknown[:5]}")
        out = []
        for name in self.feature_names:
            if name.endswith("_missing") and name not in stats:
                base = name[: -len("_missing")]
                given = raw_features.get(name)
                if given is None:
                    out.append(float(raw_features.get(base) is None))
                    continue
                if not isinstance(given, numbers.Real) or given not in (0, 1):
                    raise ValueError(
                        f"{name}: a missingness flag must be 0 or 1 (or left out), got {given!r}"
                    )
                out.append(float(given))
                continue
            s = stats[name]
            value = raw_features.get(name)
            if value is None:
                value = s["median"]
            if (
                isinstance(value, bool)
                or type(value).__name__ in ("bool", "bool_")
                or not isinstance(value, numbers.Real)
                or not math.isfinite(value)
            ):
                raise ValueError(f"{name}: expected a finite number, got {value!r}")
            x = min(max(float(value), s["clip_low"]), s["clip_high"])
            if s.get("transform") == "log1p":
                x = math.log1p(max(x, 0.0))
            out.append((x - s["mean"]) / s["std"])
        return out


def _state_dict(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except SafetensorError as exc:
            raise ValueError(
                f"{path}: not a readable safetensors file - truncated or damaged ({exc}); "
                "download or export the model repository again"
            ) from None
    refused = (
        f"{path}: refused: not a plain tensor file (only tensors are loaded, never pickled "
        "Python objects); use model.safetensors - safetensors is the format"
    )
    try:  # .bin fallback: never unpickle arbitrary objects
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError):
        raise ValueError(refused) from None  # torch's own message suggests the unsafe way
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(refused)
    return state


def load_policy(path_or_dir: str | os.PathLike = ".") -> IQLPolicy:
    """Load ``model.safetensors`` (or a ``.bin`` fallback) and ``config.json`` next to it."""
    path = os.fspath(path_or_dir)
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
    if os.path.isdir(path):
        st, binary = (
            os.path.join(path, "model.safetensors"),
            os.path.join(path, "pytorch_model.bin"),
        )
        path = st if os.path.isfile(st) else binary
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no model.safetensors (or pytorch_model.bin) found at {path_or_dir}"
        )
    config: dict = {}
    cfg_path = os.path.join(folder, "config.json")
    if os.path.isfile(cfg_path):
        try:
            with open(cfg_path, encoding="utf-8") as fh:
                config = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"{cfg_path}: not valid JSON ({exc}); download or export the model repository again"
            ) from None
        if not isinstance(config, dict):
            raise ValueError(
                f"{cfg_path}: config.json must hold a JSON object, found {type(config).__name__}"
            )
        _check_normalization(cfg_path, config)
    state = _state_dict(path)
    weights = sorted(
        (k for k in state if k.startswith("net.") and k.endswith(".weight")),
        key=lambda k: int(k.split(".")[1]),
    )
    if not weights:
        raise ValueError(
            f"{path}: no actor weights (expected keys net.0.weight, net.2.weight, ...)"
        )
    state_dim = int(config.get("state_dim", state[weights[0]].shape[1]))
    n_actions = int(config.get("n_actions", state[weights[-1]].shape[0]))
    hidden = config.get("hidden_sizes") or [int(state[k].shape[0]) for k in weights[:-1]]
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(
            f"{path}: tensor {bad[0]!r} holds NaN or inf values (a diverged training run); "
            "refusing to load it"
        )
    policy = IQLPolicy(state_dim, n_actions, hidden, config)
    _check_fit(policy, state, path, cfg_path, hidden)
    policy.load_state_dict(state)
    policy.eval()
    return policy


def _check_fit(policy: IQLPolicy, state: Mapping, path: str, cfg_path: str, hidden) -> None:
    """Every tensor the network needs, none it does not, each of the right shape."""
    expected = policy.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    net = (
        f"the network of {cfg_path} (state_dim {policy.state_dim}, hidden_sizes "
        f"{list(hidden)}, n_actions {policy.n_actions})"
    )
    if missing or extra:
        what = []
        if missing:
            what.append(f"missing tensor(s) {missing[:5]}")
        if extra:
            what.append(f"unexpected tensor(s) {extra[:5]}")
        raise ValueError(f"{path}: {' and '.join(what)} for {net}")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise ValueError(
                f"{path}: tensor {key!r} has shape {list(state[key].shape)} but {net} "
                f"expects {list(value.shape)}"
            )


def _real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _check_normalization(cfg_path: str, config: Mapping) -> None:
    """Per-feature statistics that ``normalize`` can use: finite mean, median and clip bounds
    (clip_low <= clip_high), a finite std > 0, transform identity or log1p."""
    stats = config.get("normalization")
    if stats is None:
        return
    if not isinstance(stats, Mapping):
        raise ValueError(f"{cfg_path}: normalization must be an object of per-feature statistics")
    for name, s in stats.items():
        where = f"{cfg_path}: normalization of feature {name!r}"
        if not isinstance(s, Mapping):
            raise ValueError(f"{where} must be an object, found {s!r}")
        for key in ("mean", "median", "clip_low", "clip_high"):
            if not _real(s.get(key)):
                raise ValueError(f"{where}: {key} must be a finite number, found {s.get(key)!r}")
        std = s.get("std")
        if not _real(std) or std <= 0:
            raise ValueError(
                f"{where}: std must be a finite number > 0 (values are divided by it), "
                f"found {std!r}"
            )
        if s["clip_low"] > s["clip_high"]:
            raise ValueError(
                f"{where}: clip_low {s['clip_low']!r} is above clip_high {s['clip_high']!r}"
            )
        if s.get("transform") not in (None, "identity", "log1p"):
            raise ValueError(
                f"{where}: transform must be 'identity' or 'log1p', found {s.get('transform')!r}"
            )
