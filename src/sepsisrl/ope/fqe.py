"""Fitted Q Evaluation that cannot run away: finite-horizon, clipped, bootstrapped.

Two function classes share the procedure below (``FQEConfig.model``):

- ``linear`` (default): Q(s, a) = phi(s) . w + [1, s] . u_a, a ridge regression with a shared
  value of the state and per-action deviations u_a that are linear in the state (penalised by
  ``ridge``, so rarely taken actions shrink towards the shared model rather than to noise;
  ``ridge_intercept``, opt-in, gives each action's own intercept a penalty of its own). The
  shared basis (``basis``) is ``hinge`` by default: phi(s) = [1, s, max(0, s_j - t)] with t
  the train quartiles of every feature (a piecewise-linear value of each feature); ``linear``
  keeps phi(s) = [1, s]. The point estimate comes from a fit on every train patient
  (``full_fit``); the bootstrap members below give its uncertainty (docs/evaluate.md: on the
  clinicians' own policy the members' mean was biased low by ~0.9 return units in-sample).
  Each iteration is solved in closed form (one Cholesky factor per member and penalty, reused
  by every iteration), so the fit does exactly what the regression asks - no optimiser lag,
  no SGD noise - and the penalty of every iteration is the one with the lowest held-out error
  on the member's out-of-bag patients. It is deterministic and takes seconds.
- ``mlp``: a neural Q (``hidden``) trained by Adam per iteration, warm-started from the previous
  one. Measured on the quick synthetic world (docs/evaluate.md): with a few hundred train
  episodes the held-out error stops improving within a few hundred steps, every iteration then
  under-fits its targets a little and the lag compounds over the 18 iterations (on-policy
  value 2.7 against an observed mean return of 5.5), which is why it is not the default.

Finite-horizon iterated FQE (Le, Voloshin & Yue, ICML 2019, with a frozen target per
iteration): with Q_0 = 0 and k = 1..H,

  y_k(s, a)   = clip( r + gamma (1 - d) sum_a' pi(a'|s') clip(Q_{k-1}(s', a')) )
  Q_k         = argmin_Q  mean over train transitions of (Q(s, a) - y_k)^2

where ``clip`` is the attainable return range [lo, hi] of the evaluation reward (terminal +-15:
[-15, 15]) and H is the longest train episode (capped by ``max_iterations``). Every target is a
frozen network's output (no bootstrapping on a moving target), so nothing can diverge: Q_H is
the H-step value of pi, and every reported value is inside [lo, hi] by construction. The share
of raw (unclipped) network outputs outside the range is reported; an estimate with too many is
not evaluable.

Each iteration's regression is warm-started from the previous iteration; its parameters are
averaged (an exponential moving average, which removes most of the stochastic-gradient noise
that would otherwise compound over H iterations), and it stops on the averaged network's
held-out regression error against the same frozen targets (a proper criterion: the targets do
not move within an iteration). An iteration that reaches ``max_steps`` without the held-out
error levelling off is counted as capped; a fit whose last iteration, or more than 10 % of its
iterations, was capped has not converged.

Bootstrap ensemble: ``members`` Q functions are fitted at once (batched matrix products), each
on its own resample of train PATIENTS with replacement; each member's out-of-bag patients are
its held-out set. The member values enter the confidence interval (``ope.importance``), so the
CI carries the model's own uncertainty, not only the sampling of initial states. With one
member, a ``holdout_fraction`` of train patients is held out instead.

Device (``device``, the evaluation's ``evaluate.device``): the linear model's arrays (bases,
Gram matrices, Cholesky factors, every iteration's targets, solves and held-out errors, and the
sensitivity refits of ``robust_values_many``) live in float64 on that torch device; without one
(the default, ``evaluate.device: cpu``) they are NumPy arrays. The two paths do the same
operations in the same order through ``_Numpy`` and ``_Torch`` (one code, two array
libraries); their values agree to rounding, not bit for bit (tests/test_fqe_device.py runs the
torch path on the CPU against the NumPy one). The pessimism bonus's leverages are computed
with NumPy on the host either way. The ``mlp`` model's networks, data and targets live on
the device (its batches are drawn by the CPU's generator, so the CPU draws the same ones);
``None`` and ``"cpu"`` are the same fit there.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from sepsisrl.config import yaml_defaults
from sepsisrl.rl.networks import Ensemble, NetworkOptimizer


@dataclass(frozen=True)
@yaml_defaults("evaluate", "fqe")
class FQEConfig:
    """FQE settings; defaults and their meaning: ``configs/evaluate.yaml`` (``fqe``)."""

    model: Literal["linear", "mlp"]
    ridge: tuple[float, ...]
    ridge_shared: float
    ridge_intercept: float | None
    basis: Literal["hinge", "linear"]
    hidden: tuple[int, ...]
    lr: float
    batch_size: int
    members: int
    max_iterations: int
    max_steps: int
    min_steps: int
    eval_every: int
    patience: int
    tolerance: float
    averaging: float
    holdout_rows: int
    holdout_fraction: float
    grad_clip: float
    seed: int
    full_fit: bool
    pessimism: float
    penalty_rows: Literal["all", "policy"]


@dataclass
class FQEResult:
    model: str
    horizon: int
    longest_episode: int
    members: int
    steps: int = 0
    iterations: list[dict[str, float | int | bool]] = field(default_factory=list)

    @property
    def capped_iterations(self) -> int:
        return sum(bool(it["capped"]) for it in self.iterations)

    @property
    def converged(self) -> bool:
        """The horizon covers every episode, the last iteration's regression levelled off, and
        at most 10 % of the iterations (at least one) stopped at ``max_steps``."""
        if not self.iterations or self.horizon < self.longest_episode:
            return False
        allowed = max(1, int(0.1 * len(self.iterations)))
        return not self.iterations[-1]["capped"] and self.capped_iterations <= allowed

    def to_json(self) -> dict[str, object]:
        return {
            "method": "finite-horizon iterated FQE, clipped targets, patient-bootstrap ensemble",
            "model": self.model,
            "horizon": self.horizon,
            "longest_episode": self.longest_episode,
            "members": self.members,
            "steps": self.steps,
            "capped_iterations": self.capped_iterations,
            "converged": self.converged,
            "iterations": self.iterations,
        }


def return_bounds(
    rewards: np.ndarray, dones: np.ndarray, gamma: float, horizon: int
) -> tuple[float, float]:
    """The attainable discounted-return range of a reward.

    A reward paid only on terminal transitions (the evaluation reward) bounds a return by
    [min(0, r_min), max(0, r_max)]; otherwise by the geometric sum over ``horizon`` steps.
    """
    r = np.asarray(rewards, np.float64)
    if len(r) == 0:
        return 0.0, 0.0
    lo, hi = min(0.0, float(r.min())), max(0.0, float(r.max()))
    if np.any(r[np.asarray(dones) == 0] != 0):
        scale = (1 - gamma**horizon) / (1 - gamma) if gamma < 1 else float(horizon)
        lo, hi = lo * scale, hi * scale
    return lo, hi


def _forward(
    ens: Ensemble, x: torch.Tensor, keep: bool = False
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Member-wise forward pass: x (K, n, in) -> (K, n, out), each member on its own rows."""
    acts, h, last = [x], x, len(ens.weights) - 1
    for i, (w, b) in enumerate(zip(ens.weights, ens.biases, strict=True)):
        h = torch.bmm(h, w).add_(b)
        if i < last:
            h = h.relu_()
            if keep:
                acts.append(h)
    return h, acts


class _Numpy:
    """The linear FQE's array operations on NumPy arrays (no device: the CPU default)."""

    name = "numpy"  # (the setup cache's key: a torch path on the CPU is "cpu")
    device = torch.device("cpu")

    @staticmethod
    def asarray(x: np.ndarray) -> np.ndarray:
        return x

    index = asarray
    to_numpy = asarray
    contiguous = staticmethod(np.ascontiguousarray)
    einsum = staticmethod(np.einsum)
    clip = staticmethod(np.clip)
    concatenate = staticmethod(np.concatenate)

    @staticmethod
    def zeros(shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape)

    @staticmethod
    def swap01(x: np.ndarray) -> np.ndarray:
        return x.transpose(1, 0, 2)

    @staticmethod
    def arange(n: int) -> np.ndarray:
        return np.arange(n)

    @staticmethod
    def to_torch(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x)

    @staticmethod
    def from_torch(t: torch.Tensor) -> np.ndarray:
        return t.numpy()


class _Torch:
    """The same operations on float64 (int64 for indices) torch tensors on ``device``."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.name = device, str(device)

    def asarray(self, x: np.ndarray) -> torch.Tensor:
        """A NumPy array on the device, its dtype kept (arithmetic promotes as NumPy's)."""
        return torch.as_tensor(np.asarray(x), device=self.device)

    def index(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x, np.int64), device=self.device)

    @staticmethod
    def to_numpy(x: torch.Tensor) -> np.ndarray:
        return x.cpu().numpy()

    @staticmethod
    def contiguous(x: torch.Tensor) -> torch.Tensor:
        return x.contiguous()

    @staticmethod
    def einsum(equation: str, *operands: torch.Tensor) -> torch.Tensor:
        """``torch.einsum`` in float64 (NumPy's promotes mixed operands; torch's refuses)."""
        return torch.einsum(equation, *(t.to(torch.float64) for t in operands))

    @staticmethod
    def clip(x: torch.Tensor, lo: float, hi: float, out: torch.Tensor | None = None):
        return torch.clamp(x, lo, hi, out=out)

    @staticmethod
    def concatenate(parts: list[torch.Tensor], axis: int = 0) -> torch.Tensor:
        return torch.cat(parts, axis)

    def zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(shape, dtype=torch.float64, device=self.device)

    @staticmethod
    def swap01(x: torch.Tensor) -> torch.Tensor:
        return x.permute(1, 0, 2)

    def arange(self, n: int) -> torch.Tensor:
        return torch.arange(n, device=self.device)

    @staticmethod
    def to_torch(x: torch.Tensor) -> torch.Tensor:
        return x

    @staticmethod
    def from_torch(t: torch.Tensor) -> torch.Tensor:
        return t


def _ops(device: str | torch.device | None) -> _Numpy | _Torch:
    """NumPy without a device; torch on ``device`` otherwise (a CUDA device must exist)."""
    if device is None:
        return _Numpy()
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"FQE device {device!r}: no CUDA device is available (evaluate.device)")
    return _Torch(dev)


class FQE:
    def __init__(
        self,
        state_dim: int,
        n_actions: int,
        gamma: float,
        cfg: FQEConfig = FQEConfig(),
        bounds: tuple[float, float] = (-15.0, 15.0),
        device: str | torch.device | None = None,
    ) -> None:
        """``device``: the torch device of the linear model's arrays (module docstring);
        None: NumPy on the CPU."""
        self.ops = _ops(device)
        if cfg.members < 1:
            raise ValueError(f"FQE members must be >= 1, got {cfg.members}")
        if cfg.model not in ("linear", "mlp"):
            raise ValueError(f"FQE model must be 'linear' or 'mlp', got {cfg.model!r}")
        if cfg.basis not in ("linear", "hinge"):
            raise ValueError(f"FQE basis must be 'linear' or 'hinge', got {cfg.basis!r}")
        if not cfg.pessimism >= 0:
            raise ValueError(f"FQE pessimism must be >= 0, got {cfg.pessimism}")
        if cfg.pessimism > 0 and cfg.model != "linear":
            raise ValueError("FQE pessimism needs the linear model (fqe.model: linear)")
        if cfg.penalty_rows not in ("all", "policy"):
            raise ValueError(
                f"FQE penalty_rows must be 'all' or 'policy', got {cfg.penalty_rows!r}"
            )
        if cfg.penalty_rows == "policy" and cfg.model != "linear":
            raise ValueError("FQE penalty_rows: policy needs the linear model (fqe.model: linear)")
        if cfg.ridge_intercept is not None and not cfg.ridge_intercept > 0:
            raise ValueError(f"FQE ridge_intercept must be > 0 or null, got {cfg.ridge_intercept}")
        # pessimism after a linear fit: (sigma, each member's penalty index, the full fit's)
        self._pess: tuple[float, np.ndarray, int | None] | None = None
        self.W: np.ndarray | None = None  # linear model: (K, coefficients)
        self.W_full: np.ndarray | None = None  # linear model, full fit: (coefficients,)
        self.knots: tuple[np.ndarray, np.ndarray] | None = None  # basis="hinge": (columns, knots)
        self.n_actions = n_actions
        self.cfg, self.gamma = cfg, gamma
        self.lo, self.hi = float(bounds[0]), float(bounds[1])
        if cfg.model == "mlp":
            torch.manual_seed(cfg.seed)  # initialised on the CPU, then moved: the same weights
            self.q = Ensemble(cfg.members, state_dim, n_actions, cfg.hidden).to(self.ops.device)
            self.optimizer = NetworkOptimizer({"q": (self.q, cfg.lr)}, cfg.grad_clip)

    # ------------------------------------------------------------------ maths
    @torch.no_grad()
    def _write_gradient(self, s: torch.Tensor, a: torch.Tensor, y: torch.Tensor) -> None:
        """Gradient of L = sum_k mean_b (Q_k(s_kb, a_kb) - y_kb)^2 into ``.grad`` buffers.

        s: (K, B, D), a and y: (K, B). dL/dQ_k(s, a') = 2 (Q_k(s, a) - y) / B at the logged
        action and 0 elsewhere, back-propagated by ``Ensemble.backward_cached``.
        """
        q_all, acts = _forward(self.q, s, keep=True)
        at_a = a.unsqueeze(2)
        residual = q_all.gather(2, at_a).sub_(y.unsqueeze(2)).mul_(2.0 / a.shape[1])
        self.q.backward_cached(acts, torch.zeros_like(q_all).scatter_(2, at_a, residual))

    @torch.no_grad()
    def _values(self, states: torch.Tensor, pi: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
        """sum_a pi(a|s) clip(Q_k(s, a)) of every member: (K, N)."""
        if self.cfg.model == "linear":
            q = self.q_values(states)
            return torch.from_numpy((q * pi.numpy().astype(np.float64)[None]).sum(2))
        out, dev = [], self.ops.device
        for i in range(0, len(states), chunk):
            x = states[i : i + chunk].to(dev).unsqueeze(0).expand(self.cfg.members, -1, -1)
            q = _forward(self.q, x)[0].clamp_(self.lo, self.hi)
            out.append((q * pi[i : i + chunk].to(dev).unsqueeze(0)).sum(2))
        return torch.cat(out, 1) if out else torch.zeros(self.cfg.members, 0, device=dev)

    @torch.no_grad()
    def q_values(self, states: torch.Tensor, raw: bool = False, chunk: int = 65536) -> np.ndarray:
        """Q_k(s, .) of every member, (K, N, A); clipped to the attainable range unless raw.
        With ``pessimism`` (linear model), the clipped values are lower confidence bounds
        (``_bonus``); ``raw`` values are the fits' own, without it."""
        if self.cfg.model == "linear":
            q = self._linear_q(states.numpy())
            if raw:
                return q
            if self._pess is not None:
                sigma, js, _ = self._pess
                bonus = self._bonus(states.numpy(), sigma, sorted(set(js.tolist())))
                q -= np.stack([bonus[j] for j in js])
            return np.clip(q, self.lo, self.hi)
        out = []
        for i in range(0, len(states), chunk):
            x = states[i : i + chunk].to(self.ops.device)
            q = _forward(self.q, x.unsqueeze(0).expand(self.cfg.members, -1, -1))[0]
            out.append(q if raw else q.clamp_(self.lo, self.hi))
        return torch.cat(out, 1).cpu().numpy()

    def state_values(self, states: torch.Tensor, pi: torch.Tensor) -> np.ndarray:
        """V_k(s) = sum_a pi(a|s) clip(Q_k(s, a)) of every member: (K, N), within [lo, hi]."""
        return self._values(states, pi).cpu().numpy()

    # ------------------------------------------------------------------ fit
    def _member_rows(self, groups: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """In-bag rows (with bootstrap multiplicity) and held-out rows of every member."""
        cfg = self.cfg
        rng = np.random.default_rng(cfg.seed + 7919)
        uniq, inverse = np.unique(groups, return_inverse=True)
        rows = np.arange(len(groups))
        fit, held = [], []
        for _ in range(cfg.members):
            if cfg.members == 1:
                n_held = max(1, round(cfg.holdout_fraction * len(uniq))) if len(uniq) > 1 else 0
                counts = np.ones(len(uniq), np.int64)
                counts[rng.choice(len(uniq), size=n_held, replace=False)] = 0
            else:
                counts = rng.multinomial(len(uniq), np.full(len(uniq), 1.0 / len(uniq)))
            per_row = counts[inverse]
            fit.append(np.repeat(rows, per_row))
            out_rows = rows[per_row == 0]
            if len(out_rows) > cfg.holdout_rows:
                out_rows = np.sort(rng.choice(out_rows, size=cfg.holdout_rows, replace=False))
            held.append(out_rows if len(out_rows) else rows[: min(len(rows), cfg.holdout_rows)])
        return fit, held

    # ------------------------------------------------------------------ linear model
    def _bases(self, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shared basis, per-action basis) of states: [1, s] for the per-action deviations;
        the shared part adds, with ``basis="hinge"``, max(0, s_j - t) at the train quartiles
        t of every feature (a piecewise-linear value of each feature, fitted on train)."""
        x = np.asarray(states, np.float64)
        lin = np.hstack([np.ones((len(x), 1)), x])
        if self.knots is None:
            return lin, lin
        cols, knots = self.knots
        return np.hstack([lin, np.maximum(0.0, x[:, cols] - knots)]), lin

    def _fit_knots(self, states: np.ndarray) -> None:
        self.knots = None
        if self.cfg.basis != "hinge":
            return
        x = np.asarray(states, np.float64)
        cols, knots = [], []
        for j in range(x.shape[1]):
            lo, hi = x[:, j].min(), x[:, j].max()
            for t in np.unique(np.quantile(x[:, j], (0.25, 0.5, 0.75))):
                if lo < t < hi:  # a knot at an end of the range adds nothing
                    cols.append(j)
                    knots.append(t)
        self.knots = (np.array(cols, dtype=np.int64), np.array(knots))

    @staticmethod
    def _q(ps: np.ndarray, pa: np.ndarray, beta: np.ndarray, n_actions: int) -> np.ndarray:
        """Q(s, .) (n, A) of coefficients beta = [w (Ds), u_0 (Da), ..., u_{A-1} (Da)]."""
        ds, da = ps.shape[1], pa.shape[1]
        return (ps @ beta[:ds])[:, None] + pa @ beta[ds:].reshape(n_actions, da).T

    def _linear_q(self, states: np.ndarray) -> np.ndarray:
        if self.W is None:
            raise RuntimeError("the FQE has not been fitted")
        ps, pa = self._bases(states)
        return np.stack([self._q(ps, pa, b, self.n_actions) for b in self.W])

    def _setup(self, train: dict[str, torch.Tensor], groups: np.ndarray) -> _LinearSetup:
        """The policy-independent part of a linear fit (bases, member resamples, Gram matrices
        and Cholesky factors), shared by every policy evaluated on the same train split in
        this process: the last one is kept (``_SETUPS``), keyed by the bytes it is made of."""
        cfg = self.cfg
        digest = hashlib.blake2b(digest_size=16)
        for part in (train["s"], train["a"], train["s_next"]):
            digest.update(np.ascontiguousarray(part.numpy()).tobytes())
        digest.update(np.ascontiguousarray(np.asarray(groups)).tobytes())
        key = (digest.hexdigest(), self.n_actions, repr(cfg), self.ops.name)
        if _SETUPS.get("key") != key:
            _SETUPS.clear()  # one at a time: free the previous split's factors first
            _SETUPS.update(key=key, setup=_LinearSetup(self, train, groups))
        return _SETUPS["setup"]

    def _fit_linear(
        self, train: dict[str, torch.Tensor], groups: np.ndarray, result: FQEResult
    ) -> FQEResult:
        """Closed-form ridge per iteration: minimise over Q(s, a) = ps(s) . w + pa(s) . u_a
        sum_i c_i (y_i - Q(s_i, a_i))^2 / n + ridge_shared |w|^2 + ridge |u|^2 (intercept free).
        Every member, penalty and the full fit are solved together per iteration."""
        cfg, ops = self.cfg, self.ops
        su = self._setup(train, groups)
        self.knots = su.knots
        r = ops.asarray(train["r"].numpy().astype(np.float64))
        if "cont" in train:  # a per-transition discount (bench/hourly_fqe.py's hourly chain)
            cont = ops.asarray(train["cont"].numpy().astype(np.float64))
        else:
            cont = ops.asarray(self.gamma * (1.0 - train["done"].numpy().astype(np.float64)))
        pi_host = train["pi_next"].numpy().astype(np.float64)
        pi_next = ops.asarray(pi_host)
        K, n, penalties = cfg.members, len(r), su.penalties
        held_w = None  # penalty_rows: policy - each held-out row weighted by pi(logged a | s)
        if cfg.penalty_rows == "policy":
            if "pi_logged" not in train:
                raise ValueError("FQE penalty_rows: policy needs train['pi_logged'], pi's "
                                 "probability of each row's logged action")  # fmt: skip
            held_w = ops.asarray(train["pi_logged"].numpy().astype(np.float64))
        greedy = _greedy(pi_host, self.n_actions, ops)
        self._robust_inputs = (su, r, cont, pi_next, [])  # for robust_values (sensitivity)
        W = ops.zeros((K, su.size))
        W_full = ops.zeros((su.size,)) if cfg.full_fit else None
        last_j, last_full = [0] * K, 0  # the penalty indices of the previous iteration's fits
        for k in range(1, result.horizon + 1):
            # frozen targets: every member (and the full fit, last) from its own previous iterate
            betas = W if W_full is None else ops.concatenate([W, W_full[None]], 0)
            if k > 1:
                minus = None
                if cfg.pessimism > 0:  # each fit's own penalty; sigma of the last iteration
                    sigma = math.sqrt(result.iterations[-1]["holdout_mse"])
                    js = [*last_j, *([] if W_full is None else [last_full])]
                    scale = cfg.pessimism * sigma / math.sqrt(n)
                    lev = {j: np.sqrt(su.leverage_next(j)) for j in set(js)}
                    minus = ops.asarray(np.stack([scale * lev[j] for j in js]))  # (M, n, A)
                v_next = su.next_values(betas, pi_next, self.lo, self.hi, minus, greedy)
            else:
                v_next = ops.zeros((len(betas), n))
            y = ops.clip(r + cont * v_next, self.lo, self.hi)  # (K [+ 1], n)
            b = su.rhs(su.c * y[:K])  # (K, size)
            b_all = ops.to_torch(b)[:, None, :, None].expand(-1, len(penalties), -1, -1)
            beta = ops.from_torch(_chol_solve(b_all, su.factors)[..., 0])  # (K, P, size)
            held_mse = su.held_errors(beta, y[:K], held_w)  # (K, P)
            best = ops.to_numpy(held_mse.argmin(1))
            last_j = [int(j) for j in best]
            rows, cols = ops.arange(K), ops.index(best)
            W = beta[rows, cols]
            chosen = [penalties[j] for j in best]
            record = {"iteration": k, "steps": 0, "capped": False,
                      "holdout_mse": float(held_mse[rows, cols].mean()),
                      "ridge": chosen}  # fmt: skip
            if W_full is not None:
                # the full fit takes the penalty most of the members chose on their out-of-bag
                # patients (it has no held-out patients of its own)
                j = int(np.median(best))
                b_full = ops.to_torch(su.rhs(y[K:] / n))[0, :, None]
                W_full = ops.from_torch(_chol_solve(b_full, su.full_factor(j))[:, 0])
                record["ridge_full"] = penalties[j]
                self._robust_inputs[4].append(j)
                last_full = j
            result.iterations.append(record)
        self.W = ops.to_numpy(W)  # the fitted coefficients are read on the host
        self.W_full = None if W_full is None else ops.to_numpy(W_full)
        if cfg.pessimism > 0:
            self._pess = (math.sqrt(result.iterations[-1]["holdout_mse"]), np.array(last_j),
                          None if self.W_full is None else last_full)  # fmt: skip
        return result

    def robust_values(
        self,
        b_next: np.ndarray,
        init_states: np.ndarray,
        pi_init: np.ndarray,
        b_init: np.ndarray,
        lam: float,
        side: Literal["low", "high"],
    ) -> np.ndarray | None:
        """V(s0) at ``init_states`` of the full fit redone with the Bellman targets of the
        marginal sensitivity model at ``lam`` (ope/sensitivity.py): the logged next states of an
        (s, a) may over-represent better (``low``) or worse (``high``) outcomes than acting on s
        alone would give. Within that model the worst (best) case reweights the outcomes
        y = r + gamma V(s') by 1/lam.. lam in odds, which puts the upper weight on the lowest
        (highest) 1/(1 + lam) share of outcomes and shifts Q(s, a) by
        (1 - b(a|s)) (lam - 1/lam) E[eps 1{eps <= q}], eps the outcome minus Q(s, a); eps's
        distribution given (s, a) is approximated by the pooled residuals of action a at that
        iteration. ``b_next``: b(a|s') at the train next states (n, A). Linear model with the
        full fit only (None otherwise); lam = 1 gives the full fit's values."""
        out = self.robust_values_many(b_next, init_states, pi_init, b_init, [(lam, side)])
        return None if out is None else out[0]

    def robust_values_many(
        self,
        b_next: np.ndarray,
        init_states: np.ndarray,
        pi_init: np.ndarray,
        b_init: np.ndarray,
        cases: list[tuple[float, Literal["low", "high"]]],
        budget_bytes: int = 256 * 2**20,
    ) -> list[np.ndarray] | None:
        """:meth:`robust_values` of every (lam, side) of ``cases``, their fits iterated
        together: each iteration's Q at the train states and next states is one matrix product
        over all cases and their ridge systems one solve with a column per case (the full fit's
        factor is shared). Cases go in groups whose (n, cases, A) arrays stay within
        ``budget_bytes``. Each case's values are those it has alone, up to floating-point
        rounding of the batched products."""
        if self.cfg.model != "linear" or self.W_full is None:
            return None
        ops = self.ops
        su, r, cont, pi_next, full_j = self._robust_inputs
        n, A = len(r), self.n_actions
        group = max(1, int(budget_bytes // max(1, 2 * 8 * n * A)))
        logged = _ByAction(su.a_host, A, ops)
        greedy = _greedy(ops.to_numpy(pi_next), A, ops)
        b_greedy = None if greedy is None else ops.asarray(b_next[np.arange(n), greedy.host])
        b_next = ops.asarray(b_next)
        out: list[np.ndarray] = []
        ps0, pa0 = (ops.asarray(x) for x in self._bases(init_states))
        pi_init, b_init = ops.asarray(pi_init), ops.asarray(b_init)
        for g in range(0, len(cases), group):
            part = cases[g : g + group]
            lams = np.array([float(lam) for lam, _ in part])
            c_lam = lams - 1.0 / lams  # (L,)
            tau = 1.0 / (1.0 + lams)
            L = len(part)
            beta = ops.zeros((L, su.size))
            tail = np.zeros((L, A))  # per case and action: E[eps 1{eps in the tail}]
            for k, j in enumerate(full_j, start=1):
                shift = ops.asarray(c_lam[:, None] * tail)  # (L, A)
                if k > 1 and greedy is not None:  # a deterministic policy: its action only
                    v_next = _q_at(su.ps_next, su.pa_next, beta, A, greedy).T
                    v_next += (1.0 - b_greedy)[None, :] * shift[:, greedy.actions]
                    ops.clip(v_next, self.lo, self.hi, out=v_next)
                elif k > 1:
                    q_next = self._q_many(su.ps_next, su.pa_next, beta, A)  # (n, L, A)
                    q_next += (1.0 - b_next)[:, None, :] * shift[None]
                    ops.clip(q_next, self.lo, self.hi, out=q_next)
                    v_next = ops.einsum("nla,na->ln", q_next, pi_next)
                    del q_next
                else:
                    v_next = ops.zeros((L, n))
                y = ops.clip(r + cont * v_next, self.lo, self.hi)  # (L, n)
                rhs = ops.to_torch(ops.contiguous(su.rhs(y / n).T))  # (size, L)
                beta = ops.contiguous(ops.from_torch(_chol_solve(rhs, su.full_factor(j))).T)
                live = np.flatnonzero(c_lam > 0)
                if len(live):
                    fitted = _q_at(su.ps, su.pa, beta[ops.index(live)], A, logged)  # (n, live)
                    eps = ops.to_numpy(y[ops.index(live)] - fitted.T)  # (live, n)
                    for i, c in enumerate(live):
                        tail[c] = _residual_tails(eps[i], logged, float(tau[c]), part[c][1])
            q0 = (
                self._q_many(ps0, pa0, beta, A)
                + (1.0 - b_init)[:, None, :] * ops.asarray(c_lam[:, None] * tail)[None]
            )
            values = ops.einsum("nla,na->ln", ops.clip(q0, self.lo, self.hi), pi_init)
            out += list(ops.to_numpy(values))
        return out

    @staticmethod
    def _q_many(ps: np.ndarray, pa: np.ndarray, betas: np.ndarray, n_actions: int) -> np.ndarray:
        """Q(s, .) of every coefficient row of ``betas`` (L, size): (n, L, A)."""
        ds, da, L = ps.shape[1], pa.shape[1], len(betas)
        shared = ps @ betas[:, :ds].T  # (n, L)
        per = pa @ betas[:, ds:].reshape(L * n_actions, da).T  # (n, L * A)
        return per.reshape(len(ps), L, n_actions) + shared[:, :, None]

    def full_q_values(self, states: torch.Tensor, raw: bool = False) -> np.ndarray | None:
        """Q(s, .) of the fit on every train patient, (N, A) (None: no full fit)."""
        if getattr(self, "W_full", None) is None:
            return None
        ps, pa = self._bases(states.numpy())
        q = self._q(ps, pa, self.W_full, self.n_actions)
        if raw:
            return q
        if self._pess is not None and self._pess[2] is not None:
            sigma, _, j = self._pess
            q -= self._bonus(states.numpy(), sigma, [j])[j]
        return np.clip(q, self.lo, self.hi)

    def _bonus(
        self, states: np.ndarray, sigma: float, penalties: list[int]
    ) -> dict[int, np.ndarray]:
        """The pessimism subtracted from Q(s, .) at ``states``, per ridge penalty index j:
        pessimism * sigma * sqrt(x(s, a)^T (n G_j)^-1 x(s, a)), (N, A) each - ``pessimism``
        standard errors of the fitted Q(s, a), x the regressors of (s, a), G_j the full fit's
        penalised Gram matrix (normalised by the n train transitions), sigma the residual
        standard deviation of the fit (from the members' held-out error)."""
        su = _SETUPS["setup"]
        assert isinstance(su, _LinearSetup)
        ps, pa = self._bases(states)
        scale = self.cfg.pessimism * sigma / math.sqrt(len(su.a))
        return {j: scale * np.sqrt(su.leverage(ps, pa, j)) for j in penalties}

    def fit(
        self, train: dict[str, torch.Tensor], groups: np.ndarray, longest_episode: int
    ) -> FQEResult:
        """``train``: s, a, r, s_next, done, pi_next (the evaluated policy's probabilities at s')
        of the train transitions, optionally ``cont`` (linear model: each transition's discount
        of the next value, instead of gamma (1 - done)); ``groups``: the patient of every row
        (bootstrap unit)."""
        cfg = self.cfg
        n = len(train["a"])
        if n == 0:
            raise ValueError("FQE needs at least one train transition")
        horizon = max(1, min(int(longest_episode), cfg.max_iterations))
        result = FQEResult(cfg.model, horizon, int(longest_episode), cfg.members)
        if cfg.model == "linear":
            return self._fit_linear(train, groups, result)
        K, dev = cfg.members, self.ops.device
        fit_rows, held_rows = self._member_rows(np.asarray(groups))
        fit_len = torch.tensor([len(r) for r in fit_rows], dtype=torch.float64)
        fit_idx = [torch.from_numpy(r) for r in fit_rows]  # batches drawn on the CPU
        held_len = min(len(r) for r in held_rows)
        held_idx = torch.from_numpy(np.stack([r[:held_len] for r in held_rows])).to(dev)  # (K, h)
        s, a, r = (train[k].to(dev) for k in ("s", "a", "r"))
        s_next, pi_next = train["s_next"].to(dev), train["pi_next"].to(dev)
        cont = self.gamma * (1.0 - train["done"].to(dev))
        gen = torch.Generator().manual_seed(cfg.seed)
        held_s, held_a = s[held_idx], a[held_idx]
        members = torch.arange(K, device=dev).unsqueeze(1)
        y = torch.zeros(K, n, device=dev)
        for k in range(1, horizon + 1):
            # frozen targets of this iteration, every member from its own previous iterate
            with torch.no_grad():
                v_next = self._values(s_next, pi_next) if k > 1 else torch.zeros(K, n, device=dev)
                y = (r.unsqueeze(0) + cont.unsqueeze(0) * v_next).clamp_(self.lo, self.hi)
            held_y = y[members, held_idx]
            best, best_state, bad, capped, step = math.inf, None, 0, True, 0
            flat = self.optimizer.flat["q"]
            ema = flat.detach().clone()
            for step in range(1, cfg.max_steps + 1):
                u = torch.rand(K, cfg.batch_size, generator=gen, dtype=torch.float64)
                pos = (u * fit_len.unsqueeze(1)).long()
                idx = torch.stack([fit_idx[m][pos[m]] for m in range(K)]).to(dev)
                self._write_gradient(s[idx], a[idx], y[members, idx])
                self.optimizer.step()
                with torch.no_grad():
                    ema.lerp_(flat, cfg.averaging)
                if step % cfg.eval_every == 0 or step == cfg.max_steps:
                    with torch.no_grad():  # held-out error of the averaged parameters
                        current = flat.clone()
                        flat.copy_(ema)
                        q = _forward(self.q, held_s)[0].gather(2, held_a.unsqueeze(2))
                        flat.copy_(current)
                        loss = float((q.squeeze(2) - held_y).square().mean())
                    if loss < best * (1.0 - cfg.tolerance):
                        best, bad = loss, 0
                        best_state = ema.clone()
                    else:
                        bad += 1
                    if step >= cfg.min_steps and bad >= cfg.patience:
                        capped = False
                        break
            if best_state is not None:  # the averaged iterate with the lowest held-out error
                with torch.no_grad():
                    self.optimizer.flat["q"].copy_(best_state)
            result.steps += step
            result.iterations.append(
                {"iteration": k, "steps": step, "capped": capped, "holdout_mse": best}
            )
        return result


class _ByAction:
    """Rows grouped by an action per row (stable order): ``order``, and ``bounds`` the start of
    each action's rows in it; ``actions`` and ``order`` as indices of ``ops`` (``host``: the
    actions as a NumPy array)."""

    def __init__(self, actions: np.ndarray, n_actions: int, ops: _Numpy | _Torch) -> None:
        self.host = np.asarray(actions, dtype=np.int64)
        self.order_host = order = np.argsort(self.host, kind="stable")
        self.bounds = np.searchsorted(self.host[order], np.arange(n_actions + 1))
        self.actions, self.order = ops.index(self.host), ops.index(order)
        self._blocks: dict[int, tuple[object, list]] = {}

    def blocks(self, x: np.ndarray) -> list:
        """The rows of ``x`` of each action (``x[order[bounds[k]:bounds[k + 1]]]``), gathered
        once per array: an FQE fit reads the same bases at every iteration."""
        got = self._blocks.get(id(x))
        if got is None or got[0] is not x:
            cuts = zip(self.bounds[:-1], self.bounds[1:], strict=True)
            got = (x, [x[self.order[lo:hi]] for lo, hi in cuts])
            self._blocks[id(x)] = got
        return got[1]

    def groups(self, values: np.ndarray) -> list[np.ndarray]:
        """The entries of host array ``values`` (n,) of each action, in row order: the same
        arrays as ``values[actions == k]``, without a mask per action."""
        v = values[self.order_host]
        return [v[lo:hi] for lo, hi in zip(self.bounds[:-1], self.bounds[1:], strict=True)]


def _greedy(pi: np.ndarray, n_actions: int, ops: _Numpy | _Torch) -> _ByAction | None:
    """The rows grouped by their action when ``pi`` (n, A) puts probability 1 on one action in
    every row (a deterministic policy: its values need Q at that action only); else None."""
    chosen = pi.argmax(1)
    one_hot = np.count_nonzero(pi) == len(pi) and bool(np.all(pi[np.arange(len(pi)), chosen] == 1))
    return _ByAction(chosen, n_actions, ops) if one_hot else None


def _q_at(
    ps: np.ndarray, pa: np.ndarray, betas: np.ndarray, n_actions: int, by: _ByAction
) -> np.ndarray:
    """Q(s_i, a_i) of every coefficient row of ``betas`` (L, size) at each row's own action
    (``by``): (n, L), one product per action's rows instead of every action at every row."""
    ds, da, L = ps.shape[1], pa.shape[1], len(betas)
    out = ps @ betas[:, :ds].T  # (n, L)
    u = betas[:, ds:].reshape(L, n_actions, da)
    for k, block in enumerate(by.blocks(pa)):
        if len(block):
            out[by.order[by.bounds[k] : by.bounds[k + 1]]] += block @ u[:, k, :].T
    return out


def _residual_tails(eps: np.ndarray, by: _ByAction, tau: float, side: str) -> np.ndarray:
    """Per action of ``by`` (each row's logged action): E[e 1{e in the lower (``low``) or
    upper (``high``) tau-tail}] of its rows' residuals centred on their mean (0 for an action
    without rows)."""
    groups = by.groups(eps)
    out = np.zeros(len(groups))
    for k, e in enumerate(groups):
        if not len(e):
            continue
        e = np.sort(e - e.mean())
        if side == "high":
            e = -e[::-1]
        x = tau * len(e)
        m = int(np.floor(x))
        part = e[:m].sum() + (x - m) * (e[m] if m < len(e) else 0.0)
        out[k] = part / len(e) if side == "low" else -part / len(e)
    return out


def _chol_solve(b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """x with L L^T x = b for lower Cholesky factors L (batched): two triangular solves, which
    read the row-major factors in place (``torch.cholesky_solve`` copies every factor into
    column-major order first: ~10x slower for the FQE's 1,824-wide systems)."""
    z = torch.linalg.solve_triangular(factor, b, upper=False)
    return torch.linalg.solve_triangular(factor.mT, z, upper=True)


#: the last linear-FQE setup of this process (``FQE._setup``): {"key": ..., "setup": ...}
_SETUPS: dict[str, object] = {}


class _LinearSetup:
    """What a linear FQE fit needs besides the policy and the rewards: the bases of the train
    states and next states, every member's bootstrap weights and held-out rows, one Cholesky
    factor per member and penalty (``factors``, (K, P, size, size)) and the full fit's factors
    (made on first use). Deterministic: the same bytes in, the same factors out."""

    def __init__(self, fqe: FQE, train: dict[str, torch.Tensor], groups: np.ndarray) -> None:
        cfg, A, ops = fqe.cfg, fqe.n_actions, fqe.ops
        self.ops = ops
        fqe._fit_knots(train["s"].numpy())
        self.knots = fqe.knots
        self.ps, self.pa = (ops.asarray(x) for x in fqe._bases(train["s"].numpy()))
        self.ps_next, self.pa_next = (ops.asarray(x) for x in fqe._bases(train["s_next"].numpy()))
        self.a_host = a = train["a"].numpy().astype(np.int64)
        self.a = ops.index(a)
        n, self.ds, self.da, self.A = len(a), self.ps.shape[1], self.pa.shape[1], A
        self.size = self.ds + self.da * A
        self.penalties = [float(x) for x in cfg.ridge]
        self.ridge_shared = cfg.ridge_shared
        self.ridge_intercept = cfg.ridge_intercept
        # rows grouped by logged action: the per-action blocks are sums over contiguous rows
        order = np.argsort(a, kind="stable")
        self.bounds = np.searchsorted(a[order], np.arange(A + 1))
        self.order = ops.index(order)
        self.pa_sorted = self.pa[self.order]
        fit_rows, held_rows = fqe._member_rows(np.asarray(groups))
        c = np.stack([np.bincount(f, minlength=n).astype(np.float64) for f in fit_rows])
        c /= np.maximum(c.sum(1, keepdims=True), 1.0)
        self.c = ops.asarray(c)
        self.held = [ops.index(h) for h in held_rows]
        self.factors = torch.empty(len(self.c), len(self.penalties), self.size, self.size,
                                   dtype=torch.float64, device=ops.device)  # fmt: skip
        # (K, P, size, size)
        for m, c in enumerate(self.c):
            gram = self._gram(c)
            for j, lam in enumerate(self.penalties):
                self._factor(gram, lam, out=self.factors[m, j])
        uniform = ops.asarray(np.full(n, 1.0 / n))
        self.full_gram = self._gram(uniform) if cfg.full_fit else None
        if self.full_gram is None and cfg.pessimism > 0:  # the bonus needs the full Gram
            self.full_gram = self._gram(uniform)
        self._full: dict[int, torch.Tensor] = {}
        self._inverse: dict[int, np.ndarray] = {}
        self._lev_next: dict[int, np.ndarray] = {}

    def _gram(self, c: np.ndarray) -> np.ndarray:
        """Weighted Gram matrix of x_i = [ps_i, e_{a_i} (x) pa_i] in blocks."""
        ds, da = self.ds, self.da
        gram = self.ops.zeros((self.size, self.size))
        cps = self.ps * c[:, None]
        gram[:ds, :ds] = cps.T @ self.ps
        for k in range(self.A):
            rows = self.a == k
            blk = slice(ds + da * k, ds + da * (k + 1))
            gram[:ds, blk] = cps[rows].T @ self.pa[rows]
            gram[blk, :ds] = gram[:ds, blk].T
            gram[blk, blk] = (self.pa[rows] * c[rows, None]).T @ self.pa[rows]
        return gram

    def _factor(
        self, gram: np.ndarray, lam: float, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        per_action = np.full((self.A, self.da), lam)
        if self.ridge_intercept is not None:  # each action's own intercept: its own penalty
            per_action[:, 0] = self.ridge_intercept
        reg = np.r_[0.0, np.full(self.ds - 1, self.ridge_shared), per_action.ravel()]
        ops = self.ops
        return torch.linalg.cholesky(
            ops.to_torch(gram + ops.asarray(np.diag(reg + 1e-10))), out=out
        )

    def full_factor(self, j: int) -> torch.Tensor:
        if j not in self._full:
            self._full[j] = self._factor(self.full_gram, self.penalties[j])
        return self._full[j]

    def rhs(self, weights: np.ndarray) -> np.ndarray:
        """X^T weights of every row of ``weights`` (M, n) -> (M, size)."""
        shared = weights @ self.ps  # (M, ds)
        w = weights[:, self.order]
        cuts = zip(self.bounds[:-1], self.bounds[1:], strict=True)
        per_action = [w[:, lo:hi] @ self.pa_sorted[lo:hi] for lo, hi in cuts]
        return self.ops.concatenate([shared, *per_action], 1)

    def next_values(
        self,
        betas: np.ndarray,
        pi_next: np.ndarray,
        lo: float,
        hi: float,
        minus: np.ndarray | None = None,
        greedy: _ByAction | None = None,
    ) -> np.ndarray:
        """sum_a' pi(a'|s') clip(Q_m(s', a') - minus_m(s', a')) of every coefficient row m:
        (M, n); ``minus`` (M, n, A), a pessimism bonus, or None; ``greedy``: ``pi_next``'s
        rows grouped by their action when it is deterministic (Q at that action only)."""
        ds, da, A, ops = self.ds, self.da, self.A, self.ops
        if greedy is not None:
            q = _q_at(self.ps_next, self.pa_next, betas, A, greedy).T  # (M, n)
            if minus is not None:
                q -= minus[:, ops.arange(q.shape[1]), greedy.actions]
            return ops.clip(q, lo, hi, out=q)
        shared = self.ps_next @ betas[:, :ds].T  # (n, M)
        per = self.pa_next @ betas[:, ds:].reshape(len(betas), A, da).reshape(-1, da).T
        q = per.reshape(len(shared), len(betas), A) + shared[:, :, None]
        if minus is not None:
            q -= ops.swap01(minus)
        ops.clip(q, lo, hi, out=q)
        return ops.einsum("nma,na->mn", q, pi_next)

    def leverage(self, ps: np.ndarray, pa: np.ndarray, j: int, chunk: int = 4096) -> np.ndarray:
        """x(s, a)^T G_j^-1 x(s, a) of every state (rows of ``ps``, ``pa``) and action: (N, A),
        with G_j the full fit's penalised Gram matrix of penalty index j and x(s, a) = [ps(s),
        e_a (x) pa(s)] (the blocks of G_j^-1 that x touches: shared, shared-action, action)."""
        if j not in self._inverse:  # on the host: the leverages are NumPy either way
            self._inverse[j] = torch.cholesky_inverse(self.full_factor(j)).cpu().numpy()
        m, ds, da, A = self._inverse[j], self.ds, self.da, self.A
        own = [
            m[ds + da * a : ds + da * (a + 1), ds + da * a : ds + da * (a + 1)] for a in range(A)
        ]
        out = np.empty((len(ps), A))
        for i in range(0, len(ps), chunk):
            s, u = ps[i : i + chunk], pa[i : i + chunk]
            base = np.einsum("nd,nd->n", s @ m[:ds, :ds], s)
            cross = np.einsum("nad,nd->na", (s @ m[:ds, ds:]).reshape(len(s), A, da), u)
            diag = np.stack([np.einsum("nd,nd->n", u @ blk, u) for blk in own], 1)
            out[i : i + chunk] = base[:, None] + 2.0 * cross + diag
        return np.maximum(out, 0.0)

    def leverage_next(self, j: int) -> np.ndarray:
        """``leverage`` at the train next states (cached: it does not depend on the policy)."""
        if j not in self._lev_next:
            ps, pa = self.ops.to_numpy(self.ps_next), self.ops.to_numpy(self.pa_next)
            self._lev_next[j] = self.leverage(ps, pa, j)
        return self._lev_next[j]

    def held_errors(
        self, beta: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None
    ) -> np.ndarray:
        """Mean squared error on each member's held-out rows of every penalty's coefficients
        beta (K, P, size) against the member's targets y (K, n): (K, P). ``weights`` (n,): a
        weighted mean instead (a member whose held-out rows weigh nothing: the plain mean)."""
        ds, da = self.ds, self.da
        out = self.ops.zeros(tuple(beta.shape[:2]))
        for m, h in enumerate(self.held):
            if not len(h):
                continue
            u = beta[m, :, ds:].reshape(beta.shape[1], self.A, da)  # (P, A, da)
            pred = self.ps[h] @ beta[m, :, :ds].T + self.ops.einsum(
                "hd,phd->hp", self.pa[h], u[:, self.a[h]]
            )  # fmt: skip
            sq = (pred - y[m, h, None]) ** 2
            w = None if weights is None else weights[h]
            if w is None or not w.sum() > 0:
                out[m] = sq.mean(0)
            else:
                out[m] = (w @ sq) / w.sum()
        return out
