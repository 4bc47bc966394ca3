"""FQE recovers the exact value of a policy on an MDP with known dynamics (within 5 %)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sepsisrl.ope.fqe import FQE, FQEConfig

from .test_rl_mdp import GAMMA, N_ACTIONS, N_POS, policy_value, simulate


def transitions(episodes, policy_probs: np.ndarray) -> dict[str, torch.Tensor]:
    eye = np.eye(N_POS, dtype=np.float32)
    rows = []
    for steps in episodes:
        for k, (s, a, r) in enumerate(steps):
            done = k == len(steps) - 1
            s_next = steps[k + 1][0] if not done else s
            rows.append((s, a, r, s_next, float(done)))
    s, a, r, sn, d = (np.array(x) for x in zip(*rows, strict=True))
    return {
        "s": torch.from_numpy(eye[s]),
        "a": torch.from_numpy(a.astype(np.int64)),
        "r": torch.from_numpy(r.astype(np.float32)),
        "s_next": torch.from_numpy(eye[sn]),
        "done": torch.from_numpy(d.astype(np.float32)),
        "pi_next": torch.from_numpy(policy_probs[sn].astype(np.float32)),
    }


def _exact(probs: np.ndarray) -> float:
    from .test_rl_mdp import transition_matrix

    P, R = transition_matrix()
    P_pi = np.einsum("sa,sat->st", probs, P)
    R_pi = (probs * R).sum(1)
    return float(np.linalg.solve(np.eye(N_POS) - GAMMA * P_pi, R_pi)[0])


def _fit(episodes, probs, **cfg):
    train = transitions(episodes, probs)
    groups = np.repeat(np.arange(len(episodes)), [len(e) for e in episodes])
    longest = max(len(e) for e in episodes)
    settings = {"hidden": (32, 32), "members": 5, "seed": 1, "max_iterations": longest, **cfg}
    fqe = FQE(N_POS, N_ACTIONS, GAMMA, FQEConfig(**settings), bounds=(0.0, 15.0))
    result = fqe.fit(train, groups, longest)
    return fqe, result


@pytest.mark.slow
@pytest.mark.parametrize("target", ["advance", "mixed"])
def test_fqe_is_within_5_percent_of_the_exact_value(target):
    probs = np.zeros((N_POS, N_ACTIONS))
    if target == "advance":  # deterministic: always the optimal action
        probs[:, 0] = 1.0
    else:  # stochastic: 60 % advance, 40 % cautious
        probs[:, 0], probs[:, 1] = 0.6, 0.4
    exact = _exact(probs)
    if target == "advance":
        assert exact == pytest.approx(policy_value(np.zeros(N_POS, dtype=int))[0])
    rng = np.random.default_rng(5)
    # enough logged episodes that the data's own sampling error stays well below 5 %
    fqe, result = _fit(simulate(rng, 30000), probs)
    s0 = torch.from_numpy(np.eye(N_POS, dtype=np.float32)[[0]])
    pi0 = torch.from_numpy(probs[[0]].astype(np.float32))
    members = fqe.state_values(s0, pi0)[:, 0]
    estimate = float(members.mean())
    assert abs(estimate - exact) <= 0.05 * abs(exact), (estimate, exact, members, result.steps)
    assert result.converged and result.horizon == result.longest_episode
    assert len(result.iterations) == result.horizon


@pytest.mark.slow
@pytest.mark.parametrize("model", ["linear", "mlp"])
def test_fqe_never_leaves_the_attainable_range_on_an_unsupported_policy(model):
    """Data that never take "gamble" (a3); the evaluated policy gambles everywhere. Its Q values
    are pure extrapolation, but every target and every reported value stays in [0, 15]."""
    rng = np.random.default_rng(9)
    episodes = [[(s, a if a != 3 else 1, r) for s, a, r in ep] for ep in simulate(rng, 3000)]
    probs = np.zeros((N_POS, N_ACTIONS))
    probs[:, 3] = 1.0
    fqe, result = _fit(episodes, probs, model=model, members=2, max_steps=60, min_steps=20,
                       eval_every=20)  # fmt: skip
    states = torch.eye(N_POS)
    values = fqe.state_values(states, torch.from_numpy(probs.astype(np.float32)))
    q = fqe.q_values(states)
    assert values.min() >= 0.0 and values.max() <= 15.0
    assert q.min() >= 0.0 and q.max() <= 15.0
    assert len(result.iterations) == result.horizon


def test_return_bounds_of_terminal_and_dense_rewards():
    from sepsisrl.ope.fqe import return_bounds

    done = np.array([0, 0, 1, 0, 1])
    assert return_bounds(np.array([0, 0, 15, 0, -15.0]), done, 0.99, 18) == (-15.0, 15.0)
    lo, hi = return_bounds(np.array([0.5, -1, 15, 0, -15.0]), done, 0.5, 3)
    assert (lo, hi) == (-15.0 * 1.75, 15.0 * 1.75)


@pytest.mark.slow
def test_full_fit_is_within_5_percent_and_centres_the_ci():
    """The linear FQE's fit on every train patient (the point estimate) recovers the exact value;
    the CI keeps the members' spread, shifted to be centred on it."""
    from sepsisrl.ope.importance import ensemble_mean_ci

    probs = np.zeros((N_POS, N_ACTIONS))
    probs[:, 0], probs[:, 1] = 0.6, 0.4
    exact = _exact(probs)
    fqe, _ = _fit(simulate(np.random.default_rng(5), 30000), probs)
    s0 = torch.from_numpy(np.eye(N_POS, dtype=np.float32)[[0]])
    full = float((fqe.full_q_values(s0) * probs[[0]]).sum())
    assert abs(full - exact) <= 0.05 * abs(exact), (full, exact)
    members = fqe.state_values(s0, torch.from_numpy(probs[[0]].astype(np.float32)))  # (K, 1)
    v0 = np.repeat(members, 20, axis=1)  # 20 identical initial states
    plain = ensemble_mean_ci(v0, 500, 0)
    centred = ensemble_mean_ci(v0, 500, 0, point=np.full(20, full))
    shift = full - float(members.mean())
    assert centred.estimate == pytest.approx(full)
    assert centred.low == pytest.approx(plain.low + shift)
    assert centred.high == pytest.approx(plain.high + shift)
    # no full fit for the neural Q: the members' mean stays the estimate
    mlp, _ = _fit(simulate(np.random.default_rng(6), 300), probs, model="mlp", members=2,
                  max_steps=40, min_steps=20, eval_every=20)  # fmt: skip
    assert mlp.full_q_values(s0) is None


def test_policies_fitted_in_one_process_share_the_setup_and_match_a_fresh_fit():
    """The linear FQE's policy-independent work (bases, resamples, Gram matrices, Cholesky
    factors) is made once per train split and process: a policy fitted after another one gets
    the bytes of a fit in a fresh process."""
    from sepsisrl.ope import fqe as fqe_module

    episodes = simulate(np.random.default_rng(3), 60)
    advance = np.zeros((N_POS, N_ACTIONS))
    advance[:, 0] = 1.0
    mixed = np.full((N_POS, N_ACTIONS), 1.0 / N_ACTIONS)
    fqe_module._SETUPS.clear()
    fresh, _ = _fit(episodes, mixed, model="linear")
    _fit(episodes, advance, model="linear")
    setup = fqe_module._SETUPS["setup"]
    again, result = _fit(episodes, mixed, model="linear")
    assert fqe_module._SETUPS["setup"] is setup  # reused, not rebuilt
    assert (
        again.W.tobytes() == fresh.W.tobytes() and again.W_full.tobytes() == fresh.W_full.tobytes()
    )
    assert result.iterations[-1]["ridge"] and result.converged
    # another train split (fewer episodes) replaces the setup
    _fit(episodes[:30], mixed, model="linear")
    assert fqe_module._SETUPS["setup"] is not setup


def test_a_per_transition_discount_replaces_gamma_times_not_done():
    """``cont`` (bench/hourly_fqe.py's hourly chain: 1 inside a 4-hour window, gamma at the
    review) is the discount of each transition's next value: given as gamma (1 - done) it is
    the default fit to the last bit, and 0 everywhere is the fit in which every row ends."""
    episodes = simulate(np.random.default_rng(4), 60)
    mixed = np.full((N_POS, N_ACTIONS), 1.0 / N_ACTIONS)
    train = transitions(episodes, mixed)
    groups = np.repeat(np.arange(len(episodes)), [len(e) for e in episodes])
    longest = max(len(e) for e in episodes)
    cfg = FQEConfig(members=3, seed=1, max_iterations=longest, model="linear")

    def fit(data):
        fqe = FQE(N_POS, N_ACTIONS, GAMMA, cfg, bounds=(0.0, 15.0))
        fqe.fit(data, groups, longest)
        return fqe.W_full.tobytes(), fqe.W.tobytes()

    default = fit(train)
    assert fit({**train, "cont": GAMMA * (1.0 - train["done"].double())}) == default
    ended = fit({**train, "done": torch.ones_like(train["done"])})
    assert fit({**train, "cont": torch.zeros_like(train["done"]).double()}) == ended
    assert ended != default


def test_pessimism_lowers_rarely_logged_actions_most_and_changes_nothing_at_zero():
    """``pessimism`` subtracts standard errors of the fitted Q(s, a): an action the logs take
    in about 1 % of decisions loses several times more than the most common one; the policy's
    value only goes down; pessimism 0 is the plain fit."""
    rng = np.random.default_rng(3)
    episodes = [[(s, a if a != 3 or rng.random() < 0.03 else 1, r) for s, a, r in ep]
                for ep in simulate(rng, 3000)]  # fmt: skip
    probs = np.zeros((N_POS, N_ACTIONS))
    probs[:, 0] = 1.0
    states, s0 = torch.eye(N_POS), torch.from_numpy(np.eye(N_POS, dtype=np.float32)[[0]])
    plain, _ = _fit(episodes, probs, members=2)
    zero, _ = _fit(episodes, probs, members=2, pessimism=0.0)
    pess, _ = _fit(episodes, probs, members=2, pessimism=2.0)
    assert np.array_equal(zero.q_values(states), plain.q_values(states))
    assert np.array_equal(zero.full_q_values(states), plain.full_q_values(states))
    # raw values are the fit's own (its targets were pessimistic), the reported ones subtract
    # the bonus of each (s, a) before clipping
    raw, q = pess.full_q_values(states, raw=True), pess.full_q_values(states)
    bonus = raw - q
    inside = (q > 0.0).all(1)  # states where no action was clipped at the range's floor
    assert inside.sum() >= N_POS // 2
    assert np.all(bonus[inside, 3] > 5 * bonus[inside, 0]), bonus
    assert np.all(bonus[inside, 0] > 0)
    v_plain = float(plain.full_q_values(s0)[0, 0])
    v_pess = float(pess.full_q_values(s0)[0, 0])
    assert v_pess < v_plain


def test_ridge_intercept_frees_each_actions_mean_from_the_shared_penalty():
    """A one-step problem whose three actions are worth 0, 2 and 5 and are logged in 80, 15
    and 5 % of the rows: the penalty the held-out error picks (here the only one, 1.0) shrinks a
    rare action's whole deviation towards the shared model; ``ridge_intercept`` penalises its
    intercept alone, and the fit recovers each action's worth. Null is today's fit."""
    rng = np.random.default_rng(0)
    n, dim = 4000, 3
    s = rng.standard_normal((n, dim)).astype(np.float32)
    a = rng.choice(3, size=n, p=[0.8, 0.15, 0.05])
    r = (np.array([0.0, 2.0, 5.0])[a] + 0.5 * s[:, 0] + rng.standard_normal(n)).astype(np.float32)
    train = {"s": torch.from_numpy(s), "a": torch.from_numpy(a), "r": torch.from_numpy(r),
             "s_next": torch.from_numpy(s), "done": torch.ones(n),
             "pi_next": torch.full((n, 3), 1.0 / 3)}  # fmt: skip
    groups = np.arange(n)

    def gaps(**over):
        cfg = FQEConfig(**{"ridge": (1.0,), "members": 2, "seed": 0, **over})
        fqe = FQE(dim, 3, 0.99, cfg, bounds=(-15.0, 15.0))
        fqe.fit(train, groups, 1)
        q = fqe.full_q_values(torch.zeros(1, dim))[0]
        return q[1] - q[0], q[2] - q[0], fqe

    shrunk = gaps()
    free = gaps(ridge_intercept=1e-6)
    assert shrunk[1] < 1.0 and shrunk[0] < 1.0  # 5 and 2 shrunk to a fraction
    assert abs(free[0] - 2.0) < 0.2 and abs(free[1] - 5.0) < 0.3, free[:2]
    same = gaps(ridge_intercept=None)
    assert np.array_equal(same[2].W_full, shrunk[2].W_full)
    with pytest.raises(ValueError, match="ridge_intercept must be > 0 or null"):
        FQE(dim, 3, 0.99, FQEConfig(ridge_intercept=0.0))


def test_pessimism_needs_the_linear_model_and_a_non_negative_value():
    with pytest.raises(ValueError, match="pessimism needs the linear model"):
        FQE(N_POS, N_ACTIONS, GAMMA, FQEConfig(model="mlp", pessimism=1.0))
    with pytest.raises(ValueError, match="pessimism must be >= 0"):
        FQE(N_POS, N_ACTIONS, GAMMA, FQEConfig(pessimism=-1.0))


def _robust_reference(fqe, b_next, init_states, pi_init, b_init, lam, side):
    """The sensitivity refit of one (Lambda, side) written plainly, one case at a time and every
    action's Q at every state (the specification ``robust_values_many`` is checked against)."""
    from sepsisrl.ope.fqe import _chol_solve

    su, r, cont, pi_next, full_j = fqe._robust_inputs
    n, A = len(r), fqe.n_actions
    c_lam, tau = lam - 1.0 / lam, 1.0 / (1.0 + lam)
    beta, tail = np.zeros(su.size), np.zeros(A)
    for k, j in enumerate(full_j, start=1):
        v_next = np.zeros(n)
        if k > 1:
            q = fqe._q(su.ps_next, su.pa_next, beta, A) + (1.0 - b_next) * c_lam * tail
            v_next = (np.clip(q, fqe.lo, fqe.hi) * pi_next).sum(1)
        y = np.clip(r + cont * v_next, fqe.lo, fqe.hi)
        beta = _chol_solve(torch.from_numpy(su.rhs(y[None] / n))[0, :, None],
                           su.full_factor(j))[:, 0].numpy()  # fmt: skip
        if c_lam > 0:
            fitted = fqe._q(su.ps, su.pa, beta, A)[np.arange(n), su.a]
            tail = _plain_tails(y - fitted, su.a, A, tau, side)
    ps, pa = fqe._bases(init_states)
    q = fqe._q(ps, pa, beta, A) + (1.0 - b_init) * c_lam * tail
    return (np.clip(q, fqe.lo, fqe.hi) * pi_init).sum(1)


def _plain_tails(eps, a, n_actions, tau, side):
    """Per action: the mean of eps 1{eps in the lower (upper) tau-tail} of its rows' residuals
    centred on their mean, each action's rows selected by a mask (the specification)."""
    out = np.zeros(n_actions)
    for k in range(n_actions):
        e = eps[a == k]
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


def test_action_grouped_products_and_tails_are_the_plain_ones_bit_for_bit():
    """Q at each row's own action from per-action blocks gathered once, and the residual
    tails from rows grouped once by action, are the same bytes as gathering each action's
    rows by a mask at every call (an action without rows included)."""
    from sepsisrl.ope.fqe import _ByAction, _Numpy, _q_at, _residual_tails

    rng = np.random.default_rng(3)
    n, ds, da, A, L = 3000, 40, 9, 7, 5
    ps, pa = rng.standard_normal((n, ds)), rng.standard_normal((n, da))
    betas = rng.standard_normal((L, ds + da * A))
    acts = rng.integers(0, A - 1, n)  # the last action has no row
    by = _ByAction(acts, A, _Numpy())
    plain = ps @ betas[:, :ds].T
    u = betas[:, ds:].reshape(L, A, da)
    for k in range(A):
        rows = np.flatnonzero(acts == k)
        plain[rows] += pa[rows] @ u[:, k, :].T
    for _ in range(2):  # the second call reads the blocks gathered by the first
        assert np.array_equal(_q_at(ps, pa, betas, A, by), plain)
    eps = rng.standard_normal(n)
    for tau, side in ((0.3, "low"), (0.45, "high"), (0.5, "low")):
        got = _residual_tails(eps, by, tau, side)
        assert np.array_equal(got, _plain_tails(eps, acts, A, tau, side))
        assert got[A - 1] == 0.0 and np.all(got[:-1] != 0.0)


@pytest.mark.parametrize("target", ["deterministic", "stochastic"])
def test_sensitivity_refits_iterated_together_match_each_alone(target):
    """The sensitivity analysis refits the FQE for every (Lambda, side) together (one product
    and one solve per iteration for all of them; Q at the policy's own action only when it is
    deterministic): each case's values are the plain one-at-a-time refit's, in groups of any
    size; the pessimism's next values take the same shortcut."""
    rng = np.random.default_rng(5)
    episodes = simulate(rng, 400)
    probs = np.zeros((N_POS, N_ACTIONS))
    if target == "deterministic":
        probs[np.arange(N_POS), np.arange(N_POS) % N_ACTIONS] = 1.0
    else:
        probs[:, 0], probs[:, 1] = 0.6, 0.4
    fqe, _ = _fit(episodes, probs, members=2)
    train = transitions(episodes, probs)
    b = rng.dirichlet(np.ones(N_ACTIONS), size=N_POS)
    s_next = train["s_next"].numpy().argmax(1)
    b_next = b[s_next]
    init = np.eye(N_POS)
    cases = [(lam, side) for lam in (1.0, 1.2, 2.0) for side in ("low", "high")]
    want = [_robust_reference(fqe, b_next, init, probs, b, lam, side) for lam, side in cases]
    for budget in (1, 2**30):  # groups of one case, and all cases in one group
        got = fqe.robust_values_many(b_next, init, probs, b, cases, budget_bytes=budget)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-9)
    assert not np.allclose(want[2], want[3])  # the sides differ once Lambda > 1
    single = fqe.robust_values(b_next, init, probs, b, 2.0, "high")
    np.testing.assert_allclose(single, want[5], rtol=0, atol=1e-9)
    # the pessimism's next values: the deterministic shortcut gives the plain weighted sum
    from sepsisrl.ope.fqe import _greedy

    su, _, _, pi_next, _ = fqe._robust_inputs
    betas = np.vstack([fqe.W, fqe.W_full])
    minus = rng.random((len(betas), len(pi_next), N_ACTIONS))
    greedy = _greedy(pi_next, N_ACTIONS, fqe.ops)
    assert (greedy is not None) == (target == "deterministic")
    plain = su.next_values(betas, pi_next, fqe.lo, fqe.hi, minus)
    fast = su.next_values(betas, pi_next, fqe.lo, fqe.hi, minus, greedy)
    np.testing.assert_allclose(fast, plain, rtol=0, atol=1e-9)


def test_penalty_rows_policy_weights_the_held_out_error_by_pi_of_the_logged_action():
    """``penalty_rows: policy`` chooses each iteration's penalty on the held-out rows weighted
    by pi's probability of their logged action: by hand on one member, the same fit as the
    default when every row weighs alike, and refused without the weights or with the mlp."""
    rng = np.random.default_rng(1)
    n, dim = 600, 3
    s = rng.standard_normal((n, dim)).astype(np.float32)
    a = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
    r = (np.array([0.0, 1.0, 3.0])[a] + s[:, 0] + rng.standard_normal(n)).astype(np.float32)
    train = {"s": torch.from_numpy(s), "a": torch.from_numpy(a), "r": torch.from_numpy(r),
             "s_next": torch.from_numpy(s), "done": torch.ones(n),
             "pi_next": torch.full((n, 3), 1.0 / 3)}  # fmt: skip
    groups = np.arange(n)

    def fit(rows, weights):
        cfg = FQEConfig(ridge=(1e-4, 1.0), members=2, seed=0, penalty_rows=rows)
        fqe = FQE(dim, 3, 0.99, cfg, bounds=(-15.0, 15.0))
        data = train if weights is None else {**train, "pi_logged": torch.from_numpy(weights)}
        fqe.fit(data, groups, 1)
        return fqe

    plain = fit("all", None)
    alike = fit("policy", np.full(n, 0.5, dtype=np.float32))
    assert np.array_equal(plain.W_full, alike.W_full) and np.array_equal(plain.W, alike.W)

    from sepsisrl.ope.fqe import _SETUPS

    su = _SETUPS["setup"]
    beta = rng.standard_normal((2, 2, su.size))
    y = rng.standard_normal((2, n))
    w = rng.uniform(size=n)
    h = su.held[0]
    ds, da = su.ds, su.da
    for j in range(2):
        u = beta[0, j, ds:].reshape(3, da)
        pred = su.ps[h] @ beta[0, j, :ds] + np.einsum("hd,hd->h", su.pa[h], u[su.a[h]])
        err = (pred - y[0, h]) ** 2
        assert su.held_errors(beta, y, w)[0, j] == pytest.approx(np.sum(w[h] * err) / w[h].sum())
        assert su.held_errors(beta, y)[0, j] == pytest.approx(err.mean())
    # a member whose held-out rows weigh nothing falls back to the plain mean
    assert np.allclose(su.held_errors(beta, y, np.zeros(n)), su.held_errors(beta, y))

    with pytest.raises(ValueError, match="needs train\\['pi_logged'\\]"):
        fit("policy", None)
    with pytest.raises(ValueError, match="penalty_rows: policy needs the linear model"):
        FQE(dim, 3, 0.99, FQEConfig(model="mlp", penalty_rows="policy"))
    with pytest.raises(ValueError, match="penalty_rows must be 'all' or 'policy'"):
        FQE(dim, 3, 0.99, FQEConfig(penalty_rows="some"))
