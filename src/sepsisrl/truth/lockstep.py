"""Several policies' rollouts of one population in lockstep, sharing the state function.

A rollout spends most of its time in the build's state function (``truth/online.py``), and
most of each call is a fixed cost: some twenty SQL statements planned and run however few
stays are due. The study measures the truth of every candidate on the same patients, so here
``P`` rollouts run side by side (one thread each, one core in all) and every round of state
requests goes through the state function once: each rollout's rows get their identifiers
moved into a range of their own (``ID_OFFSET``), the union is computed, and each rollout gets
back exactly its own rows. A round is the next request of every rollout still running, so
which rows meet in a call depends on the policies alone, never on thread timing.

Each policy's simulation, random numbers and decisions are its own; a stay's state depends on
its own rows only, so the outcome of every policy is the one it has alone (test).

A rollout's last call, over all its decisions (``whole=True``), runs on its own: merging it
would save one call's fixed cost and hold every rollout's whole charted rows, their shifted
copies and their union at once (the memory peak of a group).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sepsisrl.dataset.config import BuildConfig
from sepsisrl.dataset.state import FrozenStatistics, States
from sepsisrl.truth.online import OnlineStateFunction, due_rows

#: Added (times the rollout's index) to every identifier of a rollout's rows in a shared call;
#: MIMIC identifiers are below 10^9 and int64 holds 10^18.
ID_OFFSET = 10**11
#: The identifier columns moved: those that key a stay, a patient, an admission, a specimen
#: (lab values of one blood gas are paired by specimen) or an infusion order.
ID_COLUMNS = ("stay_id", "subject_id", "hadm_id", "specimen_id", "labevent_id", "orderid",
              "linkorderid")  # fmt: skip


class LockstepAborted(RuntimeError):
    """Another rollout of the group failed; this one stops too."""


@dataclass
class _Request:
    charted: dict[str, pa.Table]
    static: dict[str, pa.Table]
    grid: pa.Table
    cohort: pa.Table
    sofa: bool
    whole: bool = False


@dataclass
class _Answer:
    states: States
    treatment: pa.Table
    sofa: tuple[np.ndarray, np.ndarray] | None


class SharedStateFunction:
    """One :class:`OnlineStateFunction` answering ``n_clients`` rollouts, round by round."""

    def __init__(
        self, cfg: BuildConfig, stats: FrozenStatistics, workdir: Path, n_clients: int
    ) -> None:
        self.fn = OnlineStateFunction(cfg, stats, workdir)
        self._cond = threading.Condition()
        self._live = set(range(n_clients))
        self._pending: dict[int, _Request] = {}
        self._answers: dict[int, _Answer | BaseException] = {}
        self._failed = False
        # one rollout computes at a time: the others wait for an answer or for this lock, so
        # the threads never contend for the interpreter (contention cost more than it saved)
        self._running = threading.Lock()
        self.rounds = 0

    def client(self, index: int, sofa: bool = False) -> StateClient:
        """The state function as rollout ``index`` sees it (``sofa``: it reads SOFA at tau)."""
        return StateClient(self, index, sofa)

    def abort(self) -> None:
        """Stop the group: waiting and later requests raise :class:`LockstepAborted`."""
        with self._cond:
            self._failed = True
            self._cond.notify_all()

    def close(self) -> None:
        self.fn.close()

    # -- the protocol (every method below runs under the condition's lock)
    def enter(self) -> None:
        """A rollout starts computing (call from its thread before it starts)."""
        self._running.acquire()

    def exit(self) -> None:
        """A rollout has ended (call from its thread after :meth:`leave`)."""
        self._running.release()

    def ask(self, index: int, request: _Request) -> _Answer:
        with self._cond:
            if self._failed:
                raise LockstepAborted("another rollout of the lockstep group failed")
            self._pending[index] = request
            self._run_if_ready()
        self._running.release()  # let another rollout compute towards its request
        try:
            with self._cond:
                while index not in self._answers and not self._failed:
                    self._cond.wait()
                answer = self._answers.pop(index, None)
        finally:
            self._running.acquire()
        if answer is None:
            raise LockstepAborted("another rollout of the lockstep group failed")
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def leave(self, index: int) -> None:
        with self._cond:
            if index in self._live:
                self._live.discard(index)
                self._pending.pop(index, None)
                self._run_if_ready()

    def _run_if_ready(self) -> None:
        if not self._pending or len(self._pending) != len(self._live):
            return  # some rollout is still simulating towards its next request
        requests = dict(sorted(self._pending.items()))
        self._pending.clear()
        self.rounds += 1
        merged = {i: r for i, r in requests.items() if not r.whole}
        try:
            answers: dict[int, _Answer | BaseException] = (
                dict(self._merged(merged)) if merged else {}
            )
            for i in requests:
                if requests[i].whole:
                    answers[i] = self._alone(requests[i])
        except BaseException as exc:  # every rollout of the round sees the failure
            answers = dict.fromkeys(requests, exc)
        self._answers.update(answers)
        self._cond.notify_all()

    def _alone(self, r: _Request) -> _Answer:
        """A rollout's last call (its SOFA at tau is not read after it)."""
        states, treatment = self.fn(r.charted, r.static, r.grid, r.cohort, whole=True, due=True)
        return _Answer(states, treatment, None)

    def _merged(self, requests: dict[int, _Request]) -> dict[int, _Answer]:
        order = list(requests)
        shifted = {i: _shift_request(requests[i], i * ID_OFFSET) for i in order}
        charted = {
            name: _concat([shifted[i].charted[name] for i in order])
            for name in shifted[order[0]].charted
        }
        static = {
            name: _concat([shifted[i].static[name] for i in order])
            for name in shifted[order[0]].static
        }
        grid = _concat([shifted[i].grid for i in order])
        cohort = _concat([shifted[i].cohort for i in order])
        # every client's rows are already its grid's (StateClient applies due_rows)
        states, treatment = self.fn(charted, static, grid, cohort, due=True)
        wanting = [i for i in order if requests[i].sofa]
        sofa = self.fn.sofa(_concat([shifted[i].grid for i in wanting])) if wanting else None
        out: dict[int, _Answer] = {}
        lo = sofa_lo = 0
        t_stay = treatment["stay_id"].to_numpy()
        for i in order:
            n = requests[i].grid.num_rows
            st = _slice_states(states, lo, lo + n, i * ID_OFFSET)
            if not np.array_equal(st.stay_id, requests[i].grid["stay_id"].to_numpy()):
                raise RuntimeError("lockstep: the shared call's rows are not in the grid's order")
            keep = (t_stay >= i * ID_OFFSET) & (t_stay < (i + 1) * ID_OFFSET)
            tr = _shift(treatment.filter(pa.array(keep)), -i * ID_OFFSET)
            got = None
            if requests[i].sofa and sofa is not None:
                got = (sofa[0][sofa_lo : sofa_lo + n], sofa[1][sofa_lo : sofa_lo + n])
                sofa_lo += n
            out[i] = _Answer(st, tr, got)
            lo += n
        return out


class StateClient:
    """What :func:`~sepsisrl.truth.rollout.rollout_population` calls as its state function."""

    def __init__(self, shared: SharedStateFunction, index: int, sofa: bool) -> None:
        self.shared = shared
        self.index = index
        self.wants_sofa = sofa
        self._sofa: tuple[np.ndarray, np.ndarray] | None = None
        self._grid_rows = -1
        self._whole = False

    def __call__(
        self,
        charted: dict[str, pa.Table],
        static: dict[str, pa.Table],
        grid: pa.Table,
        cohort: pa.Table,
        whole: bool = False,
        due: bool = False,
    ) -> tuple[States, pa.Table]:
        """As :class:`OnlineStateFunction`'s (``due``: the rows are already the grid's)."""
        if not due:
            charted, static = due_rows(charted, static, grid)
        stays = grid["stay_id"].combine_chunks() if grid.num_rows else pa.array([], pa.int64())
        cohort = cohort.filter(pc.is_in(cohort["stay_id"], stays))
        request = _Request(charted, static, grid, cohort, self.wants_sofa, whole)
        answer = self.shared.ask(self.index, request)
        self._sofa, self._grid_rows, self._whole = answer.sofa, grid.num_rows, whole
        return answer.states, answer.treatment

    def sofa(self, grid: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        if self._whole:
            raise RuntimeError(
                "lockstep state function: the whole-rollout call (whole=True) computes no SOFA "
                "at tau; only a decision time's call does"
            )
        if self._sofa is None or grid.num_rows != self._grid_rows:
            raise RuntimeError(
                "lockstep state function: SOFA at tau is computed with the call for the same "
                "grid; create the client with sofa=True"
            )
        return self._sofa

    def close(self) -> None:
        self.shared.leave(self.index)


def run_lockstep(targets: Sequence, shared: SharedStateFunction) -> list:
    """Call every ``target(client)`` in its own thread; their results in order, or the first
    failure (the others are stopped)."""
    results: list = [None] * len(targets)
    errors: list[tuple[int, BaseException]] = []

    def work(i: int) -> None:
        client = shared.client(i, sofa=getattr(targets[i], "wants_sofa", False))
        shared.enter()
        try:
            results[i] = targets[i](client)
        except BaseException as exc:
            errors.append((i, exc))
            shared.abort()
        finally:
            client.close()
            shared.exit()

    threads = [
        threading.Thread(target=work, args=(i,), name=f"lockstep-{i}", daemon=True)
        for i in range(len(targets))
    ]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except BaseException:  # interrupted: stop the group rather than wait for it
        shared.abort()
        raise
    if errors:
        # the first real failure, not the aborts it caused in the others
        real = [e for e in errors if not isinstance(e[1], LockstepAborted)] or errors
        raise min(real, key=lambda e: e[0])[1]
    return results


# ---------------------------------------------------------------------------- helpers
def _shift(tab: pa.Table, offset: int) -> pa.Table:
    if offset == 0:
        return tab
    for name in ID_COLUMNS:
        j = tab.schema.get_field_index(name)
        if j < 0:
            continue
        col = tab.column(j)
        if not pa.types.is_integer(col.type):
            raise TypeError(f"lockstep: identifier column {name} is {col.type}, expected integers")
        tab = tab.set_column(j, tab.field(j), pc.add(col, pa.scalar(offset, col.type)))
    return tab


def _shift_request(r: _Request, offset: int) -> _Request:
    return replace(
        r,
        charted={k: _shift(v, offset) for k, v in r.charted.items()},
        static={k: _shift(v, offset) for k, v in r.static.items()},
        grid=_shift(r.grid, offset),
        cohort=_shift(r.cohort, offset),
    )


def _concat(tables: list[pa.Table]) -> pa.Table:
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def _slice_states(st: States, lo: int, hi: int, offset: int) -> States:
    return States(
        stay_id=st.stay_id[lo:hi] - offset,
        step=st.step[lo:hi],
        values={k: v[lo:hi] for k, v in st.values.items()},
        observed={k: v[lo:hi] for k, v in st.observed.items()},
        source_time=st.source_time[lo:hi],
        prep=st.prep,
        names=st.names,
    )
