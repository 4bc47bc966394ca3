"""The world's ground-truth Sepsis-3 logic on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from sepsisrl.synth.truth import (
    sepsis_onset,
    sofa_cardiovascular,
    sofa_cns,
    sofa_coagulation,
    sofa_liver,
    sofa_renal,
    sofa_respiration,
    suspected_infection_times,
    trailing,
)


@pytest.mark.parametrize(
    "pf, vent, expected",
    [
        (400, False, 0),
        (399, False, 1),
        (300, False, 1),
        (299, False, 2),
        (150, False, 2),
        (199, True, 3),
        (200, True, 2),
        (99, True, 4),
        (100, True, 3),
    ],
)
def test_respiration_needs_ventilation_for_3_and_4(pf, vent, expected):
    assert sofa_respiration(np.array([pf]), np.array([vent]))[0] == expected


@pytest.mark.parametrize(
    "plt, expected", [(150, 0), (149, 1), (100, 1), (99, 2), (50, 2), (49, 3), (20, 3), (19, 4)]
)
def test_coagulation_thresholds(plt, expected):
    assert sofa_coagulation(np.array([plt]))[0] == expected


@pytest.mark.parametrize(
    "bili, expected",
    [(1.19, 0), (1.2, 1), (1.99, 1), (2.0, 2), (5.99, 2), (6.0, 3), (11.99, 3), (12.0, 4)],
)
def test_liver_thresholds(bili, expected):
    assert sofa_liver(np.array([bili]))[0] == expected


@pytest.mark.parametrize(
    "gcs, expected", [(15, 0), (14, 1), (13, 1), (12, 2), (10, 2), (9, 3), (6, 3), (5, 4), (3, 4)]
)
def test_cns_thresholds(gcs, expected):
    assert sofa_cns(np.array([gcs]))[0] == expected


@pytest.mark.parametrize(
    "map_, dopa, dobu, epi, ne, expected",
    [
        (70, 0, 0, 0, 0, 0),
        (69, 0, 0, 0, 0, 1),
        (80, 5, 0, 0, 0, 2),
        (80, 0, 2.5, 0, 0, 2),
        (80, 5.1, 0, 0, 0, 3),
        (80, 0, 0, 0, 0.1, 3),
        (80, 0, 0, 0.1, 0, 3),
        (80, 0, 0, 0, 0.11, 4),
        (80, 15.1, 0, 0, 0, 4),
    ],
)
def test_cardiovascular_levels(map_, dopa, dobu, epi, ne, expected):
    got = sofa_cardiovascular(*(np.array([x], dtype=float) for x in (map_, dopa, dobu, epi, ne)))
    assert got[0] == expected


@pytest.mark.parametrize(
    "cr, urine, expected",
    [
        (1.19, np.nan, 0),
        (1.2, np.nan, 1),
        (2.0, np.nan, 2),
        (3.5, np.nan, 3),
        (5.0, np.nan, 4),
        (1.0, 499, 3),
        (1.0, 500, 0),
        (1.0, 199, 4),
        (5.0, 400, 4),
    ],
)
def test_renal_creatinine_or_urine(cr, urine, expected):
    assert sofa_renal(np.array([cr]), np.array([urine]))[0] == expected


def test_trailing_window_stays_within_a_stay():
    values = np.array([1.0, 5.0, 2.0, 0.0, 3.0])
    group = np.array([0, 0, 0, 1, 1])
    assert trailing(values, group, 2, "max").tolist() == [1, 5, 5, 0, 3]
    assert trailing(values, group, 24, "sum").tolist() == [1, 6, 8, 0, 3]


def test_suspicion_pair_rules():
    # culture at 10 h; antibiotics at 80 h (within 72 h) / at 83 h (too late)
    c = np.array([10.0, 10.0, 50.0, 50.0, np.nan])
    a = np.array([80.0, 83.0, 27.0, 25.0, 5.0])
    si = suspected_infection_times([c], [a])[:, 0]
    assert si[0] == 10.0  # culture first, antibiotic within 72 h -> culture time
    assert np.isnan(si[1])  # 73 h later: no pair
    assert si[2] == 27.0  # antibiotic first, culture within 24 h -> antibiotic time
    assert np.isnan(si[3])  # culture 25 h after antibiotic: no pair
    assert np.isnan(si[4])  # no culture


def test_onset_is_min_of_si_and_first_sofa_hour_in_window():
    stay = np.zeros(100, dtype=np.int64)
    hours = np.arange(100)
    sofa = np.zeros(100)
    sofa[30:] = 2
    si = np.array([[60.0]])
    onset, hour, used = sepsis_onset(stay, hours, sofa, si)
    assert hour[0] == 30 and onset[0] == 30 and used[0] == 60  # SOFA 30 h before SI
    onset, hour, _ = sepsis_onset(stay, hours, sofa, np.array([[90.0]]))
    assert hour[0] == 42 and onset[0] == 42  # window starts at SI - 48 h
    onset, _, _ = sepsis_onset(stay, hours, sofa, np.array([[10.0]]))
    assert onset[0] == 10.0  # SI earlier than the SOFA hour (30 h <= SI + 24 h)
    onset, _, _ = sepsis_onset(stay, hours, sofa, np.array([[2.0]]))
    assert np.isnan(onset[0])  # SOFA >= 2 only after SI + 24 h: not this SI
    sofa[:] = 1
    onset, _, _ = sepsis_onset(stay, hours, sofa, np.array([[50.0]]))
    assert np.isnan(onset[0])  # no organ dysfunction: not Sepsis-3
