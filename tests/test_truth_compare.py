"""truth/compare.py: estimates against the truth, and how far the truth itself can be trusted."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sepsisrl.study.report.blocks import fmt
from sepsisrl.study.report.sections.truth import _agreement, intensity_note
from sepsisrl.truth.compare import (
    compare,
    episode_returns,
    intensity_of,
    kendall,
    spearman,
    truth_noise,
)


def _row(name, truth, est, lo=None, hi=None):
    return {"policy": name, "truth": truth, "estimates": {"fqe": (est, lo, hi)}}


def test_compare_by_hand():
    rows = [
        _row("a", 1.0, 1.5, 0.0, 2.0),  # covered, error 0.5
        _row("b", 2.0, 1.0, 0.5, 1.5),  # not covered, error 1.0
        _row("c", 3.0, 4.0, 3.5, 5.0),  # not covered, error 1.0; ranked first
        _row("d", 4.0, None, None, None),  # not evaluable: flagged, not ranked
    ]
    doc = compare(rows)["fqe"]
    assert doc["policies"] == 3 and doc["not_evaluable"] == ["d"]
    assert doc["mae"] == pytest.approx(2.5 / 3)
    assert doc["coverage"] == pytest.approx(1 / 3)
    assert doc["spearman"] == pytest.approx(0.5)  # ranks (2, 1, 3) against (1, 2, 3)
    assert doc["kendall"] == pytest.approx(1 / 3)  # 2 concordant, 1 discordant pair
    assert doc["ranked_first"] == "c" and doc["top1_regret"] == 0.0
    assert "truth_noise" not in doc  # no per-episode returns given
    assert "mae_vs_clinician" not in doc  # no clinicians in the panel
    # with the clinicians: the error of each estimated difference from them
    clin = [_row("clinician", 2.0, 3.0, 0.0, 5.0), *rows[:3]]  # the clinicians over-valued by 1
    vs = compare(clin)["fqe"]
    # differences estimated (-1.5, -2.0, 1.0) against true (-1.0, 0.0, 1.0)
    assert vs["mae_vs_clinician"] == pytest.approx((0.5 + 2.0 + 0.0) / 3)
    # a benchmark's own estimator (bench/hourly_fqe.py) is compared by name, alone
    renamed = [{**r, "estimates": {"mine": r["estimates"]["fqe"]}} for r in rows]
    mine = compare(renamed, estimators=["mine"])
    assert list(mine) == ["mine"]
    assert {k: mine["mine"][k] for k in doc} == doc


def test_intensity_of_reads_the_evaluations_cases_by_hand(tmp_path):
    cases = tmp_path / "cases.csv"
    # actions are 5 * vaso_bin + fluid_bin: the policy (0, 0), (1, 2), (4, 4); logged 7, 7, 7
    cases.write_text("stay_id,step,clinician_action,policy_action,behaviour_prob_of_policy_action,"
                     "low_support\n1,0,7,0,0.1,0\n1,1,7,7,0.5,0\n2,0,7,24,0.01,1\n")  # fmt: skip
    got = intensity_of(cases, 5)
    assert got == {"decisions": 3, "vaso_bin": pytest.approx(5 / 3),
                   "fluid_bin": pytest.approx(2.0), "clinician_vaso_bin": 1.0,
                   "clinician_fluid_bin": 2.0}  # fmt: skip
    assert intensity_of(tmp_path / "missing.csv", 5) is None
    empty = tmp_path / "empty.csv"
    empty.write_text(cases.read_text().splitlines()[0] + "\n")
    assert intensity_of(empty, 5) is None


def test_compare_says_whether_the_errors_follow_treatment_intensity():
    # the less vasopressor, the more over-valued: errors (+2, +1, 0, -1) against vaso (0..3)
    truths, vaso = [1.0, 3.0, 2.0, 4.0], [0.0, 1.0, 2.0, 3.0]
    errors = [2.0, 1.0, 0.0, -1.0]
    rows = [{**_row(k, t, t + e), "intensity": {"vaso_bin": v, "fluid_bin": 1.0}}
            for k, t, e, v in zip("abcd", truths, errors, vaso, strict=True)]  # fmt: skip
    doc = compare(rows)["fqe"]["error_by_intensity"]
    assert doc["vaso_bin"]["error"] == pytest.approx(-1.0)
    assert doc["vaso_bin"]["truth"] == pytest.approx(spearman(np.array(truths), np.array(vaso)))
    assert doc["vaso_bin"]["estimate"] == pytest.approx(
        spearman(np.array(truths) + np.array(errors), np.array(vaso)))  # fmt: skip
    assert doc["fluid_bin"] == {"error": None, "truth": None, "estimate": None}  # no variation
    # absent unless every compared row carries its intensity
    partial = [*rows[:3], {k: v for k, v in rows[3].items() if k != "intensity"}]
    assert "error_by_intensity" not in compare(partial)["fqe"]
    # the report names the direction, and the truth's own order beside it
    note = intensity_note(doc, "FQE")
    assert "the less vasopressor a policy gives" in note
    assert f"minus truth with the policy's mean vasopressor bin: {fmt(-1.0, 2)};" in note
    assert "the error works against the truth's order" in note
    up = {"fluid_bin": {"error": 0.6, "truth": 0.7, "estimate": 0.8}}
    assert "the more IV fluid a policy gives" in intensity_note(up, "WDR")
    assert "exaggerates the truth's order" in intensity_note(up, "WDR")
    assert intensity_note({"vaso_bin": {"error": 0.3, "truth": 0.1, "estimate": 0.2}}, "FQE") == ""
    assert intensity_note(None, "FQE") == ""


def test_rank_correlations_need_three_policies_and_variation():
    assert spearman(np.array([1.0, 2.0]), np.array([1.0, 2.0])) is None
    assert spearman(np.array([1.0, 1.0, 1.0]), np.array([1.0, 2.0, 3.0])) is None
    assert kendall(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)


def test_well_separated_policies_give_a_ceiling_near_one():
    rng = np.random.default_rng(0)
    means = np.array([-5.0, 0.0, 5.0, 10.0])
    returns = means[:, None] + rng.normal(0.0, 1.0, (4, 400))
    doc = truth_noise(returns, estimates=means, resamples=300)
    assert doc["episodes"] == 400 and doc["resamples"] == 300
    assert doc["ceiling"] == pytest.approx(1.0) and doc["ceiling_p05"] == pytest.approx(1.0)
    assert doc["spearman_p05"] == pytest.approx(1.0)


def test_policies_whose_truth_is_noise_give_a_low_ceiling():
    """Equal expected values: the truth's ranking is noise, so no estimator can agree with it,
    and the ceiling says so."""
    rng = np.random.default_rng(1)
    returns = np.where(rng.random((6, 300)) < 0.3, -15.0, 15.0)  # same death risk for all six
    doc = truth_noise(returns, estimates=np.arange(6.0), resamples=500)
    assert doc["ceiling"] < 0.8
    assert doc["spearman_p05"] < 0 < doc["spearman_p95"]


def test_paired_standard_error_by_hand():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([1.0, 1.0, 4.0, 2.0])
    c = a + 1.0  # differs from a by a constant: a paired SE of zero
    doc = truth_noise(np.stack([a, b, c]), resamples=10)
    d = np.array([a - b, a - c, b - c])
    want = np.median(d.std(1, ddof=1) / 2.0)
    assert doc["paired_se_median"] == pytest.approx(want)
    assert "spearman_p05" not in doc  # no estimates given


def test_the_oracle_ranks_worse_on_fewer_episodes_and_is_absent_without_a_size():
    """Close policies: with all the truth's episodes an on-policy oracle ranks them almost as
    the truth does; with 50 of them it cannot, and the figure says so."""
    rng = np.random.default_rng(3)
    means = np.array([0.0, 0.2, 0.4, 0.6, 0.8])
    returns = means[:, None] + rng.normal(0.0, 3.0, (5, 4000))
    assert "oracle" not in truth_noise(returns, resamples=50)
    many = truth_noise(returns, resamples=400, sample_episodes=4000)["oracle"]
    few = truth_noise(returns, resamples=400, sample_episodes=50)["oracle"]
    assert many["episodes"] == 4000 and few["episodes"] == 50
    assert many["median"] >= 0.9 and few["median"] < 0.8
    assert few["p05"] < few["median"] < few["p95"] <= 1.0
    assert many["reaches_target"] == 1.0 and 0.0 < few["reaches_target"] < 0.5
    # the oracle's draws come after the resampled truths: those figures do not move
    plain = truth_noise(returns, resamples=400)
    with_size = truth_noise(returns, resamples=400, sample_episodes=100)
    assert {k: with_size[k] for k in plain} == plain


def test_compare_gives_the_oracle_only_when_the_rows_agree_on_their_size():
    rng = np.random.default_rng(4)
    means = {"a": 0.0, "b": 2.0, "c": 4.0}
    returns = {k: m + rng.normal(0, 3.0, 300) for k, m in means.items()}
    rows = [{**_row(k, float(returns[k].mean()), m), "episodes": 50} for k, m in means.items()]
    noise = compare(rows, returns, resamples=100)["fqe"]["truth_noise"]
    assert noise["oracle"]["episodes"] == 50
    rows[0]["episodes"] = 60  # evaluated on different splits: no one oracle size
    assert "oracle" not in compare(rows, returns, resamples=100)["fqe"]["truth_noise"]


def test_compare_adds_truth_noise_over_the_evaluable_policies_only():
    rng = np.random.default_rng(2)
    means = {"a": 0.0, "b": 2.0, "c": 4.0, "d": 6.0}
    returns = {k: m + rng.normal(0, 3.0, 200) for k, m in means.items()}
    rows = [_row(k, float(returns[k].mean()), m) for k, m in means.items()]
    rows[3]["estimates"]["fqe"] = (None, None, None)  # d: not evaluable
    doc = compare(rows, returns, resamples=200)["fqe"]
    noise = doc["truth_noise"]
    assert noise["episodes"] == 200
    again = truth_noise(np.stack([returns[k] for k in "abc"]), np.array([0.0, 2.0, 4.0]), 200)
    assert noise == again  # the same three policies, the same seed: the same figures


def _episodes(folder, stays, returns):
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"stay_id": pa.array(stays, pa.int64()),
                             "return_eval": pa.array(returns, pa.float64())}),
                   folder / "episodes.parquet")  # fmt: skip


def test_episode_returns_pairs_by_stay_and_refuses_unpaired_folders(tmp_path):
    _episodes(tmp_path / "a", [3, 1, 2], [30.0, 10.0, 20.0])
    _episodes(tmp_path / "b", [2, 3, 1], [2.0, 3.0, 1.0])
    got = episode_returns({"a": tmp_path / "a", "b": tmp_path / "b"})
    assert got["a"].tolist() == [10.0, 20.0, 30.0] and got["b"].tolist() == [1.0, 2.0, 3.0]
    _episodes(tmp_path / "c", [1, 2, 4], [0.0, 0.0, 0.0])  # another episode: not paired
    assert episode_returns({"a": tmp_path / "a", "c": tmp_path / "c"}) is None
    assert episode_returns({"a": tmp_path / "a", "x": tmp_path / "missing"}) is None


def test_the_report_states_the_truths_own_ceiling():
    rng = np.random.default_rng(3)
    returns = {k: rng.normal(0, 5.0, 150) for k in "abcd"}  # four policies equal in truth
    rows = [_row(k, float(v.mean()), float(i), float(i) - 1, float(i) + 1)
            for i, (k, v) in enumerate(returns.items())]  # fmt: skip
    doc = {"validation_vs_truth": compare(rows, returns, resamples=200), "test_vs_truth": {}}
    table, verdicts = _agreement(doc)
    noise = doc["validation_vs_truth"]["fqe"]["truth_noise"]
    fqe_row = next(r for r in table if r[0].startswith("FQE"))
    assert fqe_row[-1].startswith(fmt(noise["ceiling"], 2) + " (5th pct.")
    fqe_verdict = next(v for v in verdicts if v.startswith("FQE"))
    assert "150 simulated episodes" in fqe_verdict
    assert "agrees with itself at Spearman" in fqe_verdict
    assert "For scale" not in fqe_verdict  # the rows did not say how many episodes


def test_the_report_sets_the_spearman_beside_an_on_policy_trial_of_the_splits_size():
    rng = np.random.default_rng(5)
    means = {"a": 0.0, "b": 1.0, "c": 2.0, "d": 3.0}
    returns = {k: m + rng.normal(0, 6.0, 400) for k, m in means.items()}
    truth = {k: float(v.mean()) for k, v in returns.items()}
    for order, word in ((list(means), "better"), (list(means)[::-1], "worse")):
        rows = [{**_row(k, truth[k], float(order.index(k))), "episodes": 30} for k in means]
        doc = {"validation_vs_truth": compare(rows, returns, resamples=200), "test_vs_truth": {}}
        oracle = doc["validation_vs_truth"]["fqe"]["truth_noise"]["oracle"]
        verdict = next(v for v in _agreement(doc)[1] if v.startswith("FQE"))
        assert "rolling every policy out on 30 patients" in verdict
        assert f"Spearman {fmt(oracle['median'], 2)}" in verdict
        assert f"the FQE ranks them {word} than such a trial would" in verdict
        assert "drawn again from" not in verdict  # 30 of the truth's 400 episodes
    rows = [{**_row(k, truth[k], float(i)), "episodes": 900} for i, k in enumerate(means)]
    doc = {"validation_vs_truth": compare(rows, returns, resamples=200), "test_vs_truth": {}}
    verdict = next(v for v in _agreement(doc)[1] if v.startswith("FQE"))
    assert "drawn again from the truth's 400 episodes" in verdict  # a split larger than the truth


def test_held_sample_draws_the_behaviour_estimate_and_is_seeded():
    from sepsisrl.truth.policies import HeldSample

    probs = np.array([[0.0, 0.0, 1.0], [0.5, 0.5, 0.0]])

    def prob(states):
        return probs[states[:, 0].astype(int)]

    certain = HeldSample(prob, seed=0).decide(np.zeros((50, 1)), {})
    assert (certain == 2).all()  # a one-hot estimate is its argmax, never another action
    states = np.ones((4000, 1))
    a = HeldSample(prob, seed=3).decide(states, {})
    assert set(np.unique(a)) == {0, 1} and abs((a == 0).mean() - 0.5) < 0.03
    assert np.array_equal(a, HeldSample(prob, seed=3).decide(states, {}))  # same seed, same draws
    assert not np.array_equal(a, HeldSample(prob, seed=4).decide(states, {}))


def test_the_interface_block_reports_the_paired_difference_in_points():
    from sepsisrl.study.report.sections.truth import interface_handicap

    ci95 = {"mean": 0.3, "ci95": [0.25, 0.35]}
    held = {"name": "clinicians_held_4h", "true_value": 4.5, "true_value_ci95": [3.2, 5.8],
            "true_mortality_90d": 0.33, "true_mortality_90d_ci95": [0.29, 0.38],
            "difference_from_clinicians": {
                "value": {"mean": -0.97, "ci95": [-1.85, -0.09]},
                "mortality_90d": {"mean": 0.0363, "ci95": [0.0032, 0.0694]}}}  # fmt: skip
    doc = {"policies": [held], "clinicians": {"value": {"mean": 5.46, "ci95": [4.2, 6.7]},
                                              "mortality_90d": ci95}}  # fmt: skip
    text, table = interface_handicap(doc)
    assert table.key == "truth-interface" and len(table.rows) == 2
    assert text.kind == "warning" and "credibly costs" in text.text
    assert "+3.6 points [+0.3, +6.9]" in text.text
    assert "held for the window as one representative dose" in text.text
    assert table.rows[1][0] == "clinicians' actions drawn and held for 4 h"
    assert interface_handicap({"policies": [], "clinicians": doc["clinicians"]}) == []
    # a study measured with truth.interface: titrated says so
    text, table = interface_handicap({**doc, "interface": "titrated"})
    assert "titrating inside" in text.text and "representative dose" not in text.text
    assert table.rows[1][0] == "clinicians' bins drawn every 4 h, titrated inside"
