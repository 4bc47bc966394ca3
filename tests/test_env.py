"""The synthetic world as a Gymnasium environment: the Gymnasium contract (env_checker), the
same patients for the same seed, returns equal to `sepsisrl truth` on the same patients, the
replay's rewards, the vector form and clear refusals."""

from __future__ import annotations

import json
import multiprocessing
import threading

import gymnasium
import numpy as np
import pyarrow.parquet as pq
import pytest
from gymnasium.utils.env_checker import check_env

import sepsisrl.env
from sepsisrl.env import ENV_ID, SepsisWorldEnv
from sepsisrl.truth.harness import compute_truth
from sepsisrl.truth.policies import MapLactate
from sepsisrl.truth.world import TruthError


@pytest.fixture(scope="module")
def ws(own_world):
    root, _, _ = own_world
    return root / "ws"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("env_patients")


def _rule(info) -> int:
    raw = {k: np.array([v]) for k, v in info["state_raw"].items()}
    return int(MapLactate().decide(None, raw)[0])


def _episode(env, seed=None, policy=_rule):
    obs, info = env.reset(seed=seed)
    rows = [(obs, info)]
    rewards = []
    while True:
        obs, reward, terminated, truncated, info = env.step(policy(rows[-1][1]))
        rewards.append(reward)
        if terminated or truncated:
            return rows, rewards, info
        rows.append((obs, info))


def test_the_environment_passes_gymnasiums_checker(ws, cache):
    env = SepsisWorldEnv(ws, cache=cache)
    check_env(env, skip_render_check=True)
    env.close()
    assert env.observation_space.shape == (len(env.feature_names),)
    assert env.action_space.n == 25


def test_make_registers_and_same_seed_gives_the_same_patients_and_episodes(ws, cache):
    env = gymnasium.make(ENV_ID, workspace=ws, cache=cache, reward="sofa_shaped")
    a = _episode(env, seed=3)
    b = _episode(env, seed=3)
    env.close()
    assert len(a[0]) == len(b[0]) >= 1
    for (oa, ia), (ob, ib) in zip(a[0], b[0], strict=True):
        np.testing.assert_array_equal(oa, ob)
        assert ia["stay_id"] == ib["stay_id"] and ia["step"] == ib["step"]
    assert a[1] == b[1] and a[2] == b[2]
    assert all(env.observation_space.contains(o) for o, _ in a[0])


def test_returns_equal_the_truth_of_the_same_policy_on_the_same_patients(ws, cache, tmp_path):
    """The rule policy deciding through the environment and through `sepsisrl truth` on the
    same one-patient populations: the same decisions, deaths, steps and returns."""
    env = SepsisWorldEnv(ws, reward="sparse", cache=cache)
    env.reset(seed=11)
    episodes = []
    for _ in range(2):
        rows, rewards, last = _episode(env)
        episodes.append((rows, rewards, last))  # the next reset draws the stream's next patient
    env.close()
    gamma = env.ctx.gamma
    patients = [ep[2]["patient"] for ep in episodes]
    assert len(set(patients)) == 2
    for (_, rewards, last), patient in zip(episodes, patients, strict=True):
        out = tmp_path / f"truth{patient}"
        doc = compute_truth(
            ws, MapLactate(), out, 1, ctx=env.ctx, population=env.population(11, patient)
        )
        truth = pq.read_table(out / "episodes.parquet")
        assert truth.num_rows == 1 and doc["episodes"] == 1
        assert truth["stay_id"][0].as_py() == last["stay_id"]
        assert truth["steps"][0].as_py() == last["steps"] == len(rewards)
        assert truth["died_90d"][0].as_py() == last["died_90d"]
        assert truth["return_eval"][0].as_py() == pytest.approx(last["return_eval"], abs=1e-12)
        # the sparse reward is the evaluation reward: its discounted return is the truth's
        discounted = sum(r * gamma**k for k, r in enumerate(rewards))
        assert discounted == pytest.approx(doc["value"]["mean"], abs=1e-9)
        assert rewards[-1] == (-15.0 if last["died_90d"] else 15.0)


def test_the_titrated_interface_gives_the_truths_titrated_episode(ws, cache, tmp_path):
    """With interface="titrated" the environment plays the same patient as `sepsisrl truth
    --interface titrated` (the team titrating inside the chosen bins), not the held episode."""
    policy = _rule
    env = SepsisWorldEnv(ws, reward="sparse", cache=cache, interface="titrated")
    assert env.interface == "titrated"
    rows, rewards, last = _episode(env, seed=11, policy=policy)
    env.close()
    pop = env.population(11, last["patient"])
    doc = compute_truth(
        ws, MapLactate(), tmp_path / "t", 1, ctx=env.ctx, population=pop, interface="titrated"
    )
    truth = pq.read_table(tmp_path / "t" / "episodes.parquet")
    assert doc["interface"] == "titrated"
    assert truth["steps"][0].as_py() == last["steps"] == len(rewards)
    assert truth["died_90d"][0].as_py() == last["died_90d"]
    assert truth["return_eval"][0].as_py() == pytest.approx(last["return_eval"], abs=1e-12)
    # the same decisions reach the patient differently: the held environment's patient
    # differs from the titrated one in its recorded course
    held = SepsisWorldEnv(ws, reward="sparse", cache=cache)
    held_rows, _, _ = _episode(held, seed=11, policy=policy)
    held.close()
    assert held_rows[0][1]["patient"] == rows[0][1]["patient"]  # the same patient
    np.testing.assert_array_equal(held_rows[0][0], rows[0][0])  # the same first state
    later = min(len(rows), len(held_rows))
    assert later > 1 and any(
        not np.array_equal(held_rows[k][0], rows[k][0]) for k in range(1, later)
    )
    with pytest.raises(TruthError, match="interface 'bolus'"):
        SepsisWorldEnv(ws, cache=cache, interface="bolus")


def test_shaped_rewards_follow_the_replays_formula(ws, cache):
    env = SepsisWorldEnv(ws, reward="sofa_shaped", cache=cache)
    rows, rewards, last = _episode(env, seed=3)
    env.close()
    w = env.ctx.build_cfg.rewards.sofa_delta_weight
    sofa = [info["sofa"] for _, info in rows]
    for k in range(len(rows) - 1):
        assert rewards[k] == pytest.approx(w * (sofa[k + 1] - sofa[k]), abs=1e-6)
    assert rewards[-1] == (-15.0 if last["died_90d"] else 15.0)


def test_prefetching_draws_the_same_patients_ahead_and_close_stops_it(
    ws, cache, tmp_path, monkeypatch
):
    """prefetch=n draws the stream's next n patients in a background process: the episode is
    the one without it (same patient, observations and rewards), the patients queued ahead
    land in its cache, close() ends the process, and a bad value fails at construction."""
    from sepsisrl.truth.world import population_key

    plain = SepsisWorldEnv(ws, cache=cache)
    ahead = SepsisWorldEnv(ws, cache=tmp_path / "ahead", prefetch=2)
    (rows_a, rewards_a, last_a), (rows_b, rewards_b, last_b) = (
        _episode(env, seed=3) for env in (plain, ahead)
    )
    plain.close()
    assert last_a == last_b and rewards_a == rewards_b
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(rows_a, rows_b, strict=True))
    queued = dict(ahead._ahead)
    assert queued and all(stream == 3 and index > last_b["patient"] for stream, index in queued)
    for future in queued.values():
        future.result(timeout=300)
    for _, index in queued:
        entropy = ahead.patient_entropy(3, index)
        assert (ahead.cache / population_key(ahead.ctx, entropy, 1) / "population.json").is_file()
    workers = list(ahead._pool._processes.values())
    ahead.close()
    assert ahead._pool is None and workers and not any(p.is_alive() for p in workers)
    for bad in (-1, True, 1.5):
        with pytest.raises(TruthError, match="prefetch"):
            SepsisWorldEnv(ws, cache=cache, prefetch=bad)
    # a drawing process that dies: a warning, then every patient is drawn on the spot
    broken = SepsisWorldEnv(ws, cache=cache, prefetch=2)
    broken._pool = _BrokenPool()
    with pytest.warns(RuntimeWarning, match="prefetch stopped.*BrokenProcessPool"):
        _, rewards_c, last_c = _episode(broken, seed=3)
    assert broken.prefetch == 0 and broken._pool is None
    assert (last_c, rewards_c) == (last_a, rewards_a)
    broken.close()
    # a daemonic process (a worker of gymnasium's async vector form) cannot start one: refused
    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True)
    with pytest.raises(TruthError, match="prefetch 2: this environment runs in a daemonic"):
        SepsisWorldEnv(ws, cache=cache, prefetch=2)


class _BrokenPool:
    """A process pool whose process has died (what ``ProcessPoolExecutor`` then raises)."""

    def submit(self, *args, **kwargs):
        from concurrent.futures.process import BrokenProcessPool

        raise BrokenProcessPool("A child process terminated abruptly")

    def shutdown(self, *args, **kwargs) -> None:
        pass


def test_the_vector_form_steps_patients_together_as_the_single_form_does(ws, cache):
    envs = gymnasium.make_vec(
        ENV_ID, num_envs=2, vectorization_mode="sync", workspace=ws, cache=cache
    )
    obs, _ = envs.reset(seed=21)
    obs2, rewards, term, _, _ = envs.step(np.array([0, 12]))
    envs.close()
    for i, action in enumerate((0, 12)):
        env = SepsisWorldEnv(ws, cache=cache)
        o, _ = env.reset(seed=21 + i)
        np.testing.assert_array_equal(obs[i], o)
        o2, r, t, _, _ = env.step(action)
        env.close()
        assert rewards[i] == pytest.approx(r) and term[i] == t
        if not t:
            np.testing.assert_array_equal(obs2[i], o2)


def test_refusals_are_clear_and_an_abandoned_episode_leaves_no_thread(ws, cache):
    with pytest.raises(TruthError, match="not a replay reward variant"):
        SepsisWorldEnv(ws, reward="survival", cache=cache)
    env = SepsisWorldEnv(ws, cache=cache)
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(0)
    before = threading.active_count()
    env.reset(seed=3)
    with pytest.raises(ValueError, match=r"0\.\.24"):
        env.step(25)
    env.reset(seed=3)  # abandons the running episode
    env.close()
    assert threading.active_count() == before
    assert sepsisrl.env.ENV_STREAM != 0


def test_the_online_reference_learns_from_its_own_rollouts_and_measures_its_truth(ws, tmp_path):
    """A tiny run: every decision of the round becomes one transition (with the replay's train
    split before them), each episode ends in exactly one terminal transition, and the greedy
    agent's truth is measured on the truth population."""
    from safetensors.torch import load_file

    from sepsisrl.env.reference import ReferenceConfig, train_reference
    from sepsisrl.rl.data import load_split

    cfg = ReferenceConfig(
        rounds=1, patients_per_round=20, steps_per_round=30, batch_size=32,
        exploration="uniform", support_threshold=0.0,
    )  # fmt: skip
    out = tmp_path / "ref"
    summary = train_reference(
        ws, cfg, out, truth_patients=20, truth_seed=3, cache=tmp_path / "populations"
    )
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert len(rounds) == 1 and rounds[0]["episodes"] > 0
    train_rows = len(load_split(ws / "replay" / "sparse", "train"))
    assert rounds[0]["decisions"] >= rounds[0]["episodes"]
    assert rounds[0]["transitions"] == train_rows + rounds[0]["decisions"]
    truth = json.loads((out / "truth" / "truth.json").read_text())
    assert truth["policy"] == "online_dqn" and truth["decisions_deferred_to_clinicians"] == 0
    assert summary["true_value"] == truth["value"]
    assert summary["truth_population"] == {
        "patients": 20,
        "seed": 3,
        "chosen": "set by the caller (--truth-patients / --truth-seed)",
        "episodes": truth["episodes"],
        "interface": "held",
    }
    weights = load_file(out / "model.safetensors")
    assert weights["net.4.weight"].shape == (25, 256)
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["rounds"] == 1 and config["gradient_steps"] == 60
    assert config["settings"]["interface"] == "held"


def test_the_reference_measures_its_truth_on_the_study_population_by_default(tmp_path):
    """Without --truth-patients / --truth-seed the reference pairs with the study: its truth
    population is study/truth.json's, else configs/study.yaml's (before any profile)."""
    from sepsisrl.config import read_packaged
    from sepsisrl.env.reference import study_truth_population

    base = read_packaged("study")["truth"]
    patients, seed, origin = study_truth_population(tmp_path)
    assert (patients, seed) == (base["patients"], base["seed"]) and "no study" in origin
    (tmp_path / "study").mkdir()
    doc = {"population": {"patients": 1000, "seed": 7, "episodes": 358}}
    (tmp_path / "study" / "truth.json").write_text(json.dumps(doc))
    patients, seed, origin = study_truth_population(tmp_path)
    assert (patients, seed) == (1000, 7) and "truth.json" in origin


def test_the_online_reference_trains_and_is_measured_under_the_titrated_interface(
    ws, tmp_path, monkeypatch
):
    """interface=titrated: its rounds and its truth use the titrated rollout, and the summary
    says so (the report compares it only with a titrated study truth); a misspelt interface
    fails at load. Called without a truth population, it takes the study's."""
    from sepsisrl.config import ConfigError, validate_dataclass
    from sepsisrl.env import reference
    from sepsisrl.env.reference import ReferenceConfig, train_reference

    monkeypatch.setattr(reference, "study_truth_population", lambda _ws: (15, 3, "the study's"))
    cfg = ReferenceConfig(
        rounds=1, patients_per_round=15, steps_per_round=10, batch_size=32, interface="titrated"
    )
    summary = train_reference(ws, cfg, tmp_path / "ref", cache=tmp_path / "pop")
    truth = json.loads((tmp_path / "ref" / "truth" / "truth.json").read_text())
    assert truth["interface"] == "titrated" == summary["truth_population"]["interface"]
    pop = summary["truth_population"]
    assert (pop["patients"], pop["seed"], pop["chosen"]) == (15, 3, "the study's")
    assert truth["realised_action_agreement"] is not None
    with pytest.raises(ConfigError, match="interface"):
        validate_dataclass(ReferenceConfig, {"interface": "hourly"}, "reference")


def test_the_online_reference_can_explore_and_act_within_the_clinicians_support(ws, tmp_path):
    """exploration=clinicians draws exploring actions from b(a|s); support_threshold=t keeps
    the greedy action among those with b(a|s) >= t * max b(.|s), in the rounds and the truth;
    the behaviour model travels with the agent; an out-of-range threshold fails at load."""
    from sepsisrl.config import ConfigError, validate_dataclass
    from sepsisrl.env.reference import GreedyQ, ReferenceConfig, train_reference
    from sepsisrl.ope.behaviour import BehaviourModel
    from sepsisrl.rl.data import load_split
    from sepsisrl.rl.networks import MLP

    cfg = ReferenceConfig(
        rounds=1, patients_per_round=15, steps_per_round=10, batch_size=32,
        exploration="clinicians", support_threshold=0.5,
    )  # fmt: skip
    out = tmp_path / "ref"
    summary = train_reference(ws, cfg, out, truth_patients=15, truth_seed=3, cache=tmp_path / "p")
    assert summary["training"]["exploration"] == "clinicians"
    assert summary["training"]["support_threshold"] == 0.5
    behaviour = BehaviourModel.load(out / "behaviour")
    states = load_split(ws / "replay" / "sparse", "validation").states.numpy()
    q = MLP(states.shape[1], 25, (16,))
    policy = GreedyQ(q, behaviour=behaviour, support_threshold=0.5)
    b = behaviour.raw_probabilities(states)
    chosen = b[np.arange(len(states)), policy.greedy(states)]
    assert (chosen >= 0.5 * b.max(1) - 1e-12).all()
    unrestricted = GreedyQ(q).greedy(states)
    assert (b[np.arange(len(states)), unrestricted] < 0.5 * b.max(1)).any()  # it restricts
    # exploring draws follow b(a|s): with epsilon = 1 the actions' frequencies match it
    explorer = GreedyQ(q, epsilon=1.0, seed=4, behaviour=behaviour, explore="clinicians")
    many = np.repeat(states[:1], 4000, axis=0)
    drawn = explorer.decide(many, {})
    freq = np.bincount(drawn, minlength=25) / len(drawn)
    np.testing.assert_allclose(freq, behaviour.probabilities(states[:1])[0], atol=0.03)
    with pytest.raises(ConfigError, match="support_threshold"):
        validate_dataclass(ReferenceConfig, {"support_threshold": 1.2}, "reference")
    with pytest.raises(ValueError, match="behaviour model"):
        GreedyQ(q, explore="clinicians")


def test_the_transitions_of_a_rollout_carry_the_replays_rewards(own_world, tmp_path):
    from sepsisrl.env.reference import GreedyQ, transitions
    from sepsisrl.rl.networks import MLP
    from sepsisrl.truth.harness import population_for
    from sepsisrl.truth.rollout import rollout_population

    _, _, ctx = own_world
    pop = population_for(ctx, 20, 9, cache=tmp_path / "populations")
    torch_q = MLP(len(ctx.feature_names), 25, (8,))
    policy = GreedyQ(torch_q, epsilon=0.5, seed=1)
    outcome = rollout_population(ctx, pop, policy, tmp_path / "work")
    batch = transitions(policy, outcome, "sofa_shaped", ctx)
    ep = outcome.episodes
    assert len(batch) == int(ep["steps"].to_numpy().sum()) == outcome.decisions.num_rows
    assert batch.d.sum() == ep.num_rows  # one terminal transition per episode
    terminal = batch.r[batch.d == 1]
    assert set(np.unique(terminal)) <= {-15.0, 15.0}
    died = ep.sort_by("stay_id")["died_90d"].to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(terminal, np.where(died, -15.0, 15.0))
    # a non-terminal transition's next state is the next decision's state
    first = np.flatnonzero(batch.d == 0)[0]
    np.testing.assert_array_equal(batch.s2[first], batch.s[first + 1])
