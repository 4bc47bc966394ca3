"""bench/magic.py's MAGIC blend (docs/evaluate.md item 16): its partial estimates run from the
FQE to the evaluation's WDR, and its weights minimise the estimated error over the simplex."""

from __future__ import annotations

import numpy as np
import pytest

from sepsisrl.ope.importance import wdr

from .conftest import load_bench


@pytest.fixture(scope="module")
def magic():
    return load_bench("magic.py")


def test_partial_estimates_run_from_the_fqe_to_the_wdr(magic):
    rng = np.random.default_rng(0)
    w = rng.random((6, 4)) * (rng.random((6, 4)) > 0.3)
    w[:, 3] = 0.0  # a position no episode keeps weight at adds nothing
    d, v0 = rng.normal(size=(6, 4)), rng.normal(size=6)
    g = magic.partial_estimates(w, d[None], v0[None], 0.9)[0]
    assert g.shape == (5,)
    assert g[0] == pytest.approx(v0.mean())  # g(-1): the FQE alone
    assert g[-1] == pytest.approx(wdr(w, d, v0, 0.9))  # g(H-1): the WDR
    wbar = w[:, 1] / w[:, 1].sum()  # position 1's self-normalised correction, by hand
    assert g[2] - g[1] == pytest.approx(0.9 * float(wbar @ d[:, 1]))
    assert g[4] == g[3]
    counts = np.ones((2, 6))
    counts[1, :2] = [2.0, 0.0]  # a bootstrap row: episode 0 twice, episode 1 left out
    rows = magic.partial_estimates(w, d[None], v0[None], 0.9, counts)
    assert rows[0] == pytest.approx(g)
    w2, d2, v2 = np.vstack([w[:1], w[2:]]), np.vstack([d[:1], d[2:]]), np.r_[v0[:1], v0[2:]]
    w2, d2, v2 = np.vstack([w2[:1], w2]), np.vstack([d2[:1], d2]), np.r_[v2[:1], v2]
    assert rows[1] == pytest.approx(magic.partial_estimates(w2, d2[None], v2[None], 0.9)[0])


def test_the_blend_weights_minimise_the_quadratic_on_the_simplex(magic):
    # two independent unbiased estimates: inverse-variance weights
    assert magic.simplex_qp(np.diag([1.0, 4.0])) == pytest.approx([0.8, 0.2], abs=1e-6)
    # a biased estimate (b = 3) beside an unbiased one of the same variance:
    # 10 x^2 + (1 - x)^2 is least at x = 1 / 11
    a = np.eye(2) + np.outer([3.0, 0.0], [3.0, 0.0])
    assert magic.simplex_qp(a) == pytest.approx([1 / 11, 10 / 11], abs=1e-6)
    # perfectly correlated estimates, one with more variance: all weight on the other
    a = np.array([[1.0, 2.0], [2.0, 4.0]])
    assert magic.simplex_qp(a) == pytest.approx([1.0, 0.0], abs=1e-6)
    x = magic.project_simplex(np.array([2.0, 0.0, -1.0]))
    assert x == pytest.approx([1.0, 0.0, 0.0])
    x = magic.project_simplex(np.array([0.5, 0.4, 0.3]))
    assert x.sum() == pytest.approx(1.0) and (x >= 0).all()
    assert x == pytest.approx([0.5 - 0.2 / 3, 0.4 - 0.2 / 3, 0.3 - 0.2 / 3])
