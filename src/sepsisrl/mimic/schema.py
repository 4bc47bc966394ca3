"""Column layout of the MIMIC-IV v3.1 tables that sepsisrl reads.

One source of truth for table names, module folders (``hosp``/``icu``), column order and
logical column types. The synthetic world writes exactly these columns in this order; the
ingest stage checks a user's files against the same definitions.

Logical types:
  ``int``       integer id or count (csv: digits; nullable ids are empty when missing)
  ``float``     numeric value
  ``str``       free text
  ``timestamp`` ``YYYY-MM-DD HH:MM:SS``
  ``date``      ``YYYY-MM-DD``
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

LOGICAL_TO_ARROW: dict[str, pa.DataType] = {
    "int": pa.int64(),
    "float": pa.float64(),
    "str": pa.string(),
    "timestamp": pa.timestamp("s"),
    "date": pa.date32(),
}


@dataclass(frozen=True)
class TableSchema:
    """A MIMIC-IV table: its module folder, name and ordered (column, logical type) pairs."""

    module: str
    name: str
    columns: tuple[tuple[str, str], ...]

    @property
    def column_names(self) -> list[str]:
        return [c for c, _ in self.columns]

    @property
    def relpath(self) -> str:
        """Path of the table below the MIMIC root, without extension (e.g. ``icu/chartevents``)."""
        return f"{self.module}/{self.name}"

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([(c, LOGICAL_TO_ARROW[t]) for c, t in self.columns])


def _t(module: str, name: str, spec: str) -> TableSchema:
    cols = []
    for item in spec.split(","):
        col, typ = item.strip().split(":")
        cols.append((col, typ))
    return TableSchema(module, name, tuple(cols))


TABLES: dict[str, TableSchema] = {
    t.name: t
    for t in [
        _t(
            "hosp",
            "patients",
            "subject_id:int, gender:str, anchor_age:int, anchor_year:int, "
            "anchor_year_group:str, dod:date",
        ),
        _t(
            "hosp",
            "admissions",
            "subject_id:int, hadm_id:int, admittime:timestamp, dischtime:timestamp, "
            "deathtime:timestamp, admission_type:str, admit_provider_id:str, "
            "admission_location:str, discharge_location:str, insurance:str, language:str, "
            "marital_status:str, race:str, edregtime:timestamp, edouttime:timestamp, "
            "hospital_expire_flag:int",
        ),
        _t(
            "hosp",
            "prescriptions",
            "subject_id:int, hadm_id:int, pharmacy_id:int, poe_id:str, poe_seq:int, "
            "order_provider_id:str, starttime:timestamp, stoptime:timestamp, drug_type:str, "
            "drug:str, formulary_drug_cd:str, gsn:str, ndc:str, prod_strength:str, form_rx:str, "
            "dose_val_rx:str, dose_unit_rx:str, form_val_disp:str, form_unit_disp:str, "
            "doses_per_24_hrs:float, route:str",
        ),
        _t(
            "hosp",
            "microbiologyevents",
            "microevent_id:int, subject_id:int, hadm_id:int, micro_specimen_id:int, "
            "order_provider_id:str, chartdate:timestamp, charttime:timestamp, spec_itemid:int, "
            "spec_type_desc:str, test_seq:int, storedate:timestamp, storetime:timestamp, "
            "test_itemid:int, test_name:str, org_itemid:int, org_name:str, isolate_num:int, "
            "quantity:str, ab_itemid:int, ab_name:str, dilution_text:str, "
            "dilution_comparison:str, dilution_value:float, interpretation:str, comments:str",
        ),
        _t(
            "hosp",
            "labevents",
            "labevent_id:int, subject_id:int, hadm_id:int, specimen_id:int, itemid:int, "
            "order_provider_id:str, charttime:timestamp, storetime:timestamp, value:str, "
            "valuenum:float, valueuom:str, ref_range_lower:float, ref_range_upper:float, "
            "flag:str, priority:str, comments:str",
        ),
        _t("hosp", "d_labitems", "itemid:int, label:str, fluid:str, category:str"),
        _t(
            "icu",
            "icustays",
            "subject_id:int, hadm_id:int, stay_id:int, first_careunit:str, last_careunit:str, "
            "intime:timestamp, outtime:timestamp, los:float",
        ),
        _t(
            "icu",
            "chartevents",
            "subject_id:int, hadm_id:int, stay_id:int, caregiver_id:int, charttime:timestamp, "
            "storetime:timestamp, itemid:int, value:str, valuenum:float, valueuom:str, "
            "warning:int",
        ),
        _t(
            "icu",
            "inputevents",
            "subject_id:int, hadm_id:int, stay_id:int, caregiver_id:int, starttime:timestamp, "
            "endtime:timestamp, storetime:timestamp, itemid:int, amount:float, amountuom:str, "
            "rate:float, rateuom:str, orderid:int, linkorderid:int, ordercategoryname:str, "
            "secondaryordercategoryname:str, ordercomponenttypedescription:str, "
            "ordercategorydescription:str, patientweight:float, totalamount:float, "
            "totalamountuom:str, isopenbag:int, continueinnextdept:int, statusdescription:str, "
            "originalamount:float, originalrate:float",
        ),
        _t(
            "icu",
            "outputevents",
            "subject_id:int, hadm_id:int, stay_id:int, caregiver_id:int, charttime:timestamp, "
            "storetime:timestamp, itemid:int, value:float, valueuom:str",
        ),
        _t(
            "icu",
            "d_items",
            "itemid:int, label:str, abbreviation:str, linksto:str, category:str, unitname:str, "
            "param_type:str, lownormalvalue:float, highnormalvalue:float",
        ),
    ]
}
