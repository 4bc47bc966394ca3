"""Train-fitted state preprocessing: imputation medians and z-score normalisation.

``StatePreprocessor.fit`` sees train-split rows only; ``transform`` applies the persisted
statistics to any split. Statistics are saved as JSON (``features/preprocessing.json``) and
travel with every model, so a consumer can normalise raw values exactly as in training.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class StatePreprocessor:
    """Per-feature impute (median of observed train values) and z-score (train mean/std)."""

    def __init__(
        self, names: list[str], clip: dict[str, tuple[float, float]], log1p: set[str]
    ) -> None:
        self.names = list(names)
        self.clip = {k: (float(v[0]), float(v[1])) for k, v in clip.items()}
        self.log1p = set(log1p)
        self.median: dict[str, float] = {}
        self.mean: dict[str, float] = {}
        self.std: dict[str, float] = {}
        self.fit_info: dict[str, Any] = {}

    def fit_median(self, name: str, observed: np.ndarray | None, normal: dict[str, float]) -> None:
        """Median of the *observed* (not imputed) train values; the normal value if none."""
        vals = observed[~np.isnan(observed)] if observed is not None else np.zeros(0)
        self.median[name] = float(np.median(vals)) if len(vals) else float(normal.get(name, 0.0))

    def fit_medians(self, observed: dict[str, np.ndarray], normal: dict[str, float]) -> None:
        for name in self.names:
            self.fit_median(name, observed.get(name), normal)

    def _transformed(self, name: str, x: np.ndarray) -> np.ndarray:
        return np.log1p(np.maximum(x, 0.0)) if name in self.log1p else x

    def fit_scaler(self, train_values: np.ndarray) -> None:
        for j, name in enumerate(self.names):
            x = self._transformed(name, train_values[:, j].astype(np.float64))
            mu, sd = float(np.mean(x)), float(np.std(x))
            self.mean[name] = mu
            self.std[name] = sd if sd > 0 else 1.0

    def normalise(self, values: np.ndarray) -> np.ndarray:
        out = np.empty_like(values, dtype=np.float32)
        for j, name in enumerate(self.names):
            x = self._transformed(name, values[:, j].astype(np.float64))
            out[:, j] = (x - self.mean[name]) / self.std[name]
        return out

    def normalised_range(
        self, fill: dict[str, float] | None = None
    ) -> dict[str, tuple[float, float]]:
        """Per feature, the range every normalised value of the build lies in.

        A state value is clipped to the feature's clip range or imputed (train median of
        clipped values; zero for the treatment totals, inside their clip range), so its
        normalised value lies between the normalised clip bounds. They are computed with
        ``normalise`` itself (same float32 arithmetic; the transform and the z-score are
        monotone), so a clipped value lands exactly on its bound. A median outside the clip
        range (a configured normal value), or a ``fill`` value of a feature imputed otherwise
        (0 for ``impute: zero``), widens it.
        """
        fill = fill or {}
        inner = {
            n: [v for v in (self.median.get(n), fill.get(n)) if v is not None] for n in self.names
        }
        lo = [min([self.clip[n][0], *inner[n]]) for n in self.names]
        hi = [max([self.clip[n][1], *inner[n]]) for n in self.names]
        z = self.normalise(np.array([lo, hi], dtype=np.float64))
        return {n: (float(z[0, j]), float(z[1, j])) for j, n in enumerate(self.names)}

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": "1",
            "features": {
                name: {
                    "median": self.median.get(name),
                    "clip_low": self.clip[name][0],
                    "clip_high": self.clip[name][1],
                    "mean": self.mean[name],
                    "std": self.std[name],
                    "transform": "log1p" if name in self.log1p else "identity",
                }
                for name in self.names
            },
            "order": self.names,
            **self.fit_info,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> StatePreprocessor:
        feats = doc["features"]
        names = doc["order"]
        obj = cls(
            names,
            {n: (feats[n]["clip_low"], feats[n]["clip_high"]) for n in names},
            {n for n in names if feats[n]["transform"] == "log1p"},
        )
        obj.median = {n: feats[n]["median"] for n in names if feats[n]["median"] is not None}
        obj.mean = {n: feats[n]["mean"] for n in names}
        obj.std = {n: feats[n]["std"] for n in names}
        obj.fit_info = {
            k: v for k, v in doc.items() if k not in ("features", "order", "schema_version")
        }
        return obj
