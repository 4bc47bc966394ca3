"""The world's charting habits (``configs/synth.yaml``) and item catalogue (``catalog.yaml``)
are data that fail at load, naming the key, when misspelt or out of range."""

from __future__ import annotations

import copy

import pytest

from sepsisrl.config import ConfigError
from sepsisrl.synth import catalog
from sepsisrl.synth.config import load_synth_config


@pytest.mark.parametrize(
    "override, message",
    [
        (
            {"charting.chartevents.gcs_when_due_typo": 0.5},
            "charting.chartevents.gcs_when_due_typo: unknown setting",
        ),
        (
            {"charting.labevents.panel_per_draw.cbc": 1.5},
            "charting.labevents.panel_per_draw.cbc: Input should be less than or equal to 1",
        ),
        (
            {"charting.microbiology.positive_culture.sputum": 0.5},
            "charting.microbiology.positive_culture.sputum: unknown setting",
        ),
        ({"charting.stream_offsets.urine_route": 7}, "charting.stream_offsets must be distinct"),
        (
            {"charting.prescriptions.other_topical_fraction": [0.1]},
            "charting.prescriptions.other_topical_fraction",
        ),
    ],
)
def test_charting_habit_mistakes_fail_at_load_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=r"synth\.yaml") as err:
        load_synth_config(overrides=override)
    assert message in str(err.value)


def test_charting_habits_are_read_from_the_yaml():
    cfg = load_synth_config(overrides={"charting.chartevents.on_the_hour.gcs": 0.25})
    assert cfg.charting.chartevents.on_the_hour.gcs == 0.25
    assert cfg.charting.chartevents.on_the_hour.vitals == 0.7  # the packaged value
    assert cfg.charting.stream_offsets.urine_route == 17


def test_the_packaged_catalogue_parses_into_the_module_records():
    records = catalog.parse_catalog(catalog.read_catalog_file())
    assert records["CHART"] == catalog.CHART
    assert records["CHART"]["hr"] == catalog.Item(
        220045, "Heart Rate", "HR", "chartevents", "Routine Vital Signs", "bpm", "Numeric", 60, 100
    )
    # the abbreviation defaults to the label; linksto comes from the section
    assert catalog.CHART["peep"].abbreviation == "PEEP set"
    assert catalog.OUTPUT["foley"].linksto == "outputevents"
    # numeric strings stay strings (a GSN keeps its leading zero)
    assert catalog.FORMULARY.escalation.gsn == "027769"
    assert catalog.FORMULARY.routine_orders[: len(catalog.FORMULARY.admission_orders)] == (
        catalog.FORMULARY.admission_orders
    )
    d_items = catalog.d_items_table()
    assert d_items.num_rows == len(set(d_items["itemid"].to_pylist()))


def _broken(edit) -> dict:
    doc = copy.deepcopy(catalog.read_catalog_file())
    edit(doc)
    return doc


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["chart"]["hr"].update(unit="bpm"), "chart.hr: missing keys [], unknown keys"),
        (lambda d: d["chart"]["hr"].pop("itemid"), "chart.hr: missing keys ['itemid']"),
        (lambda d: d["lab"]["ph"].pop("decimals"), "lab.ph: missing keys ['decimals']"),
        (
            lambda d: d["chart_filler"][0].update(text=["x"]),
            "chart_filler[0]: give exactly one of numeric, text",
        ),
        (
            lambda d: d["formulary"]["escalation"].update(dose="1"),
            "formulary.escalation: missing keys [], unknown keys ['dose']",
        ),
        (lambda d: d.update(labs={}), "top level: missing keys [], unknown keys ['labs']"),
    ],
)
def test_catalogue_mistakes_fail_naming_the_entry(edit, message):
    with pytest.raises(catalog.CatalogError, match=r"catalog\.yaml") as err:
        catalog.parse_catalog(_broken(edit))
    assert message in str(err.value)
