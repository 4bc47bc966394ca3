"""ICU re-orders of an antibiotic course running at admission (charting.antibiotic_reorder_*).

In MIMIC-IV a patient already on antibiotics when admitted to the ICU gets them ordered again
in the ICU (demo v2.2: 10 of 20 such stays, same agent, 4-39 h after intime). The world charts
that re-order as a prescriptions row; it is charting only, so no other table and no hourly
truth changes, and the truth counts it as the build sees it (an antibiotic of the ICU stay).
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sepsisrl.synth.world import WorldSummary, generate_world

from .conftest import small_config

N_STAYS = 600
PROBABILITY = 0.56  # the packaged charting.antibiotic_reorder_probability (asserted below)


def _world(root: Path, probability: float | None) -> WorldSummary:
    over = {"output.chunk_subjects": 200, "charting.density": 0.0}
    if probability is not None:
        over["charting.antibiotic_reorder_probability"] = probability
    return generate_world(root / "mimic", N_STAYS, seed=31, cfg=small_config(**over))


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> tuple[WorldSummary, WorldSummary]:
    """(packaged configuration, no re-orders), same seed."""
    root = tmp_path_factory.mktemp("reorder")
    return _world(root / "on", None), _world(root / "off", 0.0)


#: per ICU stay: pre-ICU antibiotic orders running at intime, and in-stay orders of the same
#: drug and route that start where a pre-ICU order of that drug stops (the re-orders)
_REORDERS = """
WITH icu AS (SELECT * FROM read_csv_auto('{d}/icu/icustays.csv.gz')),
rx AS (SELECT * FROM read_csv_auto('{d}/hosp/prescriptions.csv.gz')
       WHERE drug IN ('Vancomycin', 'Piperacillin-Tazobactam', 'CefTRIAXone', 'Azithromycin',
                      'Cefepime', 'MetRONIDAZOLE (FLagyl)', 'Meropenem')),
pre AS (SELECT i.stay_id, i.intime, r.* EXCLUDE (subject_id, hadm_id)
        FROM icu i JOIN rx r ON r.hadm_id = i.hadm_id AND r.starttime < i.intime
        AND r.stoptime > i.intime),
re AS (SELECT p.stay_id, p.intime, n.starttime, n.drug, n.route
       FROM pre p JOIN icu i USING (stay_id)
       JOIN rx n ON n.hadm_id = i.hadm_id AND n.drug = p.drug AND n.route = p.route
        AND n.starttime = p.stoptime AND n.starttime >= i.intime AND n.starttime < i.outtime)
SELECT (SELECT count(DISTINCT stay_id) FROM pre) AS eligible,
       (SELECT count(DISTINCT stay_id) FROM re) AS reordered,
       (SELECT median(delay) FROM (SELECT stay_id, min(date_diff('minute', intime, starttime))
                                   / 60.0 AS delay FROM re GROUP BY stay_id)) AS median_delay_h
"""


def _reorders(world: WorldSummary) -> tuple[int, int, float | None]:
    return duckdb.connect().execute(_REORDERS.format(d=world.out_dir)).fetchone()


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_packaged_probability_is_the_one_the_bounds_below_assume():
    cfg = small_config()
    assert cfg.charting.antibiotic_reorder_probability == PROBABILITY
    assert cfg.charting.antibiotic_reorder_delay_h.median > 0


def test_a_course_running_at_icu_admission_is_ordered_again_in_the_stay(worlds):
    on, off = worlds
    eligible, reordered, median_delay = _reorders(on)
    assert eligible > 60
    # the probability, less courses or stays that end before the drawn delay
    assert 0.30 * eligible <= reordered <= PROBABILITY * eligible, (reordered, eligible)
    assert 4.0 <= median_delay <= 24.0  # demo: 4.0-39.2 h, median 7.3 h
    off_eligible, off_reordered, _ = _reorders(off)
    assert off_eligible == eligible and off_reordered == 0


def test_the_reorder_is_charting_only(worlds):
    """Every table but prescriptions, and the hourly truth, are byte-identical without it."""
    on, off = worlds
    a, b = _digests(on.out_dir), _digests(off.out_dir)
    assert a.keys() == b.keys() and len(a) == 11
    differ = {k for k in a if a[k] != b[k]}
    assert differ == {"hosp/prescriptions.csv.gz"}
    assert _digests(on.truth_dir)["hourly.parquet"] == _digests(off.truth_dir)["hourly.parquet"]


def test_truth_counts_the_reorder_as_an_antibiotic_of_the_icu_stay(worlds):
    """Stays septic only with re-orders have one, after a culture at most 72 h before it, and
    their suspected infection is no later than it."""
    on, off = worlds
    t_on = pq.read_table(on.truth_dir / "stays.parquet")
    t_off = pq.read_table(off.truth_dir / "stays.parquet")
    assert t_on["stay_id"].equals(t_off["stay_id"])
    on_s, off_s = t_on["sepsis3"].to_numpy(), t_off["sepsis3"].to_numpy()
    assert not (off_s & ~on_s).any()  # a re-order adds candidates, never removes one
    gained = t_on.filter(pa.array(on_s & ~off_s)).select(["stay_id", "suspected_infection_time"])
    assert gained.num_rows >= 5
    con = duckdb.connect()
    con.register("gained", gained)
    d = on.out_dir
    rows = con.execute(
        f"""
        WITH rx AS (SELECT * FROM read_csv_auto('{d}/hosp/prescriptions.csv.gz')),
        re AS (
            SELECT i.stay_id, min(n.starttime) AS reorder_time
            FROM read_csv_auto('{d}/icu/icustays.csv.gz') i
            JOIN rx n ON n.hadm_id = i.hadm_id AND n.starttime >= i.intime
             AND n.starttime < i.outtime
            JOIN rx p ON p.hadm_id = i.hadm_id AND p.drug = n.drug AND p.route = n.route
             AND p.starttime < i.intime AND p.stoptime = n.starttime
            GROUP BY ALL
        )
        SELECT g.stay_id, r.reorder_time, g.suspected_infection_time,
               EXISTS (SELECT 1 FROM read_csv_auto('{d}/hosp/microbiologyevents.csv.gz') m
                       JOIN read_csv_auto('{d}/icu/icustays.csv.gz') i USING (hadm_id)
                       WHERE i.stay_id = g.stay_id
                         AND m.charttime BETWEEN r.reorder_time - INTERVAL 72 HOUR
                                             AND r.reorder_time + INTERVAL 24 HOUR) AS culture
        FROM gained g LEFT JOIN re r USING (stay_id)
        """
    ).fetchall()
    assert all(r[1] is not None for r in rows), rows  # each has a re-order row
    assert all(r[3] for r in rows), rows  # paired with a culture
    # the truth keeps hours to the second, the table's starttime is floored to the minute
    assert all(r[2] <= r[1] + timedelta(minutes=1) for r in rows), rows
