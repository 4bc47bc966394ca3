"""The synthetic world's charting stays close to the real MIMIC-IV demo (bench/realism.py).

Runs the realism bench's statistics on the session's synthetic world and on the demo tables
(skipped when the demo is not on this machine) and checks the figures the charting layer was
calibrated on: each within a factor of the demo's, and no value MIMIC never writes.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "realism.py"


def _bench():
    spec = importlib.util.spec_from_file_location("realism_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


realism = _bench()
pytestmark = pytest.mark.skipif(
    not (realism.DEMO / "icu" / "inputevents.csv.gz").is_file(),
    reason=f"the MIMIC-IV demo is not at {realism.DEMO}",
)


@pytest.fixture(scope="module")
def figures(world_dir: Path) -> tuple[dict, dict]:
    return realism.collect(realism.DEMO), realism.collect(world_dir)


#: metric -> largest accepted factor between the synthetic world and the demo
CALIBRATED = {
    "rows.chartevents.per_icu_day": 1.5,
    "rows.prescriptions.per_icu_day": 1.5,
    "lab.creatinine.draws_per_icu_day": 1.5,
    "lab.platelets.draws_per_icu_day": 1.5,
    "lab.lactate.draws_per_icu_day": 1.8,
    "lab.pao2.draws_per_icu_day": 1.5,
    "lab.albumin.draws_per_icu_day": 1.8,
    "lab.creatinine.result_delay_min_p50": 1.3,
    "lab.platelets.result_delay_min_p50": 1.3,
    "lab.pao2.result_delay_min_p50": 2.0,
    "culture.date_only_specimen_share": 3.0,
    "antibiotic.route.IV": 1.3,
    "antibiotic.route.PO/NG": 2.0,
    "inputevents.amountuom.ml": 1.5,
    "fluid.rate_null_share": 3.0,
    "urine.void_ml_per_row_p50": 1.5,
    "urine.foley_ml_per_row_p50": 2.0,
    "urine.gu_irrigant_rows_per_icu_day": 5.0,
}


@pytest.mark.parametrize("metric, factor", list(CALIBRATED.items()))
def test_calibrated_figure_is_within_a_factor_of_the_demo(figures, metric, factor):
    demo, synth = figures
    assert demo[metric] and synth.get(metric), (metric, demo.get(metric), synth.get(metric))
    ratio = synth[metric] / demo[metric]
    assert 1 / factor <= ratio <= factor, (metric, demo[metric], synth[metric])


def test_inputevents_texts_are_values_mimic_writes(figures):
    demo, synth = figures
    for prefix in ("inputevents.status.", "inputevents.amountuom.", "fluid.ordercategoryname."):
        real = {k for k in demo if k.startswith(prefix)}
        made = {k for k in synth if k.startswith(prefix)}
        assert made <= real, sorted(made - real)
    # every rate unit the world writes is one the demo has
    real_units = {k for k in demo if k.startswith("inputevents.rateuom.")}
    assert {k for k in synth if k.startswith("inputevents.rateuom.")} <= real_units


def test_chartevents_figures_are_reported_for_the_world_only(figures):
    demo, synth = figures
    assert demo["rows.chartevents.per_stay"] == pytest.approx(
        realism.DEMO_CHARTEVENTS_ROWS / demo["cohort.icu_stays"]
    )
    assert not any(k.startswith("chart.") for k in demo)
    assert synth["chart.heart_rate.rows_per_icu_day"] > 12


def test_side_by_side_table_lists_both_columns_and_their_ratio(figures):
    demo, synth = figures
    text = realism.table(demo, synth)
    line = next(x for x in text.splitlines() if x.startswith("lab.pao2.draws_per_icu_day"))
    d, s, r = line.split()[1:]
    assert float(r) == pytest.approx(float(s) / float(d), abs=0.01)
    assert "chart.heart_rate.rows_per_icu_day" in text
