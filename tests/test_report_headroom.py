"""The study report's headroom block: the online reference beside the clinicians and the
exported offline policy, paired on the study's truth population, or a plain note why not."""

from __future__ import annotations

from sepsisrl.study.report.blocks import Table, Text
from sepsisrl.study.report.sections.truth import headroom


def _est(mean, lo, hi):
    return {"mean": mean, "ci95": [lo, hi]}


def _truth_doc():
    exported = {
        "name": "iql_seed42", "true_value": 4.5, "true_value_ci95": [3.9, 5.1],
        "true_mortality_90d": 0.2, "true_mortality_90d_ci95": [0.18, 0.22],
        "difference_from_clinicians": {"value": _est(0.3, 0.1, 0.5)},
    }  # fmt: skip
    return {
        "population": {"patients": 2000, "seed": 0, "episodes": 700},
        "clinicians": {"value": _est(4.2, 3.6, 4.8), "mortality_90d": _est(0.21, 0.19, 0.23)},
        "selection": {"exported_run": "iql_seed42"},
        "policies": [exported],
    }


def _reference(patients=2000, seed=0):
    return {
        "true_value": _est(6.0, 5.5, 6.5),
        "true_mortality_90d": _est(0.15, 0.13, 0.17),
        "difference_from_clinicians": {"value": _est(1.8, 1.5, 2.1)},
        "truth_population": {"patients": patients, "seed": seed, "episodes": 700},
        "training": {
            "rounds": 8,
            "patients_simulated": 16000,
            "episodes": 5600,
            "warm_start_replay": True,
        },
    }


def test_the_reference_is_shown_beside_the_clinicians_and_the_exported_policy():
    intro, tab = headroom(_reference(), _truth_doc())
    assert isinstance(intro, Text) and isinstance(tab, Table)
    assert "credibly better than the clinicians" in intro.text and intro.kind == "p"
    assert "1.8 above the clinicians' true value" in intro.text
    assert "exported offline policy: 0.3 above the clinicians' true value" in intro.text
    assert "16000 simulated patients" in intro.text
    assert [r[0] for r in tab.rows] == [
        "online reference (DQN in the world)",
        "clinicians",
        "exported offline policy (iql_seed42)",
    ]
    assert tab.rows[0][1] == "6 [5.5, 6.5]"
    assert tab.rows[2][3] == "0.3 [0.1, 0.5]"


def test_no_reference_or_another_population_gives_a_note_not_a_comparison():
    (note,) = headroom(None, _truth_doc())
    assert "sepsisrl reference --workspace" in note.text
    (note,) = headroom(_reference(patients=500, seed=1), _truth_doc())
    assert "--truth-patients 2000 --truth-seed 0" in note.text
    # a study whose truth titrates inside the bins is not paired with the held reference
    (note,) = headroom(_reference(), {**_truth_doc(), "interface": "titrated"})
    assert note.kind == "note" and "'held' interface" in note.text and "'titrated'" in note.text


def test_a_reference_not_better_than_the_clinicians_is_flagged_not_called_headroom():
    ref = _reference()
    ref["true_value"] = _est(3.9, 2.6, 5.2)
    ref["difference_from_clinicians"] = {"value": _est(-1.56, -2.44, -0.67)}
    intro, _ = headroom(ref, _truth_doc())
    assert intro.kind == "warning"
    assert "NOT MEASURED" in intro.text and "credibly WORSE than the clinicians" in intro.text
    assert "headroom on this world is unknown" in intro.text
