"""Tiny hand-made inputs for the ``sepsisrl build`` stages (measurements, sepsis).

A test describes a few ICU stays with :class:`IngestTables` (rows in the layout ``run_ingest``
writes to ``ingest/``), then :func:`build_sepsis` writes them as Parquet and runs the real
stages: ``run_measurements`` into ``measurements/`` and ``run_sepsis`` into ``sepsis/``.
Times are given in hours from the stay's ``intime``; every fixture stay is admitted on the hour
(:data:`T0`), so hour ``h`` of the SOFA grid is ``[T0 + h, T0 + h + 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sepsisrl.dataset.config import BuildConfig, load_build_config
from sepsisrl.dataset.measurements import run_measurements
from sepsisrl.dataset.sepsis import run_sepsis

#: intime of every fixture stay (on the hour, so SOFA hour h starts at T0 + h hours)
T0 = datetime(2150, 3, 1, 8, 0)

TS = pa.timestamp("us")

# MIMIC-IV item ids used by the fixtures (configs/build.yaml)
HEART_RATE = 220045
MAP_ARTERIAL = 220052
TEMPERATURE_C = 223762
TEMPERATURE_F = 223761
SPO2 = 220277
FIO2 = 223835
WEIGHT_KG = 226512
WEIGHT_LB = 226531
GCS_EYE = 220739
GCS_VERBAL = 223900
GCS_MOTOR = 223901
VENTILATOR_MODE = 223849
VENTILATOR_MODE_HAMILTON = 229314
O2_DEVICE = 226732
PAO2 = 50821
FIO2_BLOOD_GAS = 50816
SPECIMEN_TYPE = 52033
CREATININE = 50912
BILIRUBIN = 50885
PLATELETS = 51265
URINE_FOLEY = 226559
GU_IRRIGANT_IN = 227488
GU_IRRIGANT_OUT = 227489
NOREPINEPHRINE = 221906
EPINEPHRINE = 221289
PHENYLEPHRINE = 221749
DOPAMINE = 221662
VASOPRESSIN = 222315
DOBUTAMINE = 221653
NACL_09 = 225158

SCHEMAS: dict[str, pa.Schema] = {
    "icustays": pa.schema(
        [
            ("subject_id", pa.int64()),
            ("hadm_id", pa.int64()),
            ("stay_id", pa.int64()),
            ("intime", TS),
            ("outtime", TS),
        ]
    ),
    "patients": pa.schema(
        [
            ("subject_id", pa.int64()),
            ("gender", pa.string()),
            ("anchor_age", pa.int64()),
            ("anchor_year", pa.int64()),
            ("dod", pa.date32()),
        ]
    ),
    "admissions": pa.schema(
        [
            ("subject_id", pa.int64()),
            ("hadm_id", pa.int64()),
            ("admittime", TS),
            ("dischtime", TS),
            ("deathtime", TS),
        ]
    ),
    "chart": pa.schema(
        [
            ("stay_id", pa.int64()),
            ("charttime", TS),
            ("itemid", pa.int32()),
            ("valuenum", pa.float64()),
            ("value", pa.string()),
        ]
    ),
    "labs": pa.schema(
        [
            ("subject_id", pa.int64()),
            ("hadm_id", pa.int64()),
            ("specimen_id", pa.int64()),
            ("charttime", TS),
            ("storetime", TS),
            ("itemid", pa.int32()),
            ("valuenum", pa.float64()),
            ("value", pa.string()),
        ]
    ),
    "inputs": pa.schema(
        [
            ("stay_id", pa.int64()),
            ("starttime", TS),
            ("endtime", TS),
            ("itemid", pa.int32()),
            ("amount", pa.float64()),
            ("amountuom", pa.string()),
            ("rate", pa.float64()),
            ("rateuom", pa.string()),
            ("patientweight", pa.float64()),
            ("ordercomponenttypedescription", pa.string()),
        ]
    ),
    "outputs": pa.schema(
        [
            ("stay_id", pa.int64()),
            ("charttime", TS),
            ("itemid", pa.int32()),
            ("value", pa.float64()),
        ]
    ),
    "antibiotics": pa.schema(
        [
            ("subject_id", pa.int64()),
            ("hadm_id", pa.int64()),
            ("starttime", TS),
            ("drug", pa.string()),
            ("route", pa.string()),
        ]
    ),
    "cultures": pa.schema(
        [
            ("subject_id", pa.int64()),
            ("hadm_id", pa.int64()),
            ("micro_specimen_id", pa.int64()),
            ("charttime", TS),
            ("chartdate", pa.date32()),
        ]
    ),
}


def at(hours: float, intime: datetime = T0) -> datetime:
    """The time ``hours`` after ``intime``."""
    return intime + timedelta(hours=hours)


def write_parquet(path: Path, schema: pa.Schema, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` (dicts keyed by column; absent keys are null) with ``schema``."""
    columns = {name: [r.get(name) for r in rows] for name in schema.names}
    pq.write_table(pa.table(columns, schema=schema), path)
    return path


def read_rows(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


@dataclass(frozen=True)
class Stay:
    stay_id: int
    subject_id: int
    hadm_id: int
    intime: datetime


@dataclass
class IngestTables:
    """Rows of the ``ingest/`` tables; helpers take times in hours from the stay's intime."""

    rows: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {name: [] for name in SCHEMAS}
    )
    _next: int = 1
    _specimen: int = 1

    def stay(
        self, *, los_hours: float = 48, intime: datetime = T0, subject: Stay | None = None
    ) -> Stay:
        """A new ICU stay (its own patient and admission unless ``subject`` is given)."""
        n = self._next
        self._next += 1
        subject_id = subject.subject_id if subject else 10_000_000 + n
        hadm_id = 20_000_000 + n
        s = Stay(stay_id=30_000_000 + n, subject_id=subject_id, hadm_id=hadm_id, intime=intime)
        self.rows["icustays"].append(
            {
                "subject_id": subject_id,
                "hadm_id": hadm_id,
                "stay_id": s.stay_id,
                "intime": intime,
                "outtime": at(los_hours, intime),
            }
        )
        if subject is None:
            self.rows["patients"].append(
                {
                    "subject_id": subject_id,
                    "gender": "F",
                    "anchor_age": 60,
                    "anchor_year": intime.year,
                }
            )
        self.rows["admissions"].append(
            {
                "subject_id": subject_id,
                "hadm_id": hadm_id,
                "admittime": at(-2, intime),
                "dischtime": at(los_hours + 24, intime),
            }
        )
        return s

    def chart(
        self,
        s: Stay,
        hours: float,
        itemid: int,
        valuenum: float | None = None,
        value: str | None = None,
    ) -> None:
        if value is None and valuenum is not None:
            value = f"{valuenum:g}"
        self.rows["chart"].append(
            {
                "stay_id": s.stay_id,
                "charttime": at(hours, s.intime),
                "itemid": itemid,
                "valuenum": valuenum,
                "value": value,
            }
        )

    def gcs(
        self, s: Stay, hours: float, eye: int, verbal: int | None, motor: int, verbal_text=None
    ) -> None:
        """The three GCS components charted together (as MIMIC-IV does)."""
        self.chart(s, hours, GCS_EYE, eye)
        self.chart(s, hours, GCS_VERBAL, verbal, verbal_text)
        self.chart(s, hours, GCS_MOTOR, motor)

    def lab(
        self,
        s: Stay,
        hours: float,
        itemid: int,
        valuenum: float,
        specimen_type: str | None = None,
        *,
        resulted_after: float | None = 1.0,
        hadm_id: int | str | None = "stay",
        also: tuple[tuple[int, float], ...] = (),
    ) -> None:
        """A lab drawn ``hours`` after intime, resulted (``storetime``) ``resulted_after`` hours
        later (None: no storetime); ``hadm_id``: the stay's (default) or another (None: drawn
        outside an admission, e.g. in the emergency department); ``also``: more (itemid,
        value) of the specimen."""
        specimen_id = self._specimen
        self._specimen += 1
        hadm = s.hadm_id if hadm_id == "stay" else hadm_id
        base = {"subject_id": s.subject_id, "hadm_id": hadm, "specimen_id": specimen_id}
        t = at(hours, s.intime)
        stored = None if resulted_after is None else at(hours + resulted_after, s.intime)
        for item, value in ((itemid, valuenum), *also):
            self.rows["labs"].append(
                {**base, "charttime": t, "storetime": stored, "itemid": item, "valuenum": value}
            )
        if specimen_type is not None:
            self.rows["labs"].append(
                {
                    **base,
                    "charttime": t,
                    "storetime": stored,
                    "itemid": SPECIMEN_TYPE,
                    "value": specimen_type,
                }
            )

    def infusion(
        self,
        s: Stay,
        start: float,
        end: float,
        itemid: int,
        *,
        rate: float | None = None,
        rateuom: str | None = None,
        amount: float | None = None,
        amountuom: str | None = None,
        weight: float | None = 80.0,
        component: str | None = "Main order parameter",
    ) -> None:
        """``component``: inputevents ordercomponenttypedescription ('Mixed solution' for the
        diluent of a drug)."""
        self.rows["inputs"].append(
            {
                "stay_id": s.stay_id,
                "starttime": at(start, s.intime),
                "endtime": at(end, s.intime),
                "itemid": itemid,
                "amount": amount,
                "amountuom": amountuom,
                "rate": rate,
                "rateuom": rateuom,
                "patientweight": weight,
                "ordercomponenttypedescription": component,
            }
        )

    def output(self, s: Stay, hours: float, itemid: int, value: float) -> None:
        self.rows["outputs"].append(
            {
                "stay_id": s.stay_id,
                "charttime": at(hours, s.intime),
                "itemid": itemid,
                "value": value,
            }
        )

    def antibiotic(
        self, s: Stay, hours: float, drug: str = "Vancomycin", route: str = "IV"
    ) -> None:
        self.rows["antibiotics"].append(
            {
                "subject_id": s.subject_id,
                "hadm_id": s.hadm_id,
                "starttime": at(hours, s.intime),
                "drug": drug,
                "route": route,
            }
        )

    def culture(self, s: Stay, hours: float | None, chartdate: date | None = None) -> None:
        """A culture at ``hours`` after intime, or a date-only one (``hours=None``)."""
        t = None if hours is None else at(hours, s.intime)
        day = chartdate if chartdate is not None else t.date()
        specimen_id = self._specimen
        self._specimen += 1
        self.rows["cultures"].append(
            {
                "subject_id": s.subject_id,
                "hadm_id": s.hadm_id,
                "micro_specimen_id": specimen_id,
                "charttime": t,
                "chartdate": day,
            }
        )

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for name, schema in SCHEMAS.items():
            write_parquet(folder / f"{name}.parquet", schema, self.rows[name])
        return folder


@dataclass(frozen=True)
class Built:
    """Paths and audits of a fixture build."""

    ingest: Path
    measurements: Path
    sepsis: Path | None
    measurements_audit: dict[str, Any]
    sepsis_audit: dict[str, Any] | None

    def rows(self, stage: str, table: str) -> list[dict[str, Any]]:
        return read_rows(getattr(self, stage) / f"{table}.parquet")


def _config(cfg: BuildConfig | None) -> BuildConfig:
    # two threads and a small memory limit: the fixtures are a few rows
    base = cfg if cfg is not None else load_build_config()
    return base.model_copy(
        update={"engine": base.engine.model_copy(update={"threads": 2, "memory_limit": "1GB"})}
    )


def build_measurements(tables: IngestTables, root: Path, cfg: BuildConfig | None = None) -> Built:
    """Write ``tables`` to ``root/ingest`` and run the measurements stage."""
    cfg = _config(cfg)
    ingest = tables.write(root / "ingest")
    meas = root / "measurements"
    meas.mkdir(parents=True, exist_ok=True)
    audit = run_measurements(ingest, cfg, meas)
    return Built(ingest, meas, None, audit, None)


def build_sepsis(tables: IngestTables, root: Path, cfg: BuildConfig | None = None) -> Built:
    """Write ``tables``, run the measurements stage, then the sepsis stage."""
    cfg = _config(cfg)
    built = build_measurements(tables, root, cfg)
    out = root / "sepsis"
    out.mkdir(parents=True, exist_ok=True)
    audit = run_sepsis(built.ingest, built.measurements, cfg, out)
    return Built(built.ingest, built.measurements, out, built.measurements_audit, audit)
