"""The training step's explicit gradients equal autograd's on the readable losses."""

from __future__ import annotations

import pytest
import torch

from sepsisrl.rl.config import load_train_config
from sepsisrl.rl.iql import IQL
from sepsisrl.rl.networks import MLP, Ensemble, MemberAdam, NetworkOptimizer
from sepsisrl.rl.registry import Common

D, A, B = 9, 5, 64


def batch(seed: int, reward_scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, D, generator=g),
        torch.randint(0, A, (B,), generator=g),
        torch.randn(B, generator=g) * reward_scale,
        torch.randn(B, D, generator=g),
        (torch.rand(B, generator=g) < 0.2).float(),
    )


def grads(algo: IQL) -> dict[str, torch.Tensor]:
    return {name: flat.grad.clone() for name, flat in algo.optimizer.flat.items()}


@pytest.mark.parametrize(
    ("temperature", "reward_scale"),
    [(3.0, 1.0), (1000.0, 5.0)],  # the second puts many advantage weights at the cap
    ids=["default", "capped-weights"],
)
def test_iql_explicit_gradients_equal_autograd_on_every_network(temperature, reward_scale):
    torch.manual_seed(0)
    cfg = load_train_config(overrides={"iql.temperature": temperature}).iql
    algo = IQL(Common(D, A, 0.99, (32, 32), 10.0), cfg)
    for seed in range(3):  # a few steps, so that targets, V and Q differ from their init
        s = batch(seed, reward_scale)
        algo.optimizer.zero_grad()
        stats = algo.compute_gradients(*s)
        explicit = grads(algo)

        algo.optimizer.zero_grad()
        losses = algo.losses(*s)
        sum(losses.values()).backward()
        reference = grads(algo)

        for name in ("value_loss", "critic_loss", "actor_loss"):
            torch.testing.assert_close(stats[name], losses[name].detach(), rtol=1e-6, atol=1e-7)
        for name, g in reference.items():
            assert g.abs().sum() > 0, name  # every network receives a gradient
            torch.testing.assert_close(explicit[name], g, rtol=1e-5, atol=1e-7, msg=name)
        algo.optimizer.step()
    if temperature == 1000.0:
        assert 0.0 < float(stats["capped_weight_fraction"]) < 1.0


@pytest.mark.parametrize("kind", ["mlp", "ensemble"])
def test_backward_cached_matches_autograd_for_any_loss(kind: str):
    torch.manual_seed(1)
    net = MLP(D, A, (16, 8)) if kind == "mlp" else Ensemble(3, D, A, (16, 8))
    NetworkOptimizer({"net": (net, 1e-3)}, max_norm=10.0)  # gives every parameter a .grad view
    x = torch.randn(B, D)
    target = torch.randn_like(net(x))

    with torch.no_grad():
        out, acts = net.forward_cached(x)
        net.backward_cached(acts, 2 * (out - target) / out.numel())
    explicit = [p.grad.clone() for p in net.parameters()]
    for p in net.parameters():
        p.grad.zero_()
    (net(x) - target).square().mean().backward()
    for got, want in zip(explicit, [p.grad for p in net.parameters()], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_gradients_are_clipped_to_the_global_norm_per_network():
    torch.manual_seed(2)
    small, large = MLP(D, A, (16,)), MLP(D, A, (16,))
    opt = NetworkOptimizer({"small": (small, 1e-3), "large": (large, 1e-3)}, max_norm=1.0)
    x = torch.randn(B, D)
    (small(x).mean() * 1e-3 + large(x).square().mean() * 1e3).backward()
    before = {n: torch.linalg.vector_norm(f.grad).item() for n, f in opt.flat.items()}
    opt.step()
    after = {n: torch.linalg.vector_norm(f.grad).item() for n, f in opt.flat.items()}
    assert before["small"] < 1.0 and after["small"] == before["small"]  # left alone
    assert before["large"] > 1.0 and after["large"] == pytest.approx(1.0, rel=1e-5)


def test_direct_fused_adam_equals_adam_step_and_keeps_its_state_dict():
    nets, opts = [], []
    for direct in (True, False):
        torch.manual_seed(2)
        net = MLP(D, A, (16,))
        opt = NetworkOptimizer({"net": (net, 1e-2)}, max_norm=1e9)
        opt._direct = direct and opt._direct
        nets.append(net)
        opts.append(opt)
    assert opts[0]._direct, "the fused CPU kernel is expected in the supported torch builds"
    x = torch.randn(B, D)
    for _ in range(20):
        for net, opt in zip(nets, opts, strict=True):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    assert torch.equal(opts[0].flat["net"], opts[1].flat["net"])
    sd_direct, sd_step = (o.adam.state_dict() for o in opts)
    assert sd_direct["param_groups"] == sd_step["param_groups"]
    for key in ("step", "exp_avg", "exp_avg_sq"):
        assert torch.equal(sd_direct["state"][0][key], sd_step["state"][0][key]), key


def test_fqe_explicit_gradient_equals_autograd_of_its_squared_loss():
    from sepsisrl.ope.fqe import FQE, FQEConfig, _forward

    fqe = FQE(D, A, 0.9, FQEConfig(model="mlp", hidden=(16, 16), members=3))
    s, a, _, _, _ = batch(5)
    s3 = torch.stack([s, s.flip(0), s * 0.5])  # every member its own rows
    a3 = torch.stack([a, a.flip(0), a])
    y = torch.randn(3, B)
    fqe._write_gradient(s3, a3, y)
    explicit = fqe.optimizer.flat["q"].grad.clone()
    fqe.optimizer.zero_grad()
    with torch.enable_grad():
        h = s3
        for i, (w, bias) in enumerate(zip(fqe.q.weights, fqe.q.biases, strict=True)):
            h = torch.bmm(h, w) + bias
            if i < len(fqe.q.weights) - 1:
                h = h.relu()
        q = h.gather(2, a3.unsqueeze(2)).squeeze(2)
        (q - y).square().mean(1).sum().backward()
    assert _forward(fqe.q, s3)[0].shape == (3, B, A)
    torch.testing.assert_close(explicit, fqe.optimizer.flat["q"].grad, rtol=1e-5, atol=1e-7)


def test_a_stack_of_iql_models_has_each_models_autograd_gradients():
    """Three models with their own hyper-parameters and batches in one stack: the explicit
    gradients equal autograd's on the summed losses (the models share no parameter)."""
    cfgs = [
        load_train_config(overrides=o).iql
        for o in ({}, {"iql.expectile": 0.9, "iql.temperature": 8.0}, {"iql.weight_cap": 0.5})
    ]
    models = []
    for i, cfg in enumerate(cfgs):
        torch.manual_seed(i)
        models.append(IQL(Common(D, A, 0.99, (32, 32), 10.0), cfg))
    algo = IQL.stack(models)
    for step in range(3):
        s = tuple(
            torch.stack(x) for x in zip(*(batch(10 * step + i) for i in range(3)), strict=True)
        )
        algo.optimizer.zero_grad()
        stats = algo.compute_gradients(*s)
        explicit = grads(algo)
        algo.optimizer.zero_grad()
        losses = algo.losses(*s)
        sum(v.sum() for v in losses.values()).backward()
        for name in ("value_loss", "critic_loss", "actor_loss"):
            assert stats[name].shape == (3,)
            torch.testing.assert_close(stats[name], losses[name].detach(), rtol=1e-6, atol=1e-7)
        for name, g in grads(algo).items():
            assert g.abs().sum() > 0, name
            torch.testing.assert_close(explicit[name], g, rtol=1e-5, atol=1e-7, msg=name)
        algo.optimizer.step()


def test_member_adam_is_adam_with_per_model_clipping_and_learning_rates():
    """Each model's rows take torch.optim.Adam's step (own learning rate, gradient clipped
    to the global norm of that model's rows)."""
    torch.manual_seed(3)
    stacked = Ensemble(4, D, A, (16,))  # two models of two rows each
    opt = MemberAdam({"q": (stacked, 2, [1e-2, 1e-3])}, max_norm=0.5)
    reference = [stacked.rows(0, 2), stacked.rows(2, 4)]
    ref_opts = [
        torch.optim.Adam(m.parameters(), lr=lr)
        for m, lr in zip(reference, [1e-2, 1e-3], strict=True)
    ]
    x = torch.randn(B, D)
    for _ in range(5):
        opt.zero_grad()
        (stacked(x).square().mean() * 4).backward()
        opt.step()
        for m, o in zip(reference, ref_opts, strict=True):
            o.zero_grad()
            (m(x).square().mean() * 2).backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5)
            o.step()
    for i, m in enumerate(reference):
        for mine, ref in zip(
            stacked.rows(2 * i, 2 * i + 2).parameters(), m.parameters(), strict=True
        ):
            torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("algo", "overrides"), [
    ("cql", {"cql.alpha": 1.0}),
    ("cql", {"cql.alpha": 0.0}),  # the TD term alone
    ("bc", {}),
], ids=["cql", "cql-no-penalty", "bc"])  # fmt: skip
def test_cql_and_bc_explicit_gradients_equal_autograd(algo, overrides):
    """The baselines' training steps (hand-written gradients, as IQL's) against autograd on
    their readable losses; CQL's residuals straddle the huber threshold."""
    from sepsisrl.rl.registry import algorithm

    torch.manual_seed(0)
    cfg = getattr(load_train_config(overrides={"algo": algo, **overrides}), algo)
    model = algorithm(algo).create(Common(D, A, 0.99, (32, 32), 10.0), cfg)
    for seed in range(3):
        s = batch(seed, reward_scale=3.0)
        model.optimizer.zero_grad()
        stats = model.compute_gradients(*s)
        explicit = grads(model)
        model.optimizer.zero_grad()
        losses = model.losses(*s)
        losses.get("loss", losses.get("actor_loss")).backward()
        for name in losses:
            if name in stats:
                torch.testing.assert_close(stats[name], losses[name].detach(), rtol=1e-6,
                                           atol=1e-7)  # fmt: skip
        for name, g in grads(model).items():
            assert g.abs().sum() > 0, name
            torch.testing.assert_close(explicit[name], g, rtol=1e-5, atol=1e-7, msg=name)
        if algo == "cql":  # both branches of the huber loss are exercised
            with torch.no_grad():
                q = model.q(s[0].unsqueeze(0))[0].gather(1, s[1].unsqueeze(1)).squeeze(1)
                d = q - model._td_target(s[2].unsqueeze(0), s[3].unsqueeze(0),
                                         s[4].unsqueeze(0))[0]  # fmt: skip
            assert (d.abs() < 1).any() and (d.abs() > 1).any()
        model.update(*s)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_iql_deferred_gradients_are_the_written_ones_in_grad_targets_order(precision):
    """The compiled step returns the gradients instead of writing them (one graph); copied in
    the order of ``grad_targets()``, they must be the gradients the eager step writes (to the
    last bits but for a product over the critics' shared input, which BLAS rounds a little
    differently when it writes into a view of the flat buffer)."""
    torch.manual_seed(0)
    algo = IQL(Common(D, A, 0.99, (32, 32), 10.0), load_train_config().iql)
    nets = (algo.value, algo.critic, algo.actor)
    if precision == "bf16":
        for net in (*nets, algo.critic_target):
            net.matmul_dtype = torch.bfloat16
    algo.compute_gradients(*batch(1))
    written = [t.clone() for net in nets for t in net.grad_targets()]
    for flat in algo.optimizer.flat.values():
        flat.grad.zero_()
    stats, deferred = algo._gradients(*batch(1), deferred=True)
    assert all(float(flat.grad.abs().sum()) == 0.0 for flat in algo.optimizer.flat.values())
    assert len(deferred) == len(written) == 18  # 3 networks x 3 layers x (bias, weight)
    for i, (got, want) in enumerate(zip(deferred, written, strict=True)):
        assert got.shape == want.shape, i
        torch.testing.assert_close(got.to(want.dtype), want, rtol=1e-6, atol=1e-8, msg=str(i))
    assert set(stats) >= {"value_loss", "critic_loss", "actor_loss"}


def test_the_compiled_iql_step_is_one_graph():
    """A graph break costs a guard check and a Python round trip per step (about 6 % of the
    card's fp32 step when the gradient writes broke it into three graphs)."""
    import functools

    torch.manual_seed(0)
    algo = IQL(Common(D, A, 0.99, (32, 32), 10.0), load_train_config().iql)
    explained = torch._dynamo.explain(functools.partial(algo._gradients, deferred=True))(*batch(2))
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1
