"""What every table's charting shares: the chunk's context, text codes, row accumulation and
Arrow conversion."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sepsisrl.mimic.schema import TABLES
from sepsisrl.synth.config import SynthConfig
from sepsisrl.synth.population import SECONDS_PER_HOUR, Stays

HOUR = SECONDS_PER_HOUR
MISSING_TIME = np.iinfo(np.int64).min


class TextDictionary:
    """Maps strings to small integer codes so text columns are built as dictionary arrays."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self._index: dict[str, int] = {}

    def code(self, text: str) -> int:
        if text not in self._index:
            self._index[text] = len(self.values)
            self.values.append(text)
        return self._index[text]

    def codes(self, texts: list[str] | tuple[str, ...]) -> np.ndarray:
        return np.array([self.code(t) for t in texts], dtype=np.int32)

    def to_arrow(self, codes: np.ndarray) -> pa.Array:
        """String array; code -1 becomes null."""
        codes = np.asarray(codes, dtype=np.int32)
        mask = codes < 0
        idx = pa.array(np.where(mask, 0, codes), pa.int32(), mask=mask)
        dictionary = pa.array(self.values if self.values else [""], pa.string())
        return pc.take(dictionary, idx)


def float_array(x: np.ndarray) -> pa.Array:
    x = np.asarray(x, dtype=np.float64)
    return pa.array(x, pa.float64(), mask=np.isnan(x))


def time_array(t: np.ndarray) -> pa.Array:
    t = np.asarray(t, dtype=np.int64)
    mask = t == MISSING_TIME
    return pa.array(np.where(mask, 0, t), pa.timestamp("s"), mask=mask)


def int_array(x: np.ndarray, missing: int | None = None) -> pa.Array:
    x = np.asarray(x, dtype=np.int64)
    if missing is None:
        return pa.array(x, pa.int64())
    mask = x == missing
    return pa.array(np.where(mask, 0, x), pa.int64(), mask=mask)


def str_const(value: str | None, n: int) -> pa.Array:
    if value is None:
        return pa.nulls(n, pa.string())
    return pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(n, dtype=np.int32)), pa.array([value])
    ).cast(pa.string())


def round_to(x: np.ndarray, decimals: np.ndarray | int) -> np.ndarray:
    scale = np.power(10.0, decimals)
    return np.round(np.asarray(x, dtype=np.float64) * scale) / scale


def num_to_str(values: pa.Array) -> pa.Array:
    return pc.cast(values, pa.string())


def icu_event_ids(st: Stays, stay: np.ndarray, caregiver: np.ndarray) -> dict[str, pa.Array]:
    """The leading columns of an ICU event table (``chartevents``, ``inputevents``,
    ``outputevents``): the stay's subject, admission and stay ids, and who charted the row."""
    return {
        "subject_id": int_array(st.subject_id[stay]),
        "hadm_id": int_array(st.hadm_id[stay]),
        "stay_id": int_array(st.stay_id[stay]),
        "caregiver_id": int_array(caregiver),
    }


def arrow_table(name: str, columns: dict[str, pa.Array]) -> pa.Table:
    schema = TABLES[name].arrow_schema()
    arrays = []
    n = None
    for f in schema:
        col = columns.get(f.name)
        if col is None:
            if n is None:
                n = len(next(iter(columns.values())))
            col = pa.nulls(n, f.type)
        elif not isinstance(col, pa.Array | pa.ChunkedArray):
            col = pa.array(col)
        if col.type != f.type:
            col = col.cast(f.type)
        arrays.append(col)
    return pa.Table.from_arrays(arrays, schema=schema)


@dataclass
class Events:
    """Accumulates long-format event rows as NumPy parts, then concatenates them."""

    parts: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def add(self, **cols: np.ndarray) -> None:
        n = next(len(v) for v in map(np.asarray, cols.values()) if v.ndim > 0)
        for k, v in cols.items():
            arr = np.asarray(v)
            if arr.ndim == 0:
                arr = np.full(n, arr)
            self.parts.setdefault(k, []).append(arr)

    def concat(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.parts.items()}


@dataclass
class ChartContext:
    """What charting needs about the chunk, plus the id bases that keep ids globally unique."""

    cfg: SynthConfig
    stays: Stays
    hourly: dict[str, np.ndarray]
    admittime: np.ndarray
    intime: np.ndarray
    outtime: np.ndarray
    attending_provider: list[str]
    rng: np.random.Generator
    id_base: int  # chunk-specific base for row ids (labevent_id, orderid, ...)
    text: TextDictionary = field(default_factory=TextDictionary)
    #: urine collected but not yet charted, per stay; set when charting hour by hour
    urine_carry: np.ndarray | None = None
    #: added to row ids (specimen, labevent, order ids) so that charting hour by hour, one
    #: call per hour, never repeats an id; 0 when a whole chunk is charted at once
    id_offset: int = 0

    def times(self) -> np.ndarray:
        h = self.hourly
        return self.admittime[h["stay"]] + h["h"].astype(np.int64) * HOUR

    def before_icu_end(
        self, cols: dict[str, np.ndarray], time_key: str = "t"
    ) -> dict[str, np.ndarray]:
        """Drop rows charted after the stay ended (ICU discharge or death within the hour)."""
        keep = cols[time_key] <= self.outtime[cols["stay"]]
        return {k: v[keep] for k, v in cols.items()}


def stay_major(H: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """``rows`` ordered by (stay, hour): the simulator records hour-major, but runs of an
    infusion and urine collected between charts are sequences within a stay."""
    return rows[np.lexsort((H["h"][rows], H["stay"][rows]))]
