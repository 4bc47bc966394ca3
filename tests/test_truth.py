"""`sepsisrl truth`: the build's state function online, rollouts on the replay's MDP, paired
patients, calibration against the replay, and clear refusals."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sepsisrl.truth.harness import clinician_reference, compute_truth, population_for
from sepsisrl.truth.policies import (
    Constant,
    PolicySpecError,
    Recorder,
    parse_spec,
    world_policy,
)
from sepsisrl.truth.rollout import LATENT_STATE, rollout_population
from sepsisrl.truth.world import TruthContext, TruthError

SPLITS = ("train", "validation", "test")


class _SofaRecorder(Recorder):
    """Defers to the clinicians, recording the SOFA the rollout gives a policy that asks."""

    wants_context = True

    def __init__(self) -> None:
        self.seen: list = []

    def decide(self, states, raw):
        self.seen.append(self.context)
        return super().decide(states, raw)


@pytest.fixture(scope="module")
def recorder(own_world, tmp_path_factory):
    _, pop, ctx = own_world
    rec = _SofaRecorder()
    work = tmp_path_factory.mktemp("rollout")
    # with the hidden state recorded, so that the parity tests below also prove it changes
    # nothing else
    rec.outcome = rollout_population(
        ctx, pop, rec, work, record_states=True, record_latent=LATENT_STATE
    )
    return rec


@pytest.fixture(scope="module")
def recorded(recorder):
    return recorder.outcome


def _replay(ws: Path, variant: str = "sparse") -> pa.Table:
    parts = [pq.read_table(ws / "replay" / variant / f"replay_{s}.parquet") for s in SPLITS]
    return pa.concat_tables(parts).sort_by([("stay_id", "ascending"), ("step", "ascending")])


def test_online_states_equal_the_builds_row_for_row(own_world, recorded):
    root, _, ctx = own_world
    dec = recorded.decisions
    built = pq.read_table(root / "ws" / "features" / "state_raw.parquet").sort_by(
        [("stay_id", "ascending"), ("step", "ascending")]
    )
    assert dec.num_rows == built.num_rows > 100
    assert dec["stay_id"].to_pylist() == built["stay_id"].to_pylist()
    assert dec["step"].to_pylist() == built["step"].to_pylist()
    assert dec["tau"].cast(pa.int64()).to_pylist() == built["tau"].cast(pa.int64()).to_pylist()
    for name in ctx.feature_names:  # raw (clipped, imputed) values and missingness flags
        np.testing.assert_allclose(
            dec[name].to_numpy(), built[name].to_numpy().astype(np.float64), err_msg=name
        )
    replay = _replay(root / "ws")
    online = np.column_stack([dec[f"norm_{n}"].to_numpy() for n in ctx.feature_names])
    offline = np.column_stack([replay[f"s_{n}"].to_numpy() for n in ctx.feature_names])
    np.testing.assert_allclose(online, offline, rtol=1e-6, atol=1e-6)


def test_the_hidden_state_at_each_decision_is_the_simulators(own_world, recorded):
    """``record_latent``: each decision's hidden lactate is its stay's true hourly lactate
    (the rollout's physiology record) at one hour, and those hours lie a step (4 hours) apart:
    the state as the decision is made. A decision after the stay's last recorded hour has no
    record to match. An unknown name is refused."""
    dec, phys = recorded.decisions, recorded.physiology
    step_hours = own_world[2].build_cfg.episodes.step_hours
    lat = {n: dec[f"latent_{n}"].to_numpy() for n in LATENT_STATE}
    assert all(np.isfinite(v).all() for v in lat.values())
    assert (lat["volume"] > 0).all() and lat["lactate"].std() > 0
    stays, steps = dec["stay_id"].to_numpy(), dec["step"].to_numpy()
    hourly: dict[int, dict[float, set[int]]] = {}
    true_lactate = phys["lactate"].to_numpy().astype(np.float32).tolist()
    for s, h, v in zip(phys["stay_id"].to_pylist(), phys["h"].to_pylist(), true_lactate,
                       strict=True):  # fmt: skip
        hourly.setdefault(s, {}).setdefault(v, set()).add(h)
    matched = 0
    for s in np.unique(stays).tolist():
        m = stays == s
        k0, last = steps[m][0], max(h for hs in hourly[s].values() for h in hs)
        starts, beyond = None, []
        for k, v in zip(steps[m].tolist(), lat["lactate"][m].astype(np.float32).tolist(),
                        strict=True):  # fmt: skip
            hours = hourly[s].get(v)
            if hours is None:
                beyond.append(k)
                continue
            at = {h - step_hours * (k - k0) for h in hours}
            starts = at if starts is None else starts & at
            matched += 1
        assert starts, f"stay {s}: no hours a step apart carry its decisions' lactate"
        assert all(min(starts) + step_hours * (k - k0) > last for k in beyond), s
    assert matched > 100
    with pytest.raises(ValueError, match="not in LATENT_STATE"):
        rollout_population(None, None, None, Path("/nonexistent"), record_latent=("mood",))


def test_online_sofa_at_decision_times_equals_the_replays(own_world, recorder):
    """The SOFA a policy is given at tau (the environment's shaped rewards read it) is the
    replay's SOFA(tau) and state SOFA, row for row."""
    root, _, _ = own_world
    ctx = recorder.seen
    stay = np.concatenate([c.stay_id for c in ctx])
    order = np.lexsort((np.concatenate([c.step for c in ctx]), stay))
    replay = _replay(root / "ws")
    assert len(order) == replay.num_rows > 100
    np.testing.assert_array_equal(stay[order], replay["stay_id"].to_numpy())
    for col in ("sofa", "sofa_state"):
        got = np.concatenate([getattr(c, col) for c in ctx])[order]
        want = replay[col].to_numpy().astype(np.float64)
        # KNOWN DIFFERENCE (docs/gymnasium.md, "Rewards"): 1 decision of 645 (stay 30000421,
        # step 7) has SOFA 9 online and 10 in the replay: the build closes the stay's ongoing
        # ventilation period with charting from after tau, so a blood gas between the last
        # ventilator setting charted before tau and tau counts as ventilated in the replay's
        # SOFA(tau) (respiration 4) and not online (3). Every other decision agrees exactly.
        differ = got != want
        assert differ.sum() <= 1, (col, np.flatnonzero(differ))
        assert np.abs(got - want).max() <= 1
    assert np.ptp(replay["sofa"].to_numpy()) > 2  # SOFA varies in this world


def test_online_actions_equal_the_logged_actions(own_world, recorded):
    root, _, _ = own_world
    replay = _replay(root / "ws")
    logged = recorded.decisions["logged_action"].to_numpy()
    np.testing.assert_array_equal(logged, replay["action"].to_numpy())
    # every decision was left to the clinicians
    assert (recorded.decisions["action"].to_numpy() == -1).all()


def test_states_at_decision_time_equal_states_from_the_complete_tables(own_world, recorded):
    _, _, ctx = own_world
    dec = recorded.decisions
    for name in ctx.feature_names:
        np.testing.assert_allclose(
            dec[name].to_numpy(), dec[f"after_{name}"].to_numpy(), err_msg=name
        )


def test_deferring_rollout_reproduces_the_replay_outcomes(own_world, recorded):
    _, pop, ctx = own_world
    ref = clinician_reference(pop, ctx)
    ep = recorded.episodes.sort_by("stay_id")
    assert ep["stay_id"].to_pylist() == ref["stay_id"].to_pylist()
    np.testing.assert_array_equal(ep["died_90d"].to_numpy(), ref["died_90d"].to_numpy())
    np.testing.assert_array_equal(ep["steps"].to_numpy(), ref["steps"].to_numpy())
    np.testing.assert_allclose(ep["return_eval"].to_numpy(), ref["return_eval"].to_numpy())


@pytest.mark.slow
def test_identical_policies_identical_outcomes_and_same_patients(own_world):
    root, pop, _ = own_world
    a = rollout_population(ctx_of(own_world), pop, Constant(0, "a"), root / "wa")
    b = rollout_population(ctx_of(own_world), pop, Constant(0, "b"), root / "wb")
    c = rollout_population(ctx_of(own_world), pop, Constant(24, "c"), root / "wc")
    assert a.episodes.equals(b.episodes)
    assert a.decisions.equals(b.decisions)
    assert a.physiology.equals(b.physiology)
    # a different policy treats the same patients: the same episodes, and the same true
    # physiology hour by hour until the episode's first decision
    assert a.episodes["stay_id"].to_pylist() == c.episodes["stay_id"].to_pylist()

    def before(r):
        return r.physiology.filter(r.physiology["before_first_decision"])

    assert before(a).num_rows > 500  # hundreds of patient-hours compared
    assert before(a).equals(before(c))
    # ...and its actions were applied: the charted action is mostly the chosen one, and the
    # patients' course changed
    fidelity = np.mean(c.decisions["logged_action"].to_numpy() == 24)
    assert fidelity > 0.6, fidelity
    assert not a.physiology.equals(c.physiology)


def ctx_of(own_world):
    return own_world[2]


@pytest.mark.slow
def test_clinicians_truth_agrees_with_the_replay_cohort(built, tmp_path):
    """Fresh patients of the same world configuration, under the clinicians: their true
    90-day mortality agrees with the replay cohort's observed mortality within sampling error."""
    ws, _, _ = built
    doc = compute_truth(ws, world_policy("clinician", None, None, [], 25, 0), tmp_path / "t",
                        n_patients=700, seed=3)  # fmt: skip
    truth_p, n1 = doc["mortality_90d"]["mean"], doc["episodes"]
    cohort = pq.read_table(ws / "cohort" / "cohort.parquet")
    episodes = pq.read_table(ws / "episodes" / "episodes.parquet")
    died = dict(zip(cohort["stay_id"].to_pylist(), cohort["died_90d"].to_pylist(), strict=True))
    obs = np.array([died[s] for s in episodes["stay_id"].to_pylist()], dtype=float)
    p2, n2 = obs.mean(), len(obs)
    pooled = (truth_p * n1 + p2 * n2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    assert n1 > 150 and n2 > 150
    assert abs(truth_p - p2) < 3 * se, (truth_p, p2, se)
    # the clinicians' paired difference from themselves is exactly zero
    assert doc["difference_from_clinicians"]["mortality_90d"]["mean"] == 0.0
    assert doc["decisions_deferred_to_clinicians"] == doc["decisions"]
    saved = json.loads((tmp_path / "t" / "truth.json").read_text())
    assert saved["patients_are_fresh"] and saved["fingerprints"]["build"]
    # fresh patients: none of the replay's patients is simulated again
    pop = population_for(TruthContext.load(ws), 700, 3)
    assert pop.seed != 21 and len(pop.seed) == 3


def test_spec_grammar():
    assert parse_spec("constant:12") == ("constant", 12)
    assert parse_spec("rule:map_lactate") == ("rule", "map_lactate")
    assert parse_spec("no_treatment") == ("no_treatment", None)
    for bad in ("constant:25", "constant:x", "constant:-1", "rule:nope", "fluids", ""):
        with pytest.raises(PolicySpecError):
            parse_spec(bad)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sepsisrl.cli", *args], capture_output=True, text=True
    )


def test_cli_refuses_a_non_synthetic_workspace(own_world, tmp_path):
    root, _, _ = own_world
    ws = tmp_path / "ws"
    shutil.copytree(root / "ws", ws)
    summary = json.loads((ws / "build_summary.json").read_text())
    summary["source"]["kind"] = "mimic-iv"
    (ws / "build_summary.json").write_text(json.dumps(summary))
    res = _cli("truth", "--workspace", str(ws), "--policy", "clinician", "--patients", "10")
    assert res.returncode == 2
    assert "synthetic world" in res.stderr and "mimic-iv" in res.stderr
    assert not (ws / "truth").exists()


def test_cli_refuses_an_unknown_spec(own_world):
    root, _, _ = own_world
    res = _cli("truth", "--workspace", str(root / "ws"), "--policy", "constant:99")
    assert res.returncode == 2 and "0..24" in res.stderr
    res = _cli("truth", "--workspace", str(root / "ws"), "--policy", "morphine")
    assert res.returncode == 2 and "unknown policy 'morphine'" in res.stderr


def test_cli_refuses_a_bundle_with_other_features(own_world, tmp_path):
    root, _, ctx = own_world
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    names = [*ctx.feature_names[:-1], "lactate_velocity"]
    (bundle / "config.json").write_text(
        json.dumps({"state_dim": 62, "n_actions": 25, "feature_names": names})
    )
    res = _cli("truth", "--workspace", str(root / "ws"), "--bundle", str(bundle))
    assert res.returncode == 2 and "features do not match" in res.stderr


def test_cli_refuses_a_run_trained_on_another_build(own_world, built, tmp_path):
    from sepsisrl.rl.config import load_train_config
    from sepsisrl.rl.trainer import train

    other_ws, _, _ = built
    cfg = load_train_config(overrides={
        "algo": "bc", "steps": 4, "hidden_sizes": [8], "batch_size": 16, "log_every": 2,
        "checkpoint_every": 2,
    })  # fmt: skip
    run = train(other_ws / "replay" / "sparse", cfg, tmp_path / "run").run_dir
    root, _, _ = own_world
    res = _cli("truth", "--workspace", str(root / "ws"), "--run", str(run))
    assert res.returncode == 2 and "another build" in res.stderr
    with pytest.raises(PolicySpecError, match="exactly one"):
        world_policy("clinician", run, None, [], 25, 0)


@pytest.mark.slow
def test_truth_of_a_trained_run_end_to_end(own_world, tmp_path):
    from sepsisrl.rl.config import load_train_config
    from sepsisrl.rl.trainer import train

    root, _, _ = own_world
    cfg = load_train_config(overrides={
        "algo": "bc", "steps": 4, "hidden_sizes": [8], "batch_size": 16, "log_every": 2,
        "checkpoint_every": 2,
    })  # fmt: skip
    run = train(root / "ws" / "replay" / "sparse", cfg, tmp_path / "run").run_dir
    out = tmp_path / "truth"
    res = _cli("truth", "--workspace", str(root / "ws"), "--run", str(run), "--patients", "60",
               "--out", str(out), "--quiet")  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = json.loads((out / "truth.json").read_text())
    assert doc["policy"].startswith("run:") and doc["episodes"] > 5
    lo, hi = doc["mortality_90d"]["ci95"]
    assert lo <= doc["mortality_90d"]["mean"] <= hi
    assert doc["decisions_deferred_to_clinicians"] == 0
    # the model card shows the truth beside the estimates; another policy's truth is refused
    from sepsisrl.release.bundle import ExportError, export_run

    bundle = export_run(run, tmp_path / "release", truth=out / "truth.json")
    card = (bundle / "README.md").read_text()
    assert "## Truth in the synthetic world" in card
    assert f"{doc['mortality_90d']['mean']:.3f}" in card
    config = json.loads((bundle / "config.json").read_text())
    assert config["truth"]["value"] == doc["value"]
    other = json.loads((out / "truth.json").read_text())
    other["policy"] = "constant:3"
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ExportError, match="not of run:"):
        export_run(run, tmp_path / "release2", truth=tmp_path / "other.json")


def test_not_a_workspace_is_a_clear_error(tmp_path):
    with pytest.raises(TruthError, match="not a built workspace"):
        TruthContext.load(tmp_path)


def test_evaluate_accepts_the_same_policy_grammar(own_world, tmp_path):
    from sepsisrl.ope.behaviour import BehaviourConfig
    from sepsisrl.ope.evaluate import EvalConfig, EvaluationError, evaluate
    from sepsisrl.ope.fqe import FQEConfig
    from sepsisrl.truth.policies import map_lactate_actions, raw_from_normalised

    root, _, ctx = own_world
    fast = EvalConfig(bootstrap_resamples=200, behaviour=BehaviourConfig(max_epochs=2),
                      fqe=FQEConfig(hidden=(16, 16), members=2, max_steps=40,
                                    min_steps=20, eval_every=20))  # fmt: skip
    replay = root / "ws" / "replay" / "sparse"
    doc = evaluate("constant:12", replay, tmp_path / "c12", kind="named", cfg=fast)
    assert doc["policy"]["name"] == "constant:12"
    rows = list(csv_rows(tmp_path / "c12" / "cases.csv"))
    assert rows and all(r["policy_action"] == "12" for r in rows)
    doc = evaluate("rule:map_lactate", replay, tmp_path / "rule", kind="named", cfg=fast)
    assert doc["policy"]["name"] == "rule:map_lactate"
    # the rule acts on the raw state recovered from the normalised one
    val = pq.read_table(replay / "replay_validation.parquet")
    states = np.column_stack([val[f"s_{n}"].to_numpy() for n in ctx.feature_names])
    raw = raw_from_normalised(ctx.stats.prep, ctx.feature_names, states)
    built = pq.read_table(root / "ws" / "features" / "state_raw.parquet")
    np.testing.assert_allclose(
        np.sort(raw["map"]), np.sort(built.filter(pa.compute.equal(built["split"], "validation"))
                                     ["map"].to_numpy()), rtol=1e-4)  # fmt: skip
    expected = map_lactate_actions(raw)
    got = [int(r["policy_action"]) for r in csv_rows(tmp_path / "rule" / "cases.csv")]
    assert got == expected.tolist()
    with pytest.raises(EvaluationError, match=r"0\.\.24"):
        evaluate("constant:30", replay, tmp_path / "bad", kind="named", cfg=fast)


def csv_rows(path: Path):
    import csv

    with open(path, newline="") as fh:
        yield from csv.DictReader(fh)
