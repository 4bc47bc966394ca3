"""Paired comparisons of two policies' FQE on the same evaluated episodes.

Two evaluations of the same split share their patients and, with the same settings, the FQE
ensemble's bootstrap of train patients: their errors are largely common. Whether one policy
is credibly worse than another is a question about the difference of their values, whose
interval is far narrower than either policy's own when the errors are shared. Each evaluation
keeps the FQE's per-episode values at the initial states (``fqe_values.safetensors``: ``v0``,
the K ensemble members' values (K, E); ``point``, the full fit's (E,); ``stay_id``, the
episodes' stays), and :func:`paired_fqe` draws the same patients and members for both.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from sepsisrl.ope.importance import BootstrapCI, paired_difference_ci

FILE = "fqe_values.safetensors"


def write_fqe_values(
    out: Path, v0: np.ndarray, point: np.ndarray | None, stay_id: np.ndarray
) -> None:
    """Keep an evaluation's FQE values at its initial states (``out/fqe_values.safetensors``)."""
    arrays = {"v0": np.ascontiguousarray(v0, dtype=np.float64),
              "stay_id": np.ascontiguousarray(stay_id, dtype=np.int64)}  # fmt: skip
    if point is not None:
        arrays["point"] = np.ascontiguousarray(point, dtype=np.float64)
    save_file(arrays, str(Path(out) / FILE))


def _read(folder: Path) -> tuple[dict[str, np.ndarray], dict] | None:
    values, metrics = Path(folder) / FILE, Path(folder) / "metrics.json"
    if not values.is_file() or not metrics.is_file():
        return None
    return load_file(str(values)), json.loads(metrics.read_text())


def paired_fqe(a: Path, b: Path) -> BootstrapCI | None:
    """The 95 % CI of V(a) - V(b) by the FQE, paired (:func:`paired_difference_ci`), from two
    evaluation folders. None when either lacks its values (an evaluation written before they
    were kept), or when the two are not comparable: other episodes, another split, or other
    bootstrap settings."""
    got_a, got_b = _read(a), _read(b)
    if got_a is None or got_b is None:
        return None
    (va, ma), (vb, mb) = got_a, got_b
    keys = ("bootstrap_resamples", "bootstrap_seed", "fqe")
    if (
        ma["split"] != mb["split"]
        or any(ma["config"][k] != mb["config"][k] for k in keys)
        or not np.array_equal(va["stay_id"], vb["stay_id"])
    ):
        return None
    cfg = ma["config"]
    return paired_difference_ci(
        (va["v0"], va.get("point")), (vb["v0"], vb.get("point")),
        cfg["bootstrap_resamples"], cfg["bootstrap_seed"],
    )  # fmt: skip
