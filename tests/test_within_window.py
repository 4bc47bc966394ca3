"""The build's measure of titration inside the action window (build/actions.within_window)."""

from __future__ import annotations

import numpy as np

from sepsisrl.dataset.actions import within_window


def test_share_of_windows_whose_vasopressor_bin_differs_from_the_first_hour():
    window = np.array([0, 0, 1, 2, 3, 0])
    first_hour = np.array([0, 1, 1, 1, 3, 0])  # window 2: started after tau; 4: titrated up
    doc = within_window(window, first_hour)
    assert doc["vaso_bin_differs_from_first_hour"] == round(2 / 6, 4)
    assert doc["vaso_windows_on"] == 4  # windows 2..5 have a vasopressor in either
    assert doc["vaso_bin_differs_from_first_hour_when_on"] == 0.5
    none = within_window(np.zeros(3, int), np.zeros(3, int))
    assert none["vaso_bin_differs_from_first_hour"] == 0.0
    assert none["vaso_bin_differs_from_first_hour_when_on"] is None
