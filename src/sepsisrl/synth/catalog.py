"""Item dictionaries of the synthetic hospital (its ``d_items`` and ``d_labitems``).

The items themselves are data: ``catalog.yaml`` next to this module (shipped as package data)
lists every item with the ids, labels and units of MIMIC-IV (MetaVision). This module reads it
once, checks its keys, and exposes it as typed records:

- ``CHART``, ``INPUT``, ``OUTPUT``: items by key (``chartevents``, ``inputevents``,
  ``outputevents``); ``LAB``: lab items by key;
- ``GCS_EYE_TEXT``, ``GCS_VERBAL_TEXT``, ``GCS_MOTOR_TEXT`` (score -> charted text) and
  ``GCS_VERBAL_INTUBATED``;
- ``FILLER_ITEMS``, ``FILLER_WEIGHTS``, ``FILLER_VALUES``: unrelated ``chartevents`` items for
  MIMIC-like volume, their relative frequencies and values (``(mean, sd, decimals)`` or a tuple
  of texts); ``INPUT_FILLER``: unrelated ``inputevents`` items;
- ``FORMULARY`` (:class:`Formulary`): the drugs of ``prescriptions`` as the pharmacy orders
  them; ``SPECIMENS``, ``ORGANISMS``, ``ANTIBIOTICS_TESTED``: the codes of
  ``microbiologyevents``;
- :func:`d_items_table` and :func:`d_labitems_table`: the dictionary tables the world writes.

The world's catalogue is deliberately independent of the pipeline's configuration: the
pipeline must find its items in the data, as it would in a real MIMIC-IV download.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from importlib import resources
from typing import Any, NamedTuple

import pyarrow as pa
import yaml

#: the data file, in this package
CATALOG_FILE = "catalog.yaml"


class CatalogError(ValueError):
    """The catalogue file has a missing, unknown or mistyped entry."""


@dataclass(frozen=True)
class Item:
    itemid: int
    label: str
    abbreviation: str
    linksto: str
    category: str
    unitname: str | None
    param_type: str
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class LabItem:
    itemid: int
    label: str
    fluid: str
    category: str
    unit: str | None
    ref_low: float | None
    ref_high: float | None
    decimals: int


@dataclass(frozen=True)
class InputFiller:
    """An ``inputevents`` item charted as filler: pushes, oral intake, electrolytes."""

    item: Item
    weight: float  # relative frequency
    category: str  # ordercategoryname
    description: str  # ordercategorydescription
    amount_uom: str
    amounts: tuple[float, ...]  # typical charted amounts (drips: rates), drawn uniformly
    minutes: int  # endtime - starttime (drips: the typical row length)
    rate_uom: str | None = None  # drips only: the rate's unit
    amount_per_rate_hour: float = 0.0  # drips: amount per (rate unit x 1 h), per kg if per_kg
    per_kg: bool = False


class Drug(NamedTuple):
    """A drug order's columns of MIMIC-IV ``prescriptions`` (gsn "": none; 0 doses: none)."""

    drug: str
    formulary_drug_cd: str
    gsn: str
    ndc: str
    prod_strength: str
    dose_val_rx: str
    dose_unit_rx: str
    doses_per_24_hrs: int
    route: str


@dataclass(frozen=True)
class Formulary:
    """The drugs the synthetic pharmacy orders (see ``formulary`` in ``catalog.yaml``)."""

    empiric_regimens: list[list[Drug]]  # one drawn per infection work-up
    enteral: tuple[str, ...]  # empiric antibiotics that also come as an enteral form
    escalation: Drug  # second antibiotic for a resistant infection
    prophylaxis: Drug
    topical: list[Drug]
    topical_polymyxin: Drug  # its name matches a systemic antibiotic: only its route differs
    admission_orders: list[Drug]
    routine_orders: list[Drug]  # the admission orders, then other routine orders


class Specimen(NamedTuple):
    spec_itemid: int
    spec_type_desc: str
    test_itemid: int
    test_name: str


class Coded(NamedTuple):
    """An organism or an antibiotic of ``microbiologyevents``."""

    itemid: int
    name: str


# ---------------------------------------------------------------------------- loading
def _keys(entry: Any, where: str, required: set[str], optional: set[str] = frozenset()) -> dict:
    if not isinstance(entry, dict):
        raise CatalogError(f"{CATALOG_FILE}: {where}: expected a mapping, found {entry!r}")
    missing = required - set(entry)
    unknown = set(entry) - required - optional
    if missing or unknown:
        raise CatalogError(
            f"{CATALOG_FILE}: {where}: missing keys {sorted(missing)}, unknown keys "
            f"{sorted(unknown)} (expected {sorted(required)}, optional {sorted(optional)})"
        )
    return entry


_ITEM_KEYS = {"itemid", "label", "category", "unitname", "param_type"}


def _item(entry: Any, linksto: str, where: str) -> Item:
    e = _keys(entry, where, _ITEM_KEYS, {"abbreviation", "low", "high"})
    return Item(
        itemid=e["itemid"],
        label=e["label"],
        abbreviation=e.get("abbreviation", e["label"]),
        linksto=linksto,
        category=e["category"],
        unitname=e["unitname"],
        param_type=e["param_type"],
        low=e.get("low"),
        high=e.get("high"),
    )


def _items(section: Any, linksto: str, where: str) -> dict[str, Item]:
    return {k: _item(v, linksto, f"{where}.{k}") for k, v in _mapping(section, where).items()}


def _mapping(section: Any, where: str) -> dict:
    if not isinstance(section, dict):
        raise CatalogError(f"{CATALOG_FILE}: {where}: expected a mapping, found {section!r}")
    return section


def _chart_filler(entry: Any, where: str) -> tuple[Item, float, tuple]:
    e = _keys(entry, where, {"item", "weight"}, {"numeric", "text"})
    if ("numeric" in e) == ("text" in e):
        raise CatalogError(f"{CATALOG_FILE}: {where}: give exactly one of numeric, text")
    if "numeric" in e and len(e["numeric"]) != 3:
        raise CatalogError(
            f"{CATALOG_FILE}: {where}.numeric: expected [mean, sd, decimals], found {e['numeric']}"
        )
    values = tuple(e["numeric"] if "numeric" in e else e["text"])
    return _item(e["item"], "chartevents", f"{where}.item"), e["weight"], values


def _input_filler(entry: Any, where: str) -> InputFiller:
    names = {f.name for f in fields(InputFiller)}
    optional = {"rate_uom", "amount_per_rate_hour", "per_kg"}
    e = _keys(entry, where, names - optional, optional)
    return InputFiller(
        **{
            **e,
            "item": _item(e["item"], "inputevents", f"{where}.item"),
            "amounts": tuple(e["amounts"]),
        }
    )


def _lab(entry: Any, where: str) -> LabItem:
    return LabItem(**_keys(entry, where, {f.name for f in fields(LabItem)}))


def _record(cls: type, entry: Any, where: str) -> Any:
    return cls(**_keys(entry, where, set(cls._fields)))


def _records(cls: type, entries: Any, where: str) -> list:
    if not isinstance(entries, list):
        raise CatalogError(f"{CATALOG_FILE}: {where}: expected a list, found {entries!r}")
    return [_record(cls, e, f"{where}[{i}]") for i, e in enumerate(entries)]


def _formulary(section: Any) -> Formulary:
    names = {f.name for f in fields(Formulary)}
    f = _keys(section, "formulary", names)
    admission = _records(Drug, f["admission_orders"], "formulary.admission_orders")
    return Formulary(
        empiric_regimens=[
            _records(Drug, reg, f"formulary.empiric_regimens[{i}]")
            for i, reg in enumerate(f["empiric_regimens"])
        ],
        enteral=tuple(f["enteral"]),
        escalation=_record(Drug, f["escalation"], "formulary.escalation"),
        prophylaxis=_record(Drug, f["prophylaxis"], "formulary.prophylaxis"),
        topical=_records(Drug, f["topical"], "formulary.topical"),
        topical_polymyxin=_record(Drug, f["topical_polymyxin"], "formulary.topical_polymyxin"),
        admission_orders=admission,
        routine_orders=[
            *admission,
            *_records(Drug, f["routine_orders"], "formulary.routine_orders"),
        ],
    )


def read_catalog_file() -> Any:
    """The packaged ``catalog.yaml``, parsed but not checked."""
    text = resources.files("sepsisrl.synth").joinpath(CATALOG_FILE).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def parse_catalog(doc: Any) -> dict[str, Any]:
    """Check a parsed catalogue and build its records (keys: the module's constants); a
    missing, unknown or misplaced key raises :class:`CatalogError` naming where it is."""
    doc = _keys(
        doc,
        "top level",
        {
            "chart",
            "gcs_text",
            "chart_filler",
            "input",
            "input_filler",
            "output",
            "lab",
            "formulary",
            "microbiology",
        },
    )
    micro = _keys(
        doc["microbiology"], "microbiology", {"specimens", "organisms", "antibiotics_tested"}
    )
    gcs = _keys(doc["gcs_text"], "gcs_text", {"eye", "verbal", "verbal_intubated", "motor"})
    filler = [_chart_filler(e, f"chart_filler[{i}]") for i, e in enumerate(doc["chart_filler"])]
    return {
        "CHART": _items(doc["chart"], "chartevents", "chart"),
        "GCS_EYE_TEXT": dict(gcs["eye"]),
        "GCS_VERBAL_TEXT": dict(gcs["verbal"]),
        "GCS_VERBAL_INTUBATED": gcs["verbal_intubated"],
        "GCS_MOTOR_TEXT": dict(gcs["motor"]),
        "FILLER_ITEMS": [f[0] for f in filler],
        "FILLER_WEIGHTS": [f[1] for f in filler],
        "FILLER_VALUES": [f[2] for f in filler],
        "INPUT": _items(doc["input"], "inputevents", "input"),
        "INPUT_FILLER": [
            _input_filler(e, f"input_filler[{i}]") for i, e in enumerate(doc["input_filler"])
        ],
        "OUTPUT": _items(doc["output"], "outputevents", "output"),
        "LAB": {k: _lab(v, f"lab.{k}") for k, v in _mapping(doc["lab"], "lab").items()},
        "FORMULARY": _formulary(doc["formulary"]),
        "SPECIMENS": {
            k: _record(Specimen, v, f"microbiology.specimens.{k}")
            for k, v in _mapping(micro["specimens"], "microbiology.specimens").items()
        },
        "ORGANISMS": _records(Coded, micro["organisms"], "microbiology.organisms"),
        "ANTIBIOTICS_TESTED": _records(
            Coded, micro["antibiotics_tested"], "microbiology.antibiotics_tested"
        ),
    }


_CATALOG = parse_catalog(read_catalog_file())
CHART: dict[str, Item] = _CATALOG["CHART"]
GCS_EYE_TEXT: dict[int, str] = _CATALOG["GCS_EYE_TEXT"]
GCS_VERBAL_TEXT: dict[int, str] = _CATALOG["GCS_VERBAL_TEXT"]
GCS_VERBAL_INTUBATED: str = _CATALOG["GCS_VERBAL_INTUBATED"]
GCS_MOTOR_TEXT: dict[int, str] = _CATALOG["GCS_MOTOR_TEXT"]
FILLER_ITEMS: list[Item] = _CATALOG["FILLER_ITEMS"]
FILLER_WEIGHTS: list[float] = _CATALOG["FILLER_WEIGHTS"]
FILLER_VALUES: list[tuple] = _CATALOG["FILLER_VALUES"]
INPUT: dict[str, Item] = _CATALOG["INPUT"]
INPUT_FILLER: list[InputFiller] = _CATALOG["INPUT_FILLER"]
OUTPUT: dict[str, Item] = _CATALOG["OUTPUT"]
LAB: dict[str, LabItem] = _CATALOG["LAB"]
FORMULARY: Formulary = _CATALOG["FORMULARY"]
SPECIMENS: dict[str, Specimen] = _CATALOG["SPECIMENS"]  # by kind: blood, urine, sputum, mrsa
ORGANISMS: list[Coded] = _CATALOG["ORGANISMS"]
ANTIBIOTICS_TESTED: list[Coded] = _CATALOG["ANTIBIOTICS_TESTED"]


# ---------------------------------------------------------------------------- tables
def d_items_table() -> pa.Table:
    items = (
        list(CHART.values())
        + FILLER_ITEMS
        + list(INPUT.values())
        + [f.item for f in INPUT_FILLER]
        + list(OUTPUT.values())
    )
    items = sorted({i.itemid: i for i in items}.values(), key=lambda i: i.itemid)
    return pa.table(
        {
            "itemid": pa.array([i.itemid for i in items], pa.int64()),
            "label": [i.label for i in items],
            "abbreviation": [i.abbreviation for i in items],
            "linksto": [i.linksto for i in items],
            "category": [i.category for i in items],
            "unitname": pa.array([i.unitname for i in items], pa.string()),
            "param_type": [i.param_type for i in items],
            "lownormalvalue": pa.array([i.low for i in items], pa.float64()),
            "highnormalvalue": pa.array([i.high for i in items], pa.float64()),
        }
    )


def d_labitems_table() -> pa.Table:
    items = sorted(LAB.values(), key=lambda i: i.itemid)
    return pa.table(
        {
            "itemid": pa.array([i.itemid for i in items], pa.int64()),
            "label": [i.label for i in items],
            "fluid": [i.fluid for i in items],
            "category": [i.category for i in items],
        }
    )
