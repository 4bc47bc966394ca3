"""The build's state function, run at a decision time over the rows charted so far.

At a decision time the due stays' MIMIC rows charted so far go through exactly the build's
stages and SQL files: ``run_ingest`` (same column selection and casts), ``run_measurements``
(units, validity, GCS, urine, infusions, weights) and ``dataset/state.py`` (windows, forward
fill, cumulative doses, imputation and z-scores with the build's train statistics). Nothing
of the build's is refit and no feature has a second implementation. Only the tables a state
reads are computed (no prescriptions, cultures, patients or admissions: the onset is the
population's; the ventilation periods only when a SOFA is asked for): a call's cost is mostly
a fixed cost per SQL statement, whatever the number of rows.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sepsisrl.dataset.config import BuildConfig
from sepsisrl.dataset.ingest import connect, run_ingest
from sepsisrl.dataset.measurements import run_measurements, write_ventilation
from sepsisrl.dataset.sepsis import SOFA_COMPONENTS
from sepsisrl.dataset.sofa import render_sofa
from sepsisrl.dataset.state import (
    FrozenStatistics,
    States,
    compute_states,
    cumulative_before,
    step_treatment,
)
from sepsisrl.dataset.tables import MemoryTables

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
#: The ingest tables a state reads (the onset, and so prescriptions, cultures, patients and
#: admissions, is fixed by the population's build; SOFA reads the ventilation of ``chart``).
_INGESTED = ("icustays", "chart", "labs", "inputs", "outputs")


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
        self.ingest, self.meas = MemoryTables("ing"), MemoryTables("meas")
        # state computations on a second connection to the same database, where the stage
        # tables appear under the names the state SQL reads
        self.state_con = self.con.cursor()
        self.calls = 0
        self._icu: pa.Table | None = None
        self._sofa_views = False
        self._ventilation = False
        self._optimizer: bool | None = None

    def _use_optimizer(self, on: bool) -> None:
        """DuckDB's query optimizer on or off for both connections. A call over a few due
        stays is cheaper without it (a fixed planning cost per statement; the results are the
        same rows); a call over a whole rollout keeps it, for the memory its compressed
        materialisation saves on large tables."""
        if on is not self._optimizer:
            pragma = "PRAGMA enable_optimizer" if on else "PRAGMA disable_optimizer"
            self.con.execute(pragma).fetchall()
            self.state_con.execute(pragma).fetchall()
            self._optimizer = on

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
        whole: bool = False,
        due: bool = False,
    ) -> tuple[States, pa.Table]:
        """States at every step of ``grid`` and the treatment of its action windows.
        ``whole``: the call is over a whole rollout (its last); the result is the same, and a
        shared state function (``truth/lockstep.py``) runs it on its own. ``due``: the caller
        passes only the grid's stays' rows (``due_rows`` already applied), so they are not
        selected again.

        ``charted``: chartevents, labevents, inputevents, outputevents rows so far (any stays);
        ``static``: patients, admissions, icustays rows (``icustays.outtime`` null while the
        stay is in the ICU); ``grid``: (stay_id, subject_id, step, tau) steps 0..k of each due
        stay, sorted; ``cohort``: (stay_id, age, onset_time, intime) of the episodes.
        """
        self.calls += 1
        self._use_optimizer(whole)
        con = self.con
        if not due:
            charted, static = due_rows(charted, static, grid)
        for name in ("chartevents", "labevents", "inputevents", "outputevents"):
            con.register(f"src_{name}", charted[name])
        icu = static["icustays"]
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
        self._icu = icu
        run_ingest(
            self.src, self.cfg, self.ingest, check_dictionaries=False, con=con, only=_INGESTED
        )
        run_measurements(self.ingest, self.cfg, self.meas, con=con, ventilation=False)
        self._ventilation = False

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

    def sofa(self, grid: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """(total SOFA, state SOFA) at every step of ``grid`` from the rows of the last call:
        the build's hourly SOFA query (``dataset/sofa.py``) over the measurement tables the
        call computed, read as the build's rewards read it (the last SOFA hour ending at or
        before tau; 0 before the first hour). Call it right after ``__call__`` with its grid.
        """
        if self._icu is None:
            raise RuntimeError("OnlineStateFunction.sofa: call the state function first")
        sc = self.state_con
        if not self._ventilation:  # only SOFA reads it: written for the last call's rows
            write_ventilation(self.con, self.meas, self.cfg)
            self._ventilation = True
        if not self._sofa_views:
            sc.execute(
                f"CREATE VIEW ventilation AS SELECT * FROM {self.meas.relation('ventilation')}"
            )
            self._sofa_views = True
        stay = grid["stay_id"].to_numpy()
        tau = grid["tau"].cast(pa.timestamp("us")).cast(pa.int64()).to_numpy()
        # the hours end with each stay's latest decision time (SOFA(tau) reads hours ending at
        # or before tau; later hours hold no row charted yet)
        last = np.ones(len(stay), dtype=bool)
        last[:-1] = stay[1:] != stay[:-1]
        icu = self._icu.filter(pc.is_in(self._icu["stay_id"], pa.array(stay[last], pa.int64())))
        ends = dict(zip(stay[last].tolist(), tau[last].tolist(), strict=True))
        out_us = np.array([ends[s] for s in icu["stay_id"].to_pylist()], dtype=np.int64)
        sc.register(
            "icustays",
            pa.table(
                {
                    "stay_id": icu["stay_id"],
                    "intime": icu["intime"].cast(pa.timestamp("us")),
                    "outtime": pa.array(out_us, pa.timestamp("us")),
                }
            ),
        )
        total = " + ".join(f"sofa_{c}" for c in SOFA_COMPONENTS)
        hourly = sc.sql(
            f"SELECT stay_id, epoch_us(endtime) AS end_us, {total} AS sofa, "
            f"{total} - sofa_cardiovascular + sofa_cardiovascular_map AS sofa_state "
            f"FROM ({render_sofa(self.cfg)}) ORDER BY stay_id, end_us"
        ).to_arrow_table()
        h_stay = hourly["stay_id"].to_numpy()
        h_end = hourly["end_us"].to_numpy()
        scores = [hourly[c].to_numpy().astype(np.float64) for c in ("sofa", "sofa_state")]
        out = [np.zeros(len(stay)), np.zeros(len(stay))]
        for s in np.unique(stay).tolist():
            rows = np.flatnonzero(stay == s)
            lo, hi = np.searchsorted(h_stay, [s, s + 1])
            # the last hour with endtime <= tau (none: 0, as the build's ASOF join gives NULL)
            j = np.searchsorted(h_end[lo:hi], tau[rows], side="right") - 1
            for score, dest in zip(scores, out, strict=True):
                got = score[lo:hi][np.maximum(j, 0)] if hi > lo else np.zeros(len(rows))
                dest[rows] = np.where(j >= 0, got, 0.0)
        return out[0], out[1]


def due_rows(
    charted: dict[str, pa.Table], static: dict[str, pa.Table], grid: pa.Table
) -> tuple[dict[str, pa.Table], dict[str, pa.Table]]:
    """The rows of ``charted`` and ``static`` that belong to the stays of ``grid`` (their
    patients' labs and admissions included)."""
    stays = pa.array(np.unique(grid["stay_id"].to_numpy()), pa.int64())
    subjects = pa.array(np.unique(grid["subject_id"].to_numpy()), pa.int64())
    icu = static["icustays"].filter(pc.is_in(static["icustays"]["stay_id"], stays))
    ids = {"stay_id": stays, "subject_id": subjects, "hadm_id": icu["hadm_id"].combine_chunks()}
    rows = {k: _rows(charted[k], _KEY[k], ids) for k in _CHARTED}
    kept = {k: _rows(static[k], _KEY[k], ids) for k in ("patients", "admissions")}
    return rows, {**kept, "icustays": icu}


_CHARTED = ("chartevents", "labevents", "inputevents", "outputevents")


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
