"""Rollouts in lockstep (truth/lockstep.py): several policies on the same patients share the
state function's calls, and each gets exactly the outcome it has alone."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sepsisrl.truth.harness import _lockstep, compute_truth, compute_truths, population_for
from sepsisrl.truth.lockstep import ID_OFFSET, LockstepAborted, _shift
from sepsisrl.truth.policies import Constant, MapLactate, Uniform
from sepsisrl.truth.rollout import rollout_population


class _SofaAware(MapLactate):
    """The rule, reading the SOFA at tau the rollout gives a policy that asks (the
    environment's path); records what it saw."""

    wants_context = True

    def __init__(self) -> None:
        super().__init__()
        self.name = "sofa_aware"
        self.seen: list[np.ndarray] = []

    def decide(self, states, raw):
        self.seen.append(np.asarray(self.context.sofa).copy())
        return super().decide(states, raw)


class _Fails(MapLactate):
    def __init__(self) -> None:
        super().__init__()
        self.name = "fails"
        self.calls = 0

    def decide(self, states, raw):
        self.calls += 1
        if self.calls == 3:
            raise ValueError("deliberate failure at the third decision")
        return super().decide(states, raw)


def _policies():
    return [MapLactate(), Uniform(25, 7), _SofaAware()]


@pytest.fixture(scope="module")
def small(own_world, tmp_path_factory):
    """60 fresh patients of the truth world (about 20 episodes): (workspace, population,
    context)."""
    root, _, ctx = own_world
    pop = population_for(ctx, 60, 1, cache=tmp_path_factory.mktemp("populations"))
    assert pop.episodes().num_rows >= 10
    return root / "ws", pop, ctx


def test_every_policy_in_lockstep_has_its_outcome_alone(small, tmp_path, monkeypatch):
    from sepsisrl.truth.lockstep import SharedStateFunction

    _, pop, ctx = small
    # alone: the SOFA-reading rule and the uniform policy; MapLactate decides as the SOFA-reading
    # rule does, so both its lockstep rollout and the SOFA reader's must equal that one's alone
    solo = _policies()
    alone_of = {0: 2, 1: 1, 2: 2}  # lockstep policy -> the solo rollout it must reproduce
    alone = {i: rollout_population(ctx, pop, solo[i], tmp_path / f"alone{i}") for i in (1, 2)}
    policies = _policies()
    tmps = [tmp_path / f"lock{i}" for i in range(len(policies))]
    for t in tmps:
        t.mkdir()
    # each rollout's last call, over all its decisions, runs on its own (not merged)
    merged_sizes, alone_calls = [], []
    merged, on_own = SharedStateFunction._merged, SharedStateFunction._alone

    def optimizer(fn):  # DuckDB's optimizer setting on both of the state function's connections
        q = "SELECT value FROM duckdb_settings() WHERE name = 'enable_optimizer'"
        return {c.execute(q).fetchall()[0][0] for c in (fn.con, fn.state_con)}

    def spy_merged(self, requests):
        assert not any(r.whole for r in requests.values())
        merged_sizes.append(len(requests))
        answers = merged(self, requests)
        assert optimizer(self.fn) == {"false"}  # a call over a few due stays: planned cheaply
        return answers

    def spy_alone(self, request):
        assert request.whole
        alone_calls.append(request.grid.num_rows)
        answer = on_own(self, request)
        assert optimizer(self.fn) == {"true"}  # the whole rollout's call: optimised
        return answer

    monkeypatch.setattr(SharedStateFunction, "_merged", spy_merged)
    monkeypatch.setattr(SharedStateFunction, "_alone", spy_alone)
    lock = _lockstep(ctx, pop, policies, tmps, "held")
    assert len(alone_calls) == len(policies) and max(merged_sizes) >= 2  # others still merge
    assert sorted(alone_calls) == sorted(alone[alone_of[i]].decisions.num_rows for i in range(3))
    for i, b in enumerate(lock):
        a = alone[alone_of[i]]
        assert a.decisions.num_rows > 50
        assert a.decisions.equals(b.decisions)
        assert a.physiology.equals(b.physiology)
        assert a.episodes.equals(b.episodes)
    # the policies differ, so the comparison is not vacuous
    acts = [alone[i].decisions["action"].to_numpy() for i in (1, 2)]
    assert not np.array_equal(acts[0], acts[1])
    # the SOFA a policy reads at tau is the same in lockstep as alone (the rule asks for it
    # beside a rule that does not, so the shared call computes it for one rollout only)
    assert len(solo[2].seen) == len(policies[2].seen) > 10
    for x, y in zip(solo[2].seen, policies[2].seen, strict=True):
        np.testing.assert_array_equal(x, y)
    # every temporary folder of the shared state function is gone
    assert not any(p.name == ".shared" for t in tmps for p in t.iterdir())


def test_truths_in_lockstep_write_the_documents_of_truths_alone(small, tmp_path):
    ws, pop, ctx = small
    pair = [Constant(24, "constant_24"), Uniform(25, 3)]
    outs = [tmp_path / "lock" / p.name for p in pair]
    docs = compute_truths(ws, list(zip(pair, outs, strict=True)), ctx=ctx, population=pop)
    one = compute_truth(ws, Uniform(25, 3), tmp_path / "one", ctx=ctx, population=pop)
    assert [d["seconds"]["rollouts_in_lockstep"] for d in docs] == [2, 2]
    assert one["seconds"]["rollouts_in_lockstep"] == 1

    def strip(d):
        return json.dumps({k: v for k, v in d.items() if k != "seconds"}, sort_keys=True)

    assert strip(docs[1]) == strip(one)
    assert strip(json.loads((outs[1] / "truth.json").read_text())) == strip(one)
    assert pq.read_table(outs[1] / "episodes.parquet").equals(
        pq.read_table(tmp_path / "one" / "episodes.parquet")
    )
    assert docs[0]["policy"] == "constant_24" and docs[0]["episodes"] == one["episodes"]


def test_a_failing_rollout_stops_the_group_and_writes_nothing(small, tmp_path):
    ws, pop, ctx = small
    policies = [MapLactate(), _Fails(), Constant(3, "constant_3")]
    outs = [tmp_path / p.name for p in policies]
    with pytest.raises(ValueError, match="deliberate failure at the third decision"):
        compute_truths(ws, list(zip(policies, outs, strict=True)), ctx=ctx, population=pop)
    for out in outs:  # atomic: no truth, no half-written folder
        assert not out.exists()
    assert not list(tmp_path.iterdir())


def test_identifiers_move_to_a_range_of_their_own():
    tab = pa.table({"stay_id": pa.array([30000001, None], pa.int64()),
                    "subject_id": [10000001, 10000002], "itemid": [220045, 220045],
                    "specimen_id": pa.array([5, None], pa.int64())})  # fmt: skip
    got = _shift(tab, 3 * ID_OFFSET)
    assert got["stay_id"].to_pylist() == [30000001 + 3 * ID_OFFSET, None]
    assert got["subject_id"].to_pylist() == [10000001 + 3 * ID_OFFSET, 10000002 + 3 * ID_OFFSET]
    assert got["itemid"].to_pylist() == [220045, 220045]  # an item is not an identifier
    assert got["specimen_id"].to_pylist() == [5 + 3 * ID_OFFSET, None]
    assert got.schema == tab.schema
    with pytest.raises(TypeError, match="stay_id"):
        _shift(pa.table({"stay_id": ["x"]}), ID_OFFSET)
    assert issubclass(LockstepAborted, RuntimeError)


def test_the_truth_phase_deals_policies_into_lockstep_units():
    from sepsisrl.study.runner import truth_units

    specs = [{"name": f"p{i}", "out": f"/o/p{i}"} for i in range(29)]
    units = truth_units(specs, workers=2, lockstep=3, threads=1)
    # at most 3 per unit, every policy exactly once, as even as the count allows
    assert len(units) == 10
    sizes = [len(u["truths"]) for u in units]
    assert max(sizes) == 3 and min(sizes) == 2 and sum(sizes) == 29
    assert sorted(s["name"] for u in units for s in u["truths"]) == sorted(s["name"] for s in specs)
    assert units[0]["label"] == "p0 and 2 more (truth)" and units[0]["threads"] == 1
    # few policies: one unit per worker at most, one policy alone keeps its name
    assert [len(u["truths"]) for u in truth_units(specs[:3], 2, 8, 1)] == [2, 1]
    assert truth_units(specs[:1], 2, 8, 1)[0]["label"] == "p0 (truth)"
    assert truth_units([], 2, 3, 1) == []
    # lockstep 1: every policy its own unit, as before lockstep existed
    assert len(truth_units(specs, 2, 1, 1)) == 29


def test_a_rollout_charts_only_the_hours_it_reads_and_has_the_full_charting_outcome(
    small, tmp_path, monkeypatch
):
    """A truth rollout stops charting an ordinal's hours one hour after its cohort stays' last
    action window (the simulation goes on: the outcome is the simulator's). Its decisions,
    logged treatment of every window, physiology and outcomes are those of a rollout that
    charts every hour (``keep_tables``). Without ``keep_tables`` the charters keep no row:
    the rollout keeps only the cohort's rows (the states' and the logged treatment's input)."""
    from sepsisrl.synth.hourly import HourlyCharter

    _, pop, ctx = small
    charted: list[int] = []
    kept: list[int] = []
    original = HourlyCharter.chart_last_hour

    def counting(self):
        charted[-1] += 1
        rows = original(self)
        kept[-1] += sum(len(parts) for parts in self.parts.values()) > 0
        return rows

    monkeypatch.setattr(HourlyCharter, "chart_last_hour", counting)
    results = []
    for keep in (True, False):
        charted.append(0)
        kept.append(0)
        results.append(
            rollout_population(ctx, pop, MapLactate(), tmp_path / str(keep), keep_tables=keep)
        )
    full, lean = results
    assert charted[1] < charted[0]  # hours were skipped
    assert kept[0] > 0 and kept[1] == 0  # hours after which a charter held rows
    assert full.decisions.num_rows > 50
    assert full.decisions.equals(lean.decisions)  # logged_action: the window's charted doses
    assert full.physiology.equals(lean.physiology)
    assert full.episodes.equals(lean.episodes)
    assert full.tables_dir is not None and lean.tables_dir is None


def test_a_clients_sofa_after_the_whole_rollout_call_says_why_there_is_none(monkeypatch):
    """The SOFA at tau comes with a decision time's call; after the rollout's last call (over
    all its decisions, ``whole=True``) there is none, and the error says so."""
    from sepsisrl.truth import lockstep as lk

    class _Shared:  # answers as SharedStateFunction does: no SOFA for the whole call
        def ask(self, index, request):
            sofa = None if request.whole else (np.zeros(1), np.ones(1))
            return lk._Answer(states=None, treatment=None, sofa=sofa)

    monkeypatch.setattr(lk, "due_rows", lambda charted, static, grid: (charted, static))
    grid = pa.table({"stay_id": pa.array([1], pa.int64())})
    client = lk.StateClient(_Shared(), 0, sofa=True)
    client({}, {}, grid, grid)
    np.testing.assert_array_equal(client.sofa(grid)[1], np.ones(1))
    client({}, {}, grid, grid, whole=True)
    with pytest.raises(RuntimeError, match=r"whole-rollout call \(whole=True\) computes no SOFA"):
        client.sofa(grid)


@pytest.mark.parametrize("policy", [MapLactate, _SofaAware])
def test_a_rollout_merges_its_batches_state_calls_and_has_their_outcome_alone(
    small, tmp_path, monkeypatch, policy
):
    """``merge_batches``: a chunk's admission ordinals simulate side by side and each hour's
    due stays of all of them take one state call (identifiers moved apart per batch). Each
    batch's states are those it gets alone, so the decisions, SOFA read at tau, physiology and
    outcomes equal the batch-after-batch rollout's, in fewer calls; an order-free policy
    merges by default."""
    from sepsisrl.truth.online import OnlineStateFunction
    from sepsisrl.truth.rollout import BATCH_ID_OFFSET

    _, pop, ctx = small
    grids: list[list[np.ndarray]] = []
    original = OnlineStateFunction.__call__

    def spy(self, charted, static, grid, cohort, whole=False, due=False):
        if not whole:
            grids[-1].append(grid["stay_id"].to_numpy() // BATCH_ID_OFFSET)
        return original(self, charted, static, grid, cohort, whole=whole, due=due)

    monkeypatch.setattr(OnlineStateFunction, "__call__", spy)
    runs, seen = [], []
    for merge in (False, True, None):
        grids.append([])
        p = policy()
        assert p.order_free
        runs.append(rollout_population(ctx, pop, p, tmp_path / str(merge), merge_batches=merge))
        seen.append(getattr(p, "seen", None))
    alone, merged, default = runs
    assert alone.decisions.num_rows > 50
    for other in (merged, default):
        assert alone.decisions.equals(other.decisions)
        assert alone.physiology.equals(other.physiology)
        assert alone.episodes.equals(other.episodes)
    # batch after batch, every call holds one batch; merged, some hold several, so fewer calls
    assert all(len(np.unique(g)) == 1 for g in grids[0])
    assert max(len(np.unique(g)) for g in grids[1]) >= 2
    assert len(grids[1]) == len(grids[2]) < len(grids[0])
    if seen[0] is not None:  # the SOFA at tau: the same values, asked in another order
        assert sum(len(x) for x in seen[0]) == sum(len(x) for x in seen[1]) > 50
        np.testing.assert_array_equal(np.sort(np.concatenate(seen[0])),
                                      np.sort(np.concatenate(seen[1])))  # fmt: skip


def test_a_policy_with_a_random_stream_is_asked_batch_after_batch(small, tmp_path, monkeypatch):
    """A policy that is not order-free (its decisions depend on the order of its calls) keeps
    the batch-after-batch rollout: its random draws meet the stays in the order they always
    did."""
    from sepsisrl.truth.policies import HeldSample

    _, pop, ctx = small
    used: list[bool] = []
    import sepsisrl.truth.rollout as ro

    original = ro.run_charted_together

    def spy(*args, **kwargs):
        used.append(True)
        return original(*args, **kwargs)

    monkeypatch.setattr(ro, "run_charted_together", spy)

    def probs(states):
        return np.full((len(states), 25), 1 / 25)

    assert not HeldSample(probs, 0).order_free and not Uniform(25, 0).order_free
    a = rollout_population(ctx, pop, HeldSample(probs, 5), tmp_path / "a")
    assert not used
    b = rollout_population(ctx, pop, HeldSample(probs, 5), tmp_path / "b", merge_batches=False)
    assert a.decisions.equals(b.decisions) and a.episodes.equals(b.episodes)
    rollout_population(ctx, pop, MapLactate(), tmp_path / "c")
    assert used
