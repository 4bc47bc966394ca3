"""`sepsisrl run`: the card's two-stage sweep, the validation-only selection rule with gates and
fallback, one final test evaluation after the selection, export, report, caching and resume."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from sepsisrl.study import selection as sel
from sepsisrl.study.config import load_study_config
from sepsisrl.threads import cpu

from .conftest import BENCH, load_bench

TINY = {
    "sweep.lr_regimes": {"conservative": {"actor_lr": 5e-5, "critic_lr": 1e-4, "value_lr": 1e-4}},
    "sweep.iql_settings": {
        "safe": {"expectile": 0.6, "temperature": 2.0},
        "optimistic": {"expectile": 0.8, "temperature": 5.0},
    },
    "sweep.stage2_seeds": [123],
    "selection.finalists": 2,
    "train": {
        "steps": 30,
        "hidden_sizes": [32, 32],
        "batch_size": 64,
        "log_every": 10,
        "checkpoint_every": 30,
        "epochs": 1,
    },
    "evaluation.bootstrap_resamples": 200,
    "evaluation.fqe": {"members": 2},
    "baselines.trained": {
        "behaviour_cloning": {"algo": "bc"},
        "cql": {"algo": "cql", "grid": {"cql.alpha": [0.1, 5.0]}},
    },
    "truth.patients": 20,  # 9 episodes; a rollout's calls grow with its patients' decisions
    # every policy's rollout in one lockstep unit: a rollout's cost is mostly the state
    # function's calls (one per simulated hour with a decision due, whatever the number of
    # patients), which lockstep shares; the outcomes are those of each policy alone
    # (tests/test_truth_lockstep.py)
    "truth.lockstep": 16,
    "workers": 1,
    "stack": True,  # the default (auto) stacks only with bf16 or cuda; these tests use fp32
}


# ------------------------------------------------------------------- grid and config
def test_the_grid_is_the_cards_two_stage_protocol():
    cfg = load_study_config("card")
    cands = sel.candidates(cfg)
    assert len(cands) == 18
    names = {c["name"] for c in cands}
    assert len(names) == 18
    card = next(c for c in cands if c["name"] == "iql_sofa_shaped_conservative_safe")
    assert card["hyperparameters"] == {
        "actor_lr": 5e-5, "critic_lr": 1e-4, "value_lr": 1e-4, "expectile": 0.6, "temperature": 2.0,
    }  # fmt: skip
    fast = next(c for c in cands if c["name"] == "iql_sparse_fast_value_optimistic")
    assert fast["hyperparameters"] == {
        "actor_lr": 1e-4, "critic_lr": 3e-4, "value_lr": 1e-3, "expectile": 0.8, "temperature": 5.0,
    }  # fmt: skip
    assert {c["reward"] for c in cands} == {"sparse", "sofa_shaped"}
    assert cfg.sweep.stage1_seed == 42 and cfg.sweep.stage2_seeds == [123, 456]
    assert cfg.train["epochs"] == 200 and cfg.selection.finalists == 3
    quick = load_study_config("quick")
    assert quick.synth.stays == 2000 and quick.train["steps"] <= 1000


def test_bad_profile_and_bad_values_are_clear_errors():
    from sepsisrl.config import ConfigError

    with pytest.raises(ConfigError, match=r"unknown profile 'fast'.*card, card_halving, quick"):
        load_study_config("fast")
    with pytest.raises(ConfigError, match="stage2_seeds must differ"):
        load_study_config("quick", overrides={"sweep.stage2_seeds": [42]})
    with pytest.raises(ConfigError, match="actor_lr"):
        load_study_config("quick", overrides={"sweep.lr_regimes": {"x": {"actor_lr": 1.0}}})
    with pytest.raises(ConfigError, match="lockstep"):
        load_study_config("quick", overrides={"truth.lockstep": 0})


# ------------------------------------------------------------------- the selection rule
RULE = load_study_config("quick", overrides={
    "selection.low_support_max": 0.05, "selection.severe_flags_max": 0,
    "selection.estimator": "wdr",
}).selection  # fmt: skip


def _cand(name, rows):
    """rows: (seed, estimate, lower bound, low-support rate, severe flags)."""
    seeds = [
        {"seed": s, "run": f"runs/{name}_seed{s}", "eval": "e", "estimate": v, "ci_low": lo,
         "ci_high": None if v is None else v + 1, "fqe_mean": v, "ess": 0.5,
         "support_mass": 1 - low, "low_support_action_rate": low, "severe_safety_flags": fl}
        for s, v, lo, low, fl in rows
    ]  # fmt: skip
    return sel.aggregate({"name": name, "seeds": seeds}, RULE)


def test_score_is_the_lower_bound_and_gates_and_seed_means():
    c = _cand("a", [(42, 4.0, 2.0, 0.01, 0), (123, 6.0, 0.0, 0.03, 0)])
    assert c["seeds"][0]["score"] == pytest.approx(2.0)  # the pessimistic bound, not 4.0
    assert c["score"] == pytest.approx(1.0) and c["estimate"] == pytest.approx(5.0)
    assert c["gates"] == {"evaluable": True, "low_support": True, "severe_flags": True}
    assert c["passed"]
    bad = _cand("b", [(42, 9.0, 9.0, 0.06, 1)])
    assert bad["gates"] == {"evaluable": True, "low_support": False, "severe_flags": False}
    # a seed whose estimate failed the evaluation's gates: the candidate is not evaluable
    undefined = _cand("c", [(42, None, None, 0.0, 0), (123, 9.0, 9.0, 0.0, 0)])
    assert undefined["ci_low"] is None and undefined["score"] is None  # never dropped
    assert undefined["gates"]["evaluable"] is False and not undefined["passed"]


def test_the_verdict_against_the_clinicians_compares_the_lower_bound_with_their_estimate():
    clin = {"estimate": 3.0, "ci_low": 1.0, "ci_high": 5.0, "observed_return": 3.4}
    better = sel.versus_clinicians({"score": 3.2, "estimate": 4.0}, clin, "fqe", "eval/c")
    assert better["credibly_better"] is True and better["verdict"].startswith("credibly better")
    # a higher point estimate is not enough: the lower bound must clear the clinicians
    worse = sel.versus_clinicians({"score": 2.5, "estimate": 4.0}, clin, "fqe", "eval/c")
    assert worse["credibly_better"] is False and "NOT credibly better" in worse["verdict"]
    assert worse["clinician_observed_return"] == 3.4 and worse["clinician_ci"] == [1.0, 5.0]
    none = sel.versus_clinicians({"score": None, "estimate": None}, clin, "fqe", "eval/c")
    assert none["credibly_better"] is None and none["verdict"].startswith("undefined")
    assert better["confounding"] is None  # no sensitivity bounds given


def _bounds(lows):
    return {"model": "per_decision", "estimator": "fqe", "note": "",
            "bounds": [{"lambda": lam, "low": lo, "high": 2 * lows[0] - lo, "raw_low": lo,
                        "raw_high": 2 * lows[0] - lo}
                       for lam, lo in zip((1.0, 1.1, 1.2, 1.5), lows, strict=True)]}  # fmt: skip


def test_the_verdict_says_how_much_unobserved_confounding_it_survives():
    clin = {"estimate": 3.0, "ci_low": 1.0, "ci_high": 5.0, "observed_return": 3.4}
    chosen = {"score": 3.2, "estimate": 4.0}
    vs = sel.versus_clinicians(chosen, clin, "fqe", "eval/c", _bounds([4.0, 3.5, 2.9, 1.0]),
                               "runs/x")  # fmt: skip
    conf = vs["confounding"]
    assert conf["holds_up_to"] == 1.1 and conf["fails_at"] == 1.2 and conf["reference"] == 3.0
    assert conf["required"] == 1.0 and conf["survives"] and "NOT robust" not in vs["verdict"]
    strict = sel.versus_clinicians(chosen, clin, "fqe", "eval/c", _bounds([4.0, 3.5, 2.9, 1.0]),
                                   "runs/x", 1.2)  # fmt: skip
    assert strict["credibly_better"] is True and not strict["confounding"]["survives"]
    assert "NOT robust to unobserved confounding" in strict["verdict"]
    assert conf["run"] == "runs/x" and conf["estimate"] == 4.0
    assert "at most a factor 1.1" in conf["statement"] and "at 1.2" in conf["statement"]
    always = sel.versus_clinicians(chosen, clin, "fqe", "eval/c", _bounds([4.0, 3.9, 3.8, 3.5]),
                                   "runs/x")["confounding"]  # fmt: skip
    assert always["holds_up_to"] == 1.5 and always["fails_at"] is None
    assert "every Lambda up to 1.5" in always["statement"]
    never = sel.versus_clinicians(chosen, clin, "fqe", "eval/c", _bounds([2.0, 1.0, 0.5, 0.0]),
                                  "runs/x")["confounding"]  # fmt: skip
    assert never["holds_up_to"] is None and "even without confounding" in never["statement"]


def test_the_severe_flag_gate_can_be_the_clinicians_reference_level():
    rule = load_study_config("quick").selection
    assert rule.severe_flags_max == "clinicians"  # the default

    def cand(flags, clinicians):
        row = {"seed": 42, "run": "r", "eval": "e", "estimate": 5.0, "ci_low": 4.0,
               "ci_high": 6.0, "fqe_mean": 5.0, "ess": 0.0, "support_mass": 1.0,
               "low_support_action_rate": 0.0, "severe_safety_flags": flags,
               "clinician_safety_flags": clinicians}  # fmt: skip
        return sel.aggregate({"name": "c", "seeds": [row]}, rule)

    assert cand(3, 5)["gates"]["severe_flags"] and cand(5, 5)["gates"]["severe_flags"]
    assert not cand(6, 5)["gates"]["severe_flags"]
    assert not cand(0, None)["gates"]["severe_flags"]  # no reference: cannot pass
    assert "the clinicians' flags on the same states" in sel.choose([cand(3, 5)], rule)["reason"]


def test_passing_candidates_rank_first_by_score_and_ties_break_on_support():
    high_but_unsafe = _cand("unsafe", [(42, 14.0, 14.0, 0.0, 2)])
    good = _cand("good", [(42, 5.0, 3.0, 0.0, 0)])
    better = _cand("better", [(42, 6.0, 3.5, 0.0, 0)])
    tie = _cand("tie", [(42, 9.0, 3.5, 0.0, 0)])
    tie["support_mass"] = 1.0
    better["support_mass"] = 0.99
    not_evaluable = _cand("undef", [(42, None, None, 0.0, 0)])
    ranked = sel.rank([high_but_unsafe, good, better, tie, not_evaluable])
    assert [c["name"] for c in ranked][:3] == ["tie", "better", "good"]
    assert [c["rank"] for c in ranked] == [1, 2, 3, 4, 5]
    chosen = sel.choose([high_but_unsafe, good, better], RULE)
    assert chosen["name"] == "better" and not chosen["fallback"]
    assert "passes every gate" in chosen["reason"] and "wdr" in chosen["reason"]
    # a higher point estimate with a wider CI loses to a better lower bound
    wide = _cand("wide", [(42, 12.0, 1.0, 0.0, 0)])
    assert sel.choose([wide, good], RULE)["name"] == "good"


def test_a_halving_rung_stops_only_evaluable_candidates_beaten_by_keep_others():
    a, b, c = (_cand(n, [(42, 6.0 - i, 3.0 - i, 0.0, 0)]) for i, n in enumerate("abc"))
    early = _cand("early", [(42, None, None, 0.4, 9)])  # low support, flags: no score yet
    unsafe = _cand("unsafe", [(42, 14.0, 14.0, 0.0, 9)])
    ranked = sel.rank([early, c, unsafe, a, b])
    assert [x["name"] for x in sel.rung_cut(ranked, 2)] == ["c"]
    assert sel.rung_cut(ranked, 3) == []  # no evidence against anyone
    # every policy still fails a gate (the quick world's first rung): nobody is stopped,
    # where cutting the safety-first fallback order would have dropped on no score at all
    assert sel.rung_cut(sel.rank([early, unsafe]), 1) == []


def test_a_rung_record_names_the_stops_the_validation_data_do_not_show_worse():
    a, b, c = (_cand(n, [(42, 6.0 - i, 3.0 - i, 0.0, 0)]) for i, n in enumerate("abc"))
    worse = _cand("worse", [(42, 0.5, -0.5, 0.0, 0)])  # interval [-0.5, 1.5]: below b's 2.0
    early = _cand("early", [(42, None, None, 0.4, 9)])  # no score yet: goes on
    ranked = sel.rank([early, c, worse, a, b])
    rec = sel.rung_record(1, 3, 100, ranked, 2)
    assert rec["stopped"] == ["c", "worse"] and rec["cut"] == 2.0  # b's score, the last kept
    assert rec["kept"] == ["a", "b", "early"]
    # c's interval [1, 5] reaches the cut: not shown worse than b; worse's [-0.5, 1.5] does not
    assert rec["within_noise"] == ["c"]
    assert (rec["candidates"], rec["passed"], rec["keep"], rec["step"]) == (5, 4, 2, 100)
    assert rec["noise_test"] == "intervals" and rec["differences"] == {"c": None, "worse": None}
    nobody = sel.rung_record(1, 3, 100, ranked, 4)
    assert nobody["stopped"] == [] and nobody["cut"] is None and nobody["within_noise"] == []
    from sepsisrl.contracts import HalvingRung

    HalvingRung.model_validate(rec)  # the record's contract (selection.json -> halving)
    # paired differences from the last kept (b) decide where given: c is credibly worse
    # paired, though its own interval overlaps; worse is not (an interval reaching 0)
    diffs = {"c": [-1.0, -1.5, -0.5], "worse": [-0.2, -3.0, 0.4]}
    calls = []

    def paired(x, last):
        calls.append((x["name"], last["name"]))
        return diffs[x["name"]]

    rec = sel.rung_record(1, 3, 100, ranked, 2, paired)
    assert calls == [("c", "b"), ("worse", "b")] and rec["last_kept"] == "b"
    assert rec["within_noise"] == ["worse"] and rec["noise_test"] == "paired"
    assert rec["stopped"] == ["c", "worse"] and rec["spared"] == []  # stop: rank
    # stop: credible - only the credibly worse are stopped; the others go on
    rec = sel.rung_record(1, 3, 100, ranked, 2, paired, stop="credible")
    assert rec["stopped"] == ["c"] and rec["spared"] == ["worse"]
    assert rec["kept"] == ["a", "b", "worse", "early"]
    diffs["c"] = None  # not computable for c: its own interval decides (reaches the cut)
    mixed = sel.rung_record(1, 3, 100, ranked, 2, paired)
    assert mixed["noise_test"] == "mixed" and mixed["within_noise"] == ["c", "worse"]
    HalvingRung.model_validate(mixed)


def test_fallback_is_explicit_and_safety_first():
    many_flags = _cand("flags", [(42, 14.0, 14.0, 0.0, 9)])
    few_flags_low_support = _cand("support", [(42, 3.0, 3.0, 0.2, 1)])
    no_flags = _cand("safe", [(42, None, None, 0.2, 0)])
    chosen = sel.choose([many_flags, few_flags_low_support, no_flags], RULE)
    assert chosen["name"] == "safe" and chosen["fallback"]
    assert chosen["failed_gates"] == ["evaluable", "low_support"]
    assert chosen["reason"].startswith("fallback: no finalist passed every gate")
    chosen2 = sel.choose([many_flags, few_flags_low_support], RULE)
    assert chosen2["name"] == "support"  # fewer severe flags beats a higher score


def test_the_exported_seed_has_the_best_validation_score():
    c = _cand("a", [(42, 4.0, 2.0, 0.0, 0), (123, 8.0, 3.0, 0.0, 0), (456, 9.0, 2.5, 0.0, 0)])
    chosen = sel.choose([c], RULE)
    assert chosen["seed"] == 123 and chosen["run"] == "runs/a_seed123"


def test_selection_metrics_read_the_configured_estimator_and_refuse_unknown_ones():
    from sepsisrl.contracts import EvaluationMetrics, HeadlineMetrics

    table = {name: None for name in HeadlineMetrics.model_fields}
    table.update({"fqe_mean": 1.0, "fqe_ci_low": 0.5, "fqe_ci_high": 1.5, "ess": 0.0,
                  "support_mass": 0.9, "low_support_action_rate": 0.1,
                  "severe_safety_flags": 0})  # fmt: skip
    # only the headline table matters to the selection: the rest of the file is not built here
    doc = EvaluationMetrics.model_construct(metrics=HeadlineMetrics.model_construct(**table))
    assert sel.selection_metrics(doc, "fqe")["ci_low"] == 0.5
    assert sel.selection_metrics(doc, "wdr")["ci_low"] is None  # gated: not evaluable
    with pytest.raises(ValueError, match=r"selection\.estimator='magic'"):
        sel.selection_metrics(doc, "magic")


def test_the_estimator_and_gate_settings_are_checked_at_load():
    from sepsisrl.config import ConfigError

    with pytest.raises(ConfigError, match="estimator"):
        load_study_config("quick", overrides={"selection.estimator": "wiss"})
    with pytest.raises(ConfigError, match="suport_min"):
        load_study_config("quick", overrides={"evaluation.gates": {"suport_min": 0.9}})
    with pytest.raises(ConfigError, match="polyak"):
        load_study_config("quick", overrides={"evaluation.fqe": {"polyak": 0.05}})


def test_the_studys_bf16_applies_to_every_run_with_a_bf16_path_and_bcq_keeps_fp32():
    # `sepsisrl run --precision bf16`: the sweep and the BC/CQL baselines (stackable, with a
    # bf16 path) train in bf16; a BCQ baseline (none) in fp32 - not a refusal of the study
    cfg = load_study_config("card", overrides={
        "train.precision": "bf16", "baselines.trained.bcq": {"algo": "bcq"}})  # fmt: skip
    c = sel.candidates(cfg)[0]
    sweep = cfg.run_overrides(c["name"], 42, cfg.sweep_overrides(c))
    assert cfg.train_config(sweep).precision == "bf16"
    want = {"behaviour_cloning": "bf16", "cql": "bf16", "bcq": "fp32"}
    assert set(cfg.baselines.trained) == set(want)
    for name, spec in cfg.baselines.trained.items():
        run = cfg.run_overrides(name, 42, {**spec, "preset": name})
        run.pop("grid", None)
        assert cfg.train_config(run).precision == want[name], name


# ------------------------------------------------------------------- end to end (small)
@pytest.fixture(scope="module")
def study(small_world, tmp_path_factory):
    """A whole study on the 900-stay world with a reduced grid; records every split read."""
    import sepsisrl.ope.evaluate as ev_mod
    import sepsisrl.rl.trainer as tr_mod
    from sepsisrl.study.runner import run_study

    ws = tmp_path_factory.mktemp("study") / "ws"
    reads: list[tuple[str, bool]] = []
    originals = {m: m.load_split for m in (ev_mod, tr_mod)}

    def spy(original):
        def load(replay_dir, split, *args, **kwargs):
            reads.append((split, (ws / "study" / "selection.json").is_file()))
            return original(replay_dir, split, *args, **kwargs)

        return load

    import torch

    for m, f in originals.items():
        m.load_split = spy(f)
    threads = torch.get_num_threads()
    # another thread count than the CLI subprocess of the SIGTERM test uses: the study's bytes
    # must not depend on the calling process's torch setting
    torch.set_num_threads(1 if (os.cpu_count() or 1) > 1 else 2)
    try:
        cfg = load_study_config("quick", overrides=TINY)
        events: list[tuple[str, int, int, str]] = []
        result = run_study(
            ws, cfg, source=small_world.out_dir, on_event=lambda *e: events.append(e)
        )
    finally:
        torch.set_num_threads(threads)
        for m, f in originals.items():
            m.load_split = f
    return ws, cfg, result, reads, events, small_world.out_dir


def _read(path: Path):
    return json.loads(path.read_text())


@pytest.mark.slow
def test_stage_one_and_two_use_validation_only(study):
    ws, _cfg, _result, reads, _, _ = study
    doc = _read(ws / "study" / "selection.json")
    assert doc["split"] == "validation" and len(doc["candidates"]) == 4
    finalists = [c for c in doc["candidates"] if c["stage"] == 2]
    assert sorted(c["name"] for c in finalists) == sorted(doc["finalists"])
    assert len(finalists) == 2
    for c in doc["candidates"]:
        seeds = [r["seed"] for r in c["seeds"]]
        assert seeds == ([42, 123] if c["stage"] == 2 else [42])
        for r in c["seeds"]:
            ev = _read(ws / r["eval"] / "metrics.json")
            assert ev["split"] == "validation" and not ev["final"]
            assert r["ci_low"] == ev["metrics"]["fqe_ci_low"]  # the exported greedy policy
            assert r["fqe_mean"] == ev["metrics"]["fqe_mean"] and r["ess"] == ev["metrics"]["ess"]
            assert ev["importance_sampling"]["softening_eps"] == 0.0
    assert doc["selected"]["name"] in doc["finalists"]
    assert doc["rule"]["estimator"] == "fqe" and doc["rule"]["score"] == "fqe_ci_low"
    # the verdict against the clinicians: their logged policy on the same VALIDATION split
    vs = doc["selected"]["versus_clinicians"]
    clin = _read(ws / vs["evaluation"] / "metrics.json")
    assert clin["split"] == "validation" and clin["policy"]["name"] == "clinician"
    assert vs["clinician_estimate"] == clin["metrics"]["fqe_mean"]
    chosen = next(c for c in doc["candidates"] if c["name"] == doc["selected"]["name"])
    assert vs["selected_score"] == chosen["score"]
    if chosen["score"] is None or vs["clinician_estimate"] is None:  # the tiny study's fallback
        assert vs["credibly_better"] is None and vs["verdict"].startswith("undefined")
    else:
        assert vs["credibly_better"] == (chosen["score"] > vs["clinician_estimate"])
        assert ("NOT credibly" in vs["verdict"]) == (not vs["credibly_better"])
    assert vs["clinician_observed_return"] == clin["metrics"]["observed_return_mean"]
    # the exported seed's sensitivity to unobserved confounding, against the same reference
    conf = vs["confounding"]
    if vs["credibly_better"] is None:  # no verdict, nothing to bound
        assert conf is None
    else:
        assert conf["run"] == doc["selected"]["run"]
        assert conf["reference"] == vs["clinician_estimate"]
        assert conf["required"] == load_study_config("quick").selection.confounding_lambda
        assert ("NOT robust" in vs["verdict"]) == (vs["credibly_better"] and not conf["survives"])
    # the test split was read only after the selection had been written
    test_reads = [after for split, after in reads if split == "test"]
    assert test_reads and all(test_reads)


@pytest.mark.slow
def test_one_final_test_evaluation_of_the_selected_policy_and_the_baselines(study):
    ws, _, _result, _, _, _ = study
    final = _read(ws / "study" / "final.json")
    sel_bytes = (ws / "study" / "selection.json").read_bytes()
    assert final["selection_sha256"] == hashlib.sha256(sel_bytes).hexdigest()
    assert final["selected"]["seeds"] == [42, 123]
    names = [b["name"] for b in final["baselines"]]
    assert names == ["clinician", "no_treatment", "behaviour_cloning", "cql"]
    for e in final["selected"]["evals"] + [b["eval"] for b in final["baselines"]]:
        doc = _read(ws / e / "metrics.json")
        assert doc["split"] == "test" and doc["final"]
    algos = {b["name"]: _read(ws / b["run"] / "config.json")["algo"]
             for b in final["baselines"] if b["kind"] == "run"}  # fmt: skip
    assert algos == {"behaviour_cloning": "bc", "cql": "cql"}
    for run in final["selected"]["runs"]:  # the run records when its test evaluation happened
        assert len(_read(ws / run / "final_evaluation.json")) == 1


@pytest.mark.slow
def test_trained_baselines_are_tuned_on_validation_by_the_selection_rule(study):
    ws, *_ = study
    final = _read(ws / "study" / "final.json")
    cql = next(b for b in final["baselines"] if b["name"] == "cql")
    tuning = cql["tuning"]
    assert [g["hyperparameters"] for g in sorted(tuning["grid"], key=lambda g: g["name"])] == [
        {"cql.alpha": 0.1}, {"cql.alpha": 5.0}]  # fmt: skip
    chosen = next(g for g in tuning["grid"] if g["name"] == tuning["chosen"])
    assert chosen["rank"] == 1 and cql["run"] == tuning["run"]
    trained_with = _read(ws / cql["run"] / "config.json")["config"]["cql"]["alpha"]
    assert trained_with == chosen["hyperparameters"]["cql.alpha"]
    for g in tuning["grid"]:  # every grid point was scored on validation
        doc = _read(ws / "eval" / f"{g['name']}_seed42-validation" / "metrics.json")
        assert doc["split"] == "validation" and g["score"] == doc["metrics"]["fqe_ci_low"]
    assert tuning["reason"]
    bc = next(b for b in final["baselines"] if b["name"] == "behaviour_cloning")
    assert len(bc["tuning"]["grid"]) == 1  # no grid: the configured settings
    md = (ws / "report" / "report.md").read_text(encoding="utf-8")
    assert tuning["reason"] in md


@pytest.mark.slow
def test_the_release_and_the_report(study):
    ws, _, result, _, events, _ = study
    final = _read(ws / "study" / "final.json")
    rel = ws / final["release"]
    assert result.release == rel
    cfg = _read(rel / "config.json")
    selected = _read(ws / "study" / "selection.json")["selected"]
    assert cfg["selected_config"] == selected["name"]
    assert cfg["training"]["seed"] == selected["seed"]
    assert cfg["metrics"]["split"] == "test" and cfg["metrics"]["evaluations"] == 2
    assert "RESEARCH ONLY" in (rel / "README.md").read_text()
    html = (ws / "report" / "index.html").read_text()
    assert selected["name"] in html and "RESEARCH ONLY" in html
    md = (ws / "report" / "report.md").read_text()
    assert selected["versus_clinicians"]["verdict"] in md
    assert (ws / "report" / "report.md").is_file()
    phases = {e[0] for e in events}
    assert {"build", "behaviour", "stage 1", "stage 2", "final test", "export", "report"} <= phases
    run_doc = _read(ws / "study" / "run.json")
    assert run_doc["selected"] == selected
    # what its numbers depend on beyond seeds and threads (docs/train.md)
    assert run_doc["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert run_doc["machine"]["cpu"] == cpu()
    assert run_doc["machine"]["blas"] and run_doc["machine"]["torch"] == torch.__version__


@pytest.mark.slow
def test_truth_of_every_candidate_and_baseline_after_the_selection(study):
    ws, _, _, _, events, _ = study
    doc = _read(ws / "study" / "truth.json")
    assert doc["interface"] == "held"  # truth.interface's default
    selection = _read(ws / "study" / "selection.json")
    final = _read(ws / "study" / "final.json")
    runs = {r["run"] for c in selection["candidates"] for r in c["seeds"]}
    names = {p["name"] for p in doc["policies"]}
    # every candidate run and baseline, and the interface reference (the clinicians' own
    # behaviour-cloned actions drawn and held for 4 hours)
    assert ({Path(r).name for r in runs} | {b["name"] for b in final["baselines"]}
            | {"clinicians_held_4h"}) == names  # fmt: skip
    held = next(p for p in doc["policies"] if p["name"] == "clinicians_held_4h")
    assert held["role"] == "reference" and held["kind"] == "held_sample"
    assert "validation_estimates" not in held and "test_estimates" not in held
    assert set(held["difference_from_clinicians"]) >= {"value", "mortality_90d"}
    # the truth's own noise beside each estimator's rank agreement (paired episodes)
    noise = doc["validation_vs_truth"]["fqe"].get("truth_noise")
    if doc["validation_vs_truth"]["fqe"]["policies"] >= 3:
        assert noise["episodes"] == doc["population"]["episodes"]
        # and what an on-policy oracle with the validation split's episodes would reach
        first = next(p for p in doc["policies"] if p["role"] == "candidate")
        val_eval = _read(ws / first["validation_eval"] / "metrics.json")
        assert noise["oracle"]["episodes"] == val_eval["episodes"]
    for p in doc["policies"]:
        truth = _read(ws / p["truth"] / "truth.json")
        assert truth["value"]["mean"] == p["true_value"]
        assert truth["patients_simulated"] == TINY["truth.patients"]
        if p["role"] == "candidate":
            assert set(p["validation_estimates"]) >= {"fqe", "wdr", "wis"}
            # the treatment intensity its validation evaluation chose, from its cases.csv
            inten, cases = p["validation_intensity"], ws / p["validation_eval"] / "cases.csv"
            assert inten["decisions"] == len(cases.read_text().splitlines()) - 1
            assert 0 <= inten["vaso_bin"] <= 4 and 0 <= inten["fluid_bin"] <= 4
    assert set(doc["validation_vs_truth"]) >= {"fqe", "wdr", "wis"}
    for est in ("fqe", "wdr"):  # whether each estimator's errors follow treatment intensity
        d = doc["validation_vs_truth"][est]
        assert ("error_by_intensity" in d) == (d["policies"] >= 3)
    fqe = doc["validation_vs_truth"]["fqe"]  # every candidate run: compared, or not evaluable
    assert fqe["policies"] + len(fqe["not_evaluable"]) == len(runs)
    sel_doc = doc["selection"]
    assert sel_doc["selected"] == selection["selected"]["name"]
    assert sel_doc["regret"] == pytest.approx(sel_doc["best_true_value"]
                                              - sel_doc["selected_true_value"])  # fmt: skip
    assert "truth" in {e[0] for e in events}
    # the card shows the truth beside the estimates; the report has the section
    card = (ws / final["release"] / "README.md").read_text()
    assert "## Truth in the synthetic world" in card and "90-day mortality" in card
    assert "interface `held`: each action held for its 4-hour window" in card
    released = _read(ws / final["release"] / "config.json")
    if released["metrics"]["fqe_mean"]["mean"] is not None:  # evaluable: bounds, next to truth
        assert "Sensitivity to unobserved confounding" in card
        assert "FQE bounds contain the true value" in card
    md = (ws / "report" / "report.md").read_text()
    assert "## Estimates versus truth" in md and "Top-1 regret" in md
    # the exported seed's treatment intensity against the clinicians', with the caution
    # about confounding by indication when it gives less of either
    exported = next(p for p in doc["policies"] if p["spec"] == selection["selected"]["run"])
    inten = exported["validation_intensity"]
    assert "Treatment intensity against the clinicians (exported seed, validation states)" in md
    assert (f"mean vasopressor bin {inten['vaso_bin']:.2f} against the clinicians' "
            f"{inten['clinician_vaso_bin']:.2f}") in md  # fmt: skip
    gives_less = any(inten[k] < inten[f"clinician_{k}"] for k in ("vaso_bin", "fluid_bin"))
    assert ("than the clinicians did. The clinicians escalate" in md) == gives_less
    # the card carries the same measure on the exported seed's test evaluation
    released_intensity = released["treatment_intensity"]
    assert released_intensity["split"] == "test"
    assert released_intensity["vaso_bin"] == exported["test_intensity"]["vaso_bin"]
    assert f"mean vasopressor bin {released_intensity['vaso_bin']:.2f}" in card
    # whether the selection's scores follow the runs' intensity (no truth needed)
    from sepsisrl.truth.compare import INTENSITY_NOTE, spearman

    by_run = {p["spec"]: p["validation_intensity"] for p in doc["policies"]
              if p["role"] == "candidate"}  # fmt: skip
    scored = [(r["score"], by_run[r["run"]]) for c in selection["candidates"]
              for r in c["seeds"] if r["score"] is not None]  # fmt: skip
    corr = [spearman([s for s, _ in scored], [i[k] for _, i in scored])
            for k in ("vaso_bin", "fluid_bin")] if len(scored) >= 3 else []  # fmt: skip
    follows = any(r is not None and abs(r) >= INTENSITY_NOTE for r in corr)
    assert ("The validation ranking follows the candidates' treatment intensity" in md) == follows
    assert "What does the action interface alone cost?" in md
    # how much unobserved confounding the estimates need to contain the truth
    for p in doc["policies"]:
        if p["role"] == "candidate":
            bounds = p["validation_sensitivity"]["fqe"]["bounds"]
            fqe_estimate = p["validation_estimates"]["fqe"][0]  # None: not evaluable (gated)
            assert bounds[0]["lambda"] == 1.0
            if fqe_estimate is not None:
                assert bounds[0]["low"] == pytest.approx(fqe_estimate)
    if fqe["policies"]:
        sens = fqe["sensitivity"]
        assert sens["policies"] == fqe["policies"] == len(sens["lambda_to_cover"])
        assert set(sens["coverage_by_lambda"]) == {f"{b['lambda']:g}" for b in bounds}


@pytest.mark.slow
def test_selection_is_byte_identical_without_the_truth(study, tmp_path):
    """The truth runs after the selection; a study without it selects the same bytes."""
    from sepsisrl.study.runner import run_study

    ws, _, _, _, _, source = study
    copy = tmp_path / "ws"
    shutil.copytree(ws, copy, ignore=shutil.ignore_patterns("truth"))
    for name in ("selection.json", "final.json", "truth.json", "run.json"):
        (copy / "study" / name).unlink()
    cfg = load_study_config("quick", overrides={**TINY, "truth.enabled": False})
    again = run_study(copy, cfg, source=source)
    assert not (copy / "study" / "truth.json").exists() and not (copy / "truth").exists()
    before = (ws / "study" / "selection.json").read_bytes()
    after = (copy / "study" / "selection.json").read_bytes()
    assert after.replace(str(copy).encode(), str(ws).encode()) == before
    assert again.phases["stage 1"]["trained"] == 0  # every unit was reused
    assert "Truth in the synthetic world" not in (copy / _read(
        copy / "study" / "final.json")["release"] / "README.md").read_text()  # fmt: skip


@pytest.mark.slow
def test_stacked_runs_give_the_weights_and_selection_of_runs_trained_alone(study, tmp_path):
    """The study trains each stage's IQL runs and each baseline's grid as stacks (``stack:
    true``, one unit here); the same study with every run trained alone gives the same weights
    and selection bytes."""
    from sepsisrl.study.runner import run_study

    ws, _, result, _, events, source = study
    assert any("stack of 4" in e[3] for e in events if e[0] == "stage 1")
    assert any("stack of 2" in e[3] for e in events if e[0] == "baseline tuning")
    assert result.phases["stage 1"]["units"] == 4 and result.phases["stage 1"]["trained"] == 4
    copy = tmp_path / "ws"
    shutil.copytree(ws, copy, ignore=shutil.ignore_patterns("truth", "runs", "eval"))
    for name in ("selection.json", "final.json", "truth.json", "run.json"):
        (copy / "study" / name).unlink()
    cfg = load_study_config("quick", overrides={**TINY, "truth.enabled": False, "stack": False})
    alone = run_study(copy, cfg, source=source)
    assert alone.phases["stage 1"]["trained"] == 4
    doc = _read(ws / "study" / "selection.json")
    for c in doc["candidates"]:
        for row in c["seeds"]:
            policy = Path(row["run"]) / "final" / "policy.safetensors"
            assert (ws / policy).read_bytes() == (copy / policy).read_bytes(), row["run"]
    before = (ws / "study" / "selection.json").read_bytes()
    after = (copy / "study" / "selection.json").read_bytes()
    assert after.replace(str(copy).encode(), str(ws).encode()) == before
    tuned = [b for b in _read(ws / "study" / "final.json")["baselines"] if b["kind"] == "run"]
    assert {b["name"] for b in tuned} == {"behaviour_cloning", "cql"}
    for b in tuned:  # the chosen grid points, trained in the stack and alone
        policy = Path(b["run"]) / "final" / "policy.safetensors"
        assert (ws / policy).read_bytes() == (copy / policy).read_bytes(), b["name"]


@pytest.mark.slow
def test_successive_halving_keeps_the_best_on_validation_with_full_run_weights(study, tmp_path):
    """sweep.halving: a rung at half the steps scores the 4 candidates on validation and keeps
    the best 2 (the finalists); those resume from their rung checkpoint to the weights of the
    full sweep's runs, the others are left behind with their rung's snapshot and evaluation."""
    from sepsisrl.study.runner import run_study

    ws, _, _, _, _, source = study
    copy = tmp_path / "ws"
    shutil.copytree(ws, copy, ignore=shutil.ignore_patterns("truth", "runs", "eval"))
    for name in ("selection.json", "final.json", "truth.json", "run.json"):
        (copy / "study" / name).unlink()
    # gates open wide: every rung policy is evaluable, so the rung cuts on scores (the rule
    # for policies that fail a gate: test_a_halving_rung_stops_only_evaluable_candidates...)
    over = {**TINY, "truth.enabled": False, "sweep.halving": {"enabled": True, "eta": 2,
                                                              "rungs": 2, "stop": "rank",
                                                              "baselines": True},
            "selection.low_support_max": 1.0, "selection.severe_flags_max": 10**6,
            "evaluation.gates": {"support_min": 0.0, "fqe_out_of_range_max": 1.0,
                                 "fqe_range_margin": 1.0}}  # fmt: skip
    result = run_study(copy, load_study_config("quick", overrides=over), source=source)
    rung = result.phases["stage 1 rung 1/2 (15 steps)"]
    assert rung["trained"] == 4 and rung["evaluated"] == 4
    assert rung["evaluable"] >= 4 and rung["stopped"] == 2
    assert result.phases["stage 1"]["trained"] == 2  # only the kept ones, from step 15 on
    doc = _read(copy / "study" / "selection.json")
    left = [c for c in doc["candidates"] if c["stopped_at_step"] is not None]
    kept = [c for c in doc["candidates"] if c["stopped_at_step"] is None]
    assert len(left) == 2 and len(kept) == 2 and set(doc["finalists"]) == {c["name"] for c in kept}
    assert all(c["stopped_at_step"] == 15 for c in left)
    assert min(c["stage1_rank"] for c in left) > max(c["stage1_rank"] for c in kept)
    (rung1,) = doc["halving"]  # the rung's record: the same stops, and how firm each was
    assert rung1["step"] == 15 and rung1["stopped"] == [c["name"] for c in left]
    assert set(rung1["kept"]) == {c["name"] for c in kept} and rung1["cut"] is not None
    assert rung["stopped_within_noise"] == len(rung1["within_noise"])
    # each stop tested by the FQE paired with the last kept candidate on the same episodes
    assert rung1["noise_test"] == "paired" and set(rung1["differences"]) == set(rung1["stopped"])
    from sepsisrl.ope.paired import paired_fqe

    last = copy / "eval" / f"{rung1['last_kept']}_seed42_step15-validation"  # its rung snapshot
    for c in left:
        est, lo, hi = rung1["differences"][c["name"]]
        assert lo <= est <= hi and (c["name"] in rung1["within_noise"]) == (hi >= 0)
        ci = paired_fqe(copy / c["seeds"][0]["eval"], last)
        assert [ci.estimate, ci.low, ci.high] == [est, lo, hi]
    # bench/halving.py replays the rungs of a record written before they were kept: the same
    doc.pop("halving")
    (copy / "study" / "selection.json").write_text(json.dumps(doc))
    spec = importlib.util.spec_from_file_location("halving_bench", BENCH / "halving.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.rungs(copy) == [rung1]
    report = (copy / "report" / "report.md").read_text()
    assert "Stage 1 used successive halving" in report and "Past the cut within the noise" in report
    assert ("Successive halving stopped candidates within the noise" in report) == bool(
        rung1["within_noise"]
    )
    card = (copy / _read(copy / "study" / "final.json")["release"] / "README.md").read_text()
    assert "Stage 1 used successive halving over 2 rungs: rung 1 (15 steps) stopped 2" in card
    for c in left:  # the rung's snapshot, evaluated on validation
        (row,) = c["seeds"]
        assert row["run"].endswith("_step15") and row["eval"].endswith("_step15-validation")
        assert _read(copy / row["eval"] / "metrics.json")["split"] == "validation"
        snap = _read(copy / row["run"] / "config.json")["snapshot_of"]
        assert (
            snap["step"] == 15 and not (copy / row["run"].rsplit("_step", 1)[0] / "final").exists()
        )
    for c in kept:  # paused at the rung, resumed: the same bytes as the full sweep's run
        for row in [r for r in c["seeds"] if r["seed"] == 42]:  # stage 1 (stage 2: plain runs)
            policy = Path(row["run"]) / "final" / "policy.safetensors"
            assert (copy / policy).read_bytes() == (ws / policy).read_bytes(), row["run"]
    # the trained baselines' grids are halved alike (sweep.halving.baselines): cql's two
    # points at the same rung, the better one resumed to the bytes of its full run; the
    # one-point behaviour-cloning grid has no rung (it could stop nobody)
    brung = result.phases["baseline tuning rung 1/2 (15 steps)"]
    assert brung["trained"] == 2 and brung["evaluated"] == 2 and brung["stopped"] == 1
    assert result.phases["baseline tuning"]["trained"] == 2  # bc in full, the kept cql on
    tuned = {b["name"]: b for b in _read(copy / "study" / "final.json")["baselines"]}
    assert tuned["behaviour_cloning"]["tuning"]["halving"] == []
    cql = tuned["cql"]["tuning"]
    (crung,) = cql["halving"]
    assert crung["step"] == 15 and crung["kept"] == [cql["chosen"]] and len(crung["stopped"]) == 1
    assert [g["name"] for g in cql["grid"]] == [cql["chosen"], *crung["stopped"]]
    assert [g["stopped_at_step"] for g in cql["grid"]] == [None, 15]
    assert "(1 more stopped early by successive halving)" in cql["reason"]
    policy = Path(tuned["cql"]["run"]) / "final" / "policy.safetensors"
    assert (ws / policy).is_file()  # the fixture's study tuned the same reward's grid in full
    assert (copy / policy).read_bytes() == (ws / policy).read_bytes()
    (stopped,) = crung["stopped"]
    assert (copy / "runs" / f"{stopped}_seed42_step15" / "final").is_dir()  # its snapshot
    assert not (copy / "runs" / f"{stopped}_seed42" / "final").exists()


@pytest.mark.slow
def test_a_rerun_is_fully_cached_and_an_interrupted_unit_is_redone(study, monkeypatch):
    from sepsisrl.study import runner
    from sepsisrl.study.runner import run_study

    ws, cfg, result, _, _, source = study
    before = (ws / "study" / "selection.json").read_bytes()

    def nothing_to_run(job):
        raise AssertionError(f"{job['label']} was run again, though done with the same key")

    with monkeypatch.context() as m:  # every unit is found done before it is handed out
        m.setattr(runner, "execute_unit", nothing_to_run)
        again = run_study(ws, cfg, source=source)
    assert again.selected == result.selected
    for phase in ("stage 1", "stage 2", "final test"):
        assert again.phases[phase]["trained"] == 0 and again.phases[phase]["evaluated"] == 0
    assert again.phases["truth"]["measured"] == 0
    # nothing ran, so no phase reports how busy its workers were
    assert not any("busy_fraction" in info or "unit_seconds" in info
                   for info in again.phases.values())  # fmt: skip
    assert (ws / "study" / "selection.json").read_bytes() == before
    # an evaluation lost mid-way and a run without its final weights: only those are redone
    doc = _read(ws / "study" / "selection.json")
    row = next(c for c in doc["candidates"] if c["stage"] == 1)["seeds"][0]
    shutil.rmtree(ws / row["eval"])
    shutil.rmtree(ws / row["run"] / "final")
    third = run_study(ws, cfg, source=source)
    assert third.phases["stage 1"]["trained"] == 1 and third.phases["stage 1"]["evaluated"] == 1
    assert third.phases["stage 2"]["trained"] == 0
    assert (ws / "study" / "selection.json").read_bytes() == before


def test_each_phase_says_how_busy_its_workers_were(study):
    """``study/run.json``: per phase that ran units, the seconds spent inside them and their
    share of the phase's wall time x workers (this study runs its units in its own process:
    one slot); ``bench/study.py`` sums the idle worker-seconds. With two workers, see
    tests/test_study_executors.py (a one-unit phase is at most half busy)."""
    ws, _, result, _, _, _ = study
    # the fixture's own record (a later test reruns the study in its workspace: run.json is
    # then that rerun's)
    phases = json.loads(json.dumps(result.phases))
    workers = _read(ws / "study" / "run.json")["workers"]
    ran = {k: v for k, v in phases.items() if v.get("unit_seconds") is not None}
    assert {"stage 1", "stage 2", "clinicians (validation)", "baseline tuning",
            "final test"} <= set(ran)  # fmt: skip
    # the truth's units ran beside other phases' as soon as their policies existed: the
    # population with the clinicians, every candidate run's truth with the baseline tuning,
    # the baselines' (and the held clinicians') with the final test; none was left for "truth"
    truth = _read(ws / "study" / "truth.json")
    roles = [p["role"] for p in truth["policies"]]
    assert phases["clinicians (validation)"]["units"] == 2
    assert phases["baseline tuning"]["measured"] == roles.count("candidate")
    assert phases["final test"]["measured"] == len(roles) - roles.count("candidate")
    assert phases["truth"]["measured"] == 0 and "unit_seconds" not in phases["truth"]
    for name, info in ran.items():
        assert 0 < info["unit_seconds"] <= info["seconds"] * workers + 0.1, name
        assert 0 < info["busy_fraction"] <= 1, name
        # the record rounds both times to 0.1 s and the fraction (of the unrounded ones) to
        # 0.001: the fraction lies within what the rounded times allow
        u, s = info["unit_seconds"], info["seconds"]
        lo = max(u - 0.05, 0.0) / ((s + 0.05) * workers)
        hi = (u + 0.05) / (max(s - 0.05, 1e-9) * workers)
        assert min(1.0, lo) - 5e-4 <= info["busy_fraction"] <= min(1.0, hi) + 5e-4, name
    bench = load_bench("study.py")
    use = bench.utilisation(phases, workers)
    assert use["workers"] == workers and set(use["idle_worker_seconds_by_phase"]) == set(ran)
    assert use["busy_worker_seconds"] == pytest.approx(
        sum(v["unit_seconds"] for v in ran.values()), abs=0.1 * len(ran)
    )
    assert use["idle_worker_seconds"] == pytest.approx(
        sum(v["seconds"] * workers - v["unit_seconds"] for v in ran.values()), abs=0.1 * len(ran)
    )
    assert use["idle_wall_seconds_bound"] == pytest.approx(use["idle_worker_seconds"] / workers,
                                                           abs=0.1)  # fmt: skip
    assert 0 < use["busy_fraction"] <= 1


@pytest.mark.slow
def test_results_do_not_depend_on_the_number_of_workers(study, tmp_path):
    """The same unit run in this process and in a worker process gives identical bytes."""
    from sepsisrl.study.runner import Study, WorkerPool, execute_unit

    ws, cfg, _, _, _, _ = study
    st = Study(ws, cfg, None)
    outs = []
    for where in ("inline", "pool"):
        st.ws = ws  # units are keyed on this workspace's replay build
        _run, tspec = st.train_unit("probe", "sofa_shaped", 7, {"algo": "iql"})
        tspec["run_dir"] = str(tmp_path / where / "run")
        _, espec = st.eval_unit(tspec["run_dir"], "run", "sofa_shaped", "probe", final=False)
        espec["out"] = str(tmp_path / where / "eval")
        job = {"label": where, "threads": 1, "train": tspec, "eval": espec}
        if where == "inline":
            res = execute_unit(job)
        else:
            pool = WorkerPool(2, tmp_path / "workers.log")
            try:
                res = pool.submit(job).result()
            finally:
                pool.close()
        assert res["trained"] and res["evaluated"]
        outs.append(tmp_path / where)
    a, b = outs
    weights = "run/final/policy.safetensors"
    assert (a / weights).read_bytes() == (b / weights).read_bytes()
    ma, mb = (json.loads((o / "eval" / "metrics.json").read_text())["metrics"] for o in outs)
    assert ma == mb


@pytest.mark.slow
def test_a_failing_unit_is_reported_with_its_name(study, tmp_path):
    from sepsisrl.study.runner import StudyError, WorkerPool

    ws, *_ = study
    pool = WorkerPool(1, tmp_path / "workers.log")
    try:
        job = {"label": "bad", "threads": 1, "eval": {"spec": "nobody", "kind": "named",
               "replay": str(ws / "replay" / "sparse"), "out": str(tmp_path / "e"),
               "final": False, "cfg": {"bootstrap_resamples": 200, "fqe": {}},
               "behaviour": str(ws / "study" / "behaviour"), "key": "k"}}  # fmt: skip
        with pytest.raises(StudyError, match="unknown policy 'nobody'"):
            pool.submit(job).result()
    finally:
        pool.close()
    assert not (tmp_path / "e").exists()
    assert "Traceback" in (tmp_path / "workers.log").read_text()


def test_cli_run_help_and_errors(tmp_path):
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "sepsisrl.cli", *args],
                              capture_output=True, text=True)  # fmt: skip

    proc = cli("run", "--help")
    assert proc.returncode == 0
    assert "RESEARCH ONLY" in proc.stdout and "--profile" in proc.stdout
    proc = cli("run", "--profile", "nope", "--workspace", str(tmp_path / "ws"))
    assert proc.returncode == 2 and "unknown profile 'nope'" in proc.stderr
    proc = cli("run", "--source", str(tmp_path / "missing"), "--workspace", str(tmp_path / "w"))
    assert proc.returncode == 2 and "not a folder" in proc.stderr
    proc = cli("run", "--set", "selection.finalists=0", "--workspace", str(tmp_path / "w"))
    assert proc.returncode == 2 and "finalists" in proc.stderr


def test_readme_main_job_is_the_quick_study_and_ci_runs_its_test_command():
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [ln for ln in block.splitlines() if ln and not ln.startswith("#")]
    assert len(commands) == 2
    main_job, test_cmd = commands
    assert main_job.startswith("python3 -m venv .venv && .venv/bin/pip install torch==2.13.0")
    assert main_job.endswith(".venv/bin/sepsisrl run --profile quick")
    ci = (root / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == test_cmd


@pytest.mark.slow
def test_sigterm_stops_the_cli_and_a_rerun_resumes_to_the_same_selection(study, tmp_path):
    """Interrupt `sepsisrl run` mid-sweep (2 workers): exit 130, no worker left, no temporary
    folder kept; the rerun resumes and selects exactly what an uninterrupted run selected."""
    import signal
    import subprocess
    import sys
    import time

    ws0, _, _, _, _, source = study
    ws = tmp_path / "ws"
    # the fixture's data phase (build cached stage by stage); everything after it starts afresh
    after_data = {"eval", "study", "runs", "release", "truth", "report"}

    def later_phases(folder, names):
        return after_data & set(names) if Path(folder) == ws0 else set()

    shutil.copytree(ws0, ws, ignore=later_phases)
    # the truth phase (after the selection) is tested on the study fixture; not needed here
    config = {**TINY, "truth.enabled": False}
    sets = [
        a for k, v in config.items() if k != "workers" for a in ("--set", f"{k}={json.dumps(v)}")
    ]
    cmd = [sys.executable, "-m", "sepsisrl.cli", "run", "--source", str(source),
           "--workspace", str(ws), "--workers", "2", *sets]  # fmt: skip
    # its own process group: the workers it starts join it, so "no worker outlived the run" is
    # a question about this run's processes only, whatever else runs on the host
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not list(ws.glob("eval/*-validation/metrics.json")):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        assert list(ws.glob("eval/*-validation/metrics.json")), "the sweep did not start"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        assert "run the same command again to resume" in err
        # the run's leader has exited and been reaped: any process left in its group is a worker
        assert not _group_alive(proc.pid), "worker processes outlived the interrupted run"
    finally:
        if proc.poll() is None or _group_alive(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    assert not (ws / "study" / "selection.json").exists()
    done_before = len(list(ws.glob("eval/*-validation/metrics.json")))
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    out = json.loads(rerun.stdout)
    stage1 = out["phases"]["stage 1"]
    assert stage1["evaluated"] <= stage1["units"] - done_before
    assert not list((ws / "eval").glob(".*.partial-*"))
    same = (ws / "study" / "selection.json").read_bytes()
    assert same == (ws0 / "study" / "selection.json").read_bytes()


def _group_alive(pgid: int) -> bool:
    """Whether any process of process group ``pgid`` still exists (signal 0 probes only)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member owned by someone else: it exists
        return True
    return True


@pytest.mark.slow
def test_cli_report_rewrites_the_report_and_names_missing_artifacts(study, tmp_path):
    import subprocess
    import sys

    ws, *_ = study
    before = (ws / "report" / "report.md").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "sepsisrl.cli", "report", "--workspace", str(ws)],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["report"] == str(ws / "report" / "index.html")
    assert (ws / "report" / "report.md").read_bytes() == before
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "sepsisrl.cli", "report", "--workspace",
                           str(empty)], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "study/selection.json" in proc.stderr
