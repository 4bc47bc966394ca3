"""Bridges between sepsisrl's artifacts and other offline-RL libraries (optional extras).

- ``d3rlpy``  a replay split as a ``d3rlpy.dataset.MDPDataset`` (:func:`to_d3rlpy`), and a
              saved d3rlpy discrete-action model as a policy that ``sepsisrl evaluate`` and
              ``sepsisrl truth`` accept (:class:`D3rlpyPolicy`); docs/d3rlpy.md

Importing this package never imports the libraries themselves: each function imports its
library when called and, when it is absent, raises an ``ImportError`` naming the extra to
install (``pip install "sepsisrl[d3rlpy]"``).
"""

from __future__ import annotations

from sepsisrl.interop.d3rlpy import (
    D3rlpyMissingError,
    D3rlpyModelError,
    D3rlpyPolicy,
    load_d3rlpy_model,
    to_d3rlpy,
    to_d3rlpy_splits,
)

__all__ = [
    "D3rlpyMissingError",
    "D3rlpyModelError",
    "D3rlpyPolicy",
    "load_d3rlpy_model",
    "to_d3rlpy",
    "to_d3rlpy_splits",
]
