"""The action grid of a replay: vasopressor bins x IV-fluid bins, read from its meta.

An action id is ``n_fluid * vaso_bin + fluid_bin`` (vasopressor first, then fluid). The build
writes one label per action to the replay meta (``action_labels``, ``"<vaso>×<fluid>"`` in id
order, from ``actions.vaso_bins`` and ``actions.fluid_bins`` of ``configs/build.yaml``); the
grid is read back from those labels, so it follows whatever the build was configured with.
Torch-free: the report and the evaluation use it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sepsisrl.contracts import ReplayMeta

#: Separator of the two bin names in an action label (``dataset.actions.action_labels``).
LABEL_SEPARATOR = "×"


@dataclass(frozen=True)
class ActionGrid:
    n_vaso: int
    n_fluid: int

    @property
    def n_actions(self) -> int:
        return self.n_vaso * self.n_fluid

    def bins(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(vasopressor bin, IV-fluid bin) of each action id."""
        return actions // self.n_fluid, actions % self.n_fluid

    def shares(self, actions: np.ndarray) -> np.ndarray:
        """Share of ``actions`` in each cell, shape (n_vaso, n_fluid) (rows: vasopressor bin)."""
        counts = np.bincount(actions, minlength=self.n_actions)
        return counts.reshape(self.n_vaso, self.n_fluid) / max(len(actions), 1)

    def describe(self) -> str:
        """The grid in words (the ``action_space`` of a model repository's config.json)."""
        return (
            f"{self.n_vaso} vasopressor bins x {self.n_fluid} IV-fluid bins, "
            f"action = {self.n_fluid} * vaso_bin + fluid_bin"
        )

    @classmethod
    def from_labels(cls, labels: Sequence[str], where: str = "action_labels") -> ActionGrid:
        """The grid the labels spell (``"<vaso>×<fluid>"``, vasopressor-major id order); a
        ValueError naming ``where`` when they do not form one."""
        if not labels or not all(
            isinstance(x, str) and x.count(LABEL_SEPARATOR) == 1 for x in labels
        ):
            raise ValueError(
                f"{where}: expected one '<vaso>{LABEL_SEPARATOR}<fluid>' label per action, "
                f"found {list(labels)[:3]}"
            )
        parts = [x.split(LABEL_SEPARATOR) for x in labels]
        vaso = list(dict.fromkeys(v for v, _ in parts))
        fluid = list(dict.fromkeys(f for _, f in parts))
        grid = cls(len(vaso), len(fluid))
        expected = [f"{v}{LABEL_SEPARATOR}{f}" for v in vaso for f in fluid]
        if list(labels) != expected:
            raise ValueError(
                f"{where}: the labels do not form a {grid.n_vaso} x {grid.n_fluid} grid in "
                f"vasopressor-major order (expected {expected[:3]} ...)"
            )
        return grid


def grid_of_meta(meta: ReplayMeta, where: str = "meta.json") -> ActionGrid | None:
    """The action grid of a replay meta (``action_labels``), or None when it has no labels or
    its labels do not describe a vasopressor x fluid grid (an external dataset: ``action_labels``
    is optional in the replay contract, and plain action names are allowed); a grid whose size
    differs from ``n_actions`` is an error naming ``where``."""
    if meta.action_labels is None:  # an external dataset that names no actions
        return None
    try:
        grid = ActionGrid.from_labels(meta.action_labels, f"{where} action_labels")
    except ValueError:
        return None
    if grid.n_actions != meta.n_actions:
        raise ValueError(
            f"{where}: action_labels form a {grid.n_vaso} x {grid.n_fluid} grid but n_actions "
            f"is {meta.n_actions}"
        )
    return grid
