"""Suspicion of infection (docs/clinical.md, "Sepsis-3"): the antibiotic filter of the ingest stage
and the culture / antibiotic pairing rules of sql/suspicion_of_infection.sql, through the real
stages on hand-made ingest tables.

Every fixture stay is admitted at T0 = 2150-03-01 08:00; times are hours after T0.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import duckdb
import pytest

from sepsisrl.dataset.config import load_build_config
from sepsisrl.dataset.ingest import antibiotic_filter

from .build_fixtures import PLATELETS, T0, IngestTables, Stay, at, build_sepsis

MINUTE = 1 / 60
DAY_1 = T0.date()  # 2150-03-01, the day of admission (T0 is 08:00 on it)
DAY_2 = date(2150, 3, 2)
DAY_3 = date(2150, 3, 3)


# --- the antibiotic filter of the ingest stage ----------------------------------------------

PRESCRIPTIONS = [
    # (drug, route, kept as a systemic antibiotic)
    ("Vancomycin", "IV", True),
    ("Piperacillin-Tazobactam", "IV", True),
    ("CefTRIAXone", "IV PIGGYBACK", True),
    ("Ciprofloxacin HCl", "PO/NG", True),
    ("Sulfameth/Trimethoprim DS", "PO", True),
    ("Zosyn", "IV", True),
    ("Azithromycin", None, True),  # no route charted: kept
    # topical, ophthalmic, otic, inhaled, intrathecal routes
    ("Erythromycin", "BOTH EYES", False),
    ("Ciprofloxacin 0.3% Ophth Soln", "LEFT EYE", False),
    ("Polymyxin B Sulfate", "OU", False),
    ("Gentamicin Sulfate", " topical ", False),
    ("Tobramycin Inhalation Soln", "IH", False),
    ("Vancomycin", "IT", False),
    # topical or allergy-test preparations, whatever the route
    ("Clindamycin 1% Gel", None, False),
    ("Neomycin-Polymyxin-Bacitracin Ophth Oint", None, False),
    ("Bacitracin/Polymyxin B Ointment", "PO", False),
    ("Ofloxacin 0.3% Ear Drops", None, False),
    ("Penicillin G Desensitization", "IV", False),
    # not antibiotics
    ("Heparin", "SC", False),
    ("Acetaminophen", "PO", False),
    ("Fluconazole", "IV", False),
    ("Acyclovir", "IV", False),
]


def test_antibiotic_filter_keeps_systemic_antibiotics_only():
    con = duckdb.connect()
    con.execute("CREATE TABLE prescriptions (drug VARCHAR, route VARCHAR)")
    con.executemany(
        "INSERT INTO prescriptions VALUES (?, ?)", [(d, r) for d, r, _ in PRESCRIPTIONS]
    )
    where = antibiotic_filter(load_build_config())
    kept = con.execute(f"SELECT drug, route FROM prescriptions WHERE {where}").fetchall()
    assert sorted(kept, key=str) == sorted(((d, r) for d, r, k in PRESCRIPTIONS if k), key=str)


# --- pairing rules --------------------------------------------------------------------------


@dataclass(frozen=True)
class Pairing:
    name: str
    antibiotic: float  # hours after T0
    culture: float | None  # hours after T0; None: a date-only culture on `culture_date`
    culture_date: date | None = None
    si: datetime | None = None  # expected SI time; None: no suspected infection
    culture_first: bool | None = None


PAIRINGS = [
    Pairing("culture_then_antibiotic_at_72h", 72, 0, si=at(0), culture_first=True),
    Pairing("culture_then_antibiotic_at_72h_1min", 72 + MINUTE, 0),
    Pairing("culture_then_antibiotic_same_time", 5, 5, si=at(5), culture_first=True),
    Pairing("antibiotic_then_culture_at_24h", 10, 34, si=at(10), culture_first=False),
    Pairing("antibiotic_then_culture_at_24h_1min", 10, 34 + MINUTE),
    # date-only cultures (sepsis.date_only_culture: midnight, mimic-code's rule; the legacy
    # day_overlap rule is tested in test_build_conventions_sepsis.py): placed at 00:00 of their
    # day and paired by calendar day.
    # culture first: an antibiotic at 03-04 20:00 is on the third day after the culture's day
    Pairing(
        "date_only_culture_day_overlaps_72h_before_antibiotic",
        84,
        None,
        DAY_1,
        si=datetime(2150, 3, 1),
        culture_first=True,
    ),
    # antibiotic at 03-05 01:00: on the fourth day after the culture's day
    Pairing("date_only_culture_day_ends_before_72h_window", 89, None, DAY_1),
    # antibiotic at 14:00 on the culture's day: culture first, SI at the culture's midnight
    Pairing(
        "date_only_culture_on_antibiotic_day",
        6,
        None,
        DAY_1,
        si=datetime(2150, 3, 1),
        culture_first=True,
    ),
    # antibiotic at 03-01 20:00, date-only culture on 03-02 (the antibiotic's next day):
    # antibiotic first, SI = antibiotic
    Pairing(
        "antibiotic_then_date_only_culture_next_day",
        12,
        None,
        DAY_2,
        si=at(12),
        culture_first=False,
    ),
    # 03-03 is two days after the antibiotic's day
    Pairing("antibiotic_then_date_only_culture_two_days_later", 12, None, DAY_3),
]


@pytest.fixture(scope="module")
def suspicion(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """{case: suspicion rows of its patient}, one stay per PAIRINGS entry."""
    t = IngestTables()
    stays: dict[str, Stay] = {}
    for case in PAIRINGS:
        stays[case.name] = s = t.stay(los_hours=120)
        t.antibiotic(s, case.antibiotic)
        t.culture(s, case.culture, case.culture_date)
    built = build_sepsis(t, Path(tmp_path_factory.mktemp("suspicion")))
    rows = built.rows("sepsis", "suspicion")
    return {name: [r for r in rows if r["subject_id"] == s.subject_id] for name, s in stays.items()}


@pytest.mark.parametrize("case", PAIRINGS, ids=lambda c: c.name)
def test_culture_and_antibiotic_pair_within_the_windows(suspicion, case: Pairing):
    rows = suspicion[case.name]
    if case.si is None:
        assert rows == []
        return
    [row] = rows
    assert row["si_time"] == case.si
    assert row["abx_time"] == at(case.antibiotic)
    assert row["culture_first"] is case.culture_first
    assert row["date_only_culture"] is (case.culture is None)
    if case.culture is not None:
        assert row["culture_time"] == at(case.culture)


def test_antibiotic_without_any_culture_is_no_suspicion(tmp_path: Path):
    t = IngestTables()
    s = t.stay()
    t.antibiotic(s, 5)
    other = t.stay()  # another patient's culture does not pair
    t.culture(other, 4)
    built = build_sepsis(t, tmp_path)
    assert built.rows("sepsis", "suspicion") == []
    assert built.sepsis_audit["suspicion_events"] == 0
    assert built.sepsis_audit["stays_with_suspicion"] == 0


# --- the stay's Sepsis-3 onset ---------------------------------------------------------------


def test_stay_onset_uses_the_earliest_si_with_sofa_2_in_its_window(tmp_path: Path):
    t = IngestTables()
    # A SOFA hour's time is its end (sepsis.sofa_time: end, mimic-code's sofa endtime).
    # SI 10 (culture 10, abx 12) and SI 90 (abx 90, culture 95; culture 10 is 80 h before it);
    # platelets 40 at hour 30: SOFA 3 in hours 30..53 (ending 31..54).
    # SI 10: window [-38, 34] -> hour 30, ends 31 -> onset min(10, 31) = 10
    # SI 90: window [42, 114] -> hour 41, ends 42 -> onset min(90, 42) = 42
    both_qualify = t.stay(los_hours=130)
    t.culture(both_qualify, 10)
    t.antibiotic(both_qualify, 12)
    t.antibiotic(both_qualify, 90)
    t.culture(both_qualify, 95)
    t.lab(both_qualify, 30.5, PLATELETS, 40)
    # SI 0 (culture 0, abx 1): window [-48, 24], no SOFA >= 2 in it (SOFA 3 in hours 40..63).
    # SI 80 (abx 80, culture 81): window [32, 104] -> hour 40, ends 41 -> onset min(80, 41) = 41
    only_later = t.stay(los_hours=130)
    t.culture(only_later, 0)
    t.antibiotic(only_later, 1)
    t.antibiotic(only_later, 80)
    t.culture(only_later, 81)
    t.lab(only_later, 40.5, PLATELETS, 40)
    built = build_sepsis(t, tmp_path)
    si = {}
    for r in built.rows("sepsis", "suspicion"):
        si.setdefault(r["subject_id"], []).append(r["si_time"])
    assert si[both_qualify.subject_id] == [at(10), at(90)]
    assert si[only_later.subject_id] == [at(0), at(80)]
    onset = {r["stay_id"]: r for r in built.rows("sepsis", "onset")}
    assert onset[both_qualify.stay_id] == {
        "stay_id": both_qualify.stay_id,
        "si_time": at(10),
        "sofa_time": at(31),
        "onset_time": at(10),
    }
    assert onset[only_later.stay_id] == {
        "stay_id": only_later.stay_id,
        "si_time": at(80),
        "sofa_time": at(41),
        "onset_time": at(41),
    }
    assert built.sepsis_audit["stays_sepsis3_any_time"] == 2


def test_culture_first_si_is_the_earliest_culture_in_the_72h_before_the_antibiotic(
    tmp_path: Path,
):
    t = IngestTables()
    s = t.stay(los_hours=96)
    t.culture(s, 0)
    t.culture(s, 48)
    t.antibiotic(s, 60)  # both cultures lie in [abx - 72 h, abx]
    built = build_sepsis(t, tmp_path)
    [row] = built.rows("sepsis", "suspicion")
    assert row["si_time"] == at(0)
