"""The rollout's store of charted rows: selecting a few stays' rows reads an index, and gives
exactly the rows (and order) that filtering every kept row would."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sepsisrl.dataset.config import load_build_config
from sepsisrl.dataset.ingest import CHARTED_COLUMNS, charted_item_ids
from sepsisrl.mimic.schema import TABLES
from sepsisrl.truth.rollout import _concat_or_empty, _KeyedRows


def test_selection_equals_filtering_every_row_in_order():
    rng = np.random.default_rng(3)
    rows = _KeyedRows("stay_id")
    parts = []
    for hour in range(45):  # 45 hourly parts: segments of levels 5, 3, 2 and 0
        n = int(rng.integers(0, 40))
        part = pa.table(
            {
                "stay_id": rng.integers(100, 130, n),
                "seq": np.arange(n) + 1000 * hour,  # the charting order
            }
        )
        if n:
            rows.add(part)
            parts.append(part)
    assert len(rows.segments) <= 6
    every = pa.concat_tables(parts)
    for wanted in ([], [100], [101, 117, 129], list(range(100, 130)), [99, 131]):
        want = np.array(wanted, dtype=np.int64)
        got = rows.select(want)
        expect = every.filter(pc.is_in(every["stay_id"], pa.array(want, pa.int64())))
        seq = pa.concat_tables(got)["seq"].to_pylist() if got else []
        assert seq == expect["seq"].to_pylist()
    assert pa.concat_tables(rows.all())["seq"].to_pylist() == every["seq"].to_pylist()


def test_kept_columns_and_items_are_the_ingests():
    cfg = load_build_config()
    items = charted_item_ids(cfg)
    for name, columns in CHARTED_COLUMNS.items():
        schema = TABLES[name].arrow_schema()
        assert set(columns) <= set(schema.names), name
        assert items[name] and all(isinstance(i, int) for i in items[name])
        empty = _concat_or_empty(name, [])
        assert empty.num_rows == 0 and empty.column_names == list(columns)
