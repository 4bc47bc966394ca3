"""The build's state function, run at a decision time over the rows charted so far.

At a decision time the due stays' MIMIC rows charted so far go through exactly the build's
stages and SQL files: ``run_ingest`` (same column selection and casts), ``run_measurements``
(units, validity, GCS, urine, infusions, weights) and ``dataset/state.py`` (windows, forward
fill, cumulative doses, imputation and z-scores with the build's train statistics). Nothing
of the build's is refit and no feature has a second implementation.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sepsisrl.dataset.config import BuildConfig
from sepsisrl.dataset.ingest import connect, run_ingest
from sepsisrl.dataset.measurements import run_measurements
from sepsisrl.dataset.state import (
    FrozenStatistics,
    States,
    compute_states,
    cumulative_before,
    step_treatment,
)
from sepsisrl.dataset.tables import MemoryTables
from sepsisrl.mimic.schema import TABLES

_KEY = {
    "chartevents": "stay_id",
    "inputevents": "stay_id",
    "outputevents": "stay_id",
    "icustays": "stay_id",
    # the patient's labs: dataset/sql/lab_measurements.sql attributes them to the stay (by
    # admission or patient, labs.attribution) at their labs.time, as in the build
    "labevents": "subject_id",
    "patients": "subject_id",
    "admissions": "hadm_id",
}
_FAR_FUTURE = np.datetime64("2999-01-01T00:00:00", "us")


class _RegisteredSource:
    """A MIMIC source whose tables are Arrow tables registered on the rollout's connection."""

    kind = "synthetic"
    version = "3.1"
    root = Path("<rollout>")

    def relation(self, name: str) -> str:
        return f"src_{name}"


class OnlineStateFunction:
    """States of due stays at their decision times, from the rows charted so far."""

    def __init__(self, cfg: BuildConfig, stats: FrozenStatistics, workdir: Path) -> None:
        self.cfg = cfg
        self.stats = stats
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.con = connect(cfg, self.workdir)
        self.con.execute("SET threads = 1")
        self.src = _RegisteredSource()
        for name in ("prescriptions", "microbiologyevents"):
            self.con.register(f"src_{name}", TABLES[name].arrow_schema().empty_table())
        self.ingest, self.meas = MemoryTables("ing"), MemoryTables("meas")
        # state computations on a second connection to the same database, where the stage
        # tables appear under the names the state SQL reads
        self.state_con = self.con.cursor()
        self.calls = 0

    def close(self) -> None:
        self.state_con.close()
        self.con.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __call__(
        self,
        charted: dict[str, pa.Table],
        static: dict[str, pa.Table],
        grid: pa.Table,
        cohort: pa.Table,
    ) -> tuple[States, pa.Table]:
        """States at every step of ``grid`` and the treatment of its action windows.

        ``charted``: chartevents, labevents, inputevents, outputevents rows so far (any stays);
        ``static``: patients, admissions, icustays rows (``icustays.outtime`` null while the
        stay is in the ICU); ``grid``: (stay_id, subject_id, step, tau) steps 0..k of each due
        stay, sorted; ``cohort``: (stay_id, age, onset_time, intime) of the episodes.
        """
        self.calls += 1
        con = self.con
        stays = pa.array(np.unique(grid["stay_id"].to_numpy()), pa.int64())
        subjects = pa.array(np.unique(grid["subject_id"].to_numpy()), pa.int64())
        icu = static["icustays"].filter(pc.is_in(static["icustays"]["stay_id"], stays))
        hadms = icu["hadm_id"].combine_chunks()
        ids = {"stay_id": stays, "subject_id": subjects, "hadm_id": hadms}
        for name in ("chartevents", "labevents", "inputevents", "outputevents"):
            con.register(f"src_{name}", _rows(charted[name], _KEY[name], ids))
        for name in ("patients", "admissions"):
            con.register(f"src_{name}", _rows(static[name], _KEY[name], ids))
        # still in the ICU: no outtime yet, so every row charted so far belongs to the stay
        out = icu["outtime"].cast(pa.timestamp("us"))
        icu = icu.set_column(
            icu.schema.get_field_index("outtime"),
            "outtime",
            pc.fill_null(out, pa.scalar(_FAR_FUTURE, pa.timestamp("us"))).cast(
                icu.schema.field("outtime").type
            ),
        )
        con.register("src_icustays", icu)
        run_ingest(self.src, self.cfg, self.ingest, check_dictionaries=False, con=con)
        run_measurements(self.ingest, self.cfg, self.meas, con=con)

        sc = self.state_con
        if self.calls == 1:
            for view in ("measurements", "urine", "infusions"):
                sc.execute(f"CREATE VIEW {view} AS SELECT * FROM {self.meas.relation(view)}")
        sc.register("steps", grid)
        sc.register("episodes", _episodes(grid))
        treatment = step_treatment(sc, self.cfg)
        stay = treatment["stay_id"].to_numpy()
        vaso = treatment["vaso_ne_rate"].to_numpy()
        fluid = treatment["fluid_ml"].to_numpy()
        hours = self.cfg.episodes.step_hours
        cumulative = pa.table(
            {
                "stay_id": stay,
                "step": treatment["step"].to_numpy(),
                "cum_iv_fluid_ml_before": cumulative_before(stay, fluid),
                "cum_vaso_dose_before": cumulative_before(stay, vaso * hours),
                # the action bins of each window (the running_treatment state reads step k-1's)
                "vaso_bin": self.stats.vaso_bins.transform(vaso),
                "fluid_bin": self.stats.fluid_bins.transform(fluid),
            }
        )
        weights = sc.sql(f"SELECT * FROM {self.meas.relation('weights')}").to_arrow_table()
        states = compute_states(
            sc, grid, {"age": cohort, "weights": weights}, cumulative, self.cfg,
            frozen=self.stats.prep,
        )  # fmt: skip
        return states, treatment


def _rows(tab: pa.Table, key: str, ids: dict[str, pa.Array]) -> pa.Table:
    return tab.filter(pc.is_in(tab[key], ids[key]))


def _episodes(grid: pa.Table) -> pa.Table:
    """(stay_id, tau0, tau_last, n_steps) of each stay of a grid sorted by stay and step."""
    stay = grid["stay_id"].to_numpy()
    first = np.ones(len(stay), dtype=bool)
    first[1:] = stay[1:] != stay[:-1]
    last = np.ones(len(stay), dtype=bool)
    last[:-1] = stay[1:] != stay[:-1]
    tau = grid["tau"]
    return pa.table(
        {
            "stay_id": stay[first],
            "tau0": tau.filter(pa.array(first)),
            "tau_last": tau.filter(pa.array(last)),
            "n_steps": np.diff(np.append(np.flatnonzero(first), len(stay))),
        }
    )
