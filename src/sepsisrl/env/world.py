"""The synthetic world as a Gymnasium environment, one patient per episode (RESEARCH ONLY).

Each episode is one fresh patient of the workspace's world, drawn from a stream of its own
(never the world's training patients, never a ``sepsisrl truth`` population): the patient is
simulated under the clinicians and built with the workspace's configuration to find the
Sepsis-3 onset and the decision grid (as the replay defines them), then simulated again with
the agent deciding on that grid - exactly the truth harness's rollout (``truth/rollout.py``),
run in a worker thread that hands each decision to ``step``. So the same patient under the
same policy gives the same return here and in ``sepsisrl truth`` (tests/test_env.py).

Observation: the build's normalised state (62 values for the card state; whichever state
variant the workspace was built with), computed at the decision time by the build's own state
function over the rows charted so far. Actions: the replay's 25 (5 * vaso_bin + fluid_bin),
given as the bins' representative doses held for 4 hours (``interface="held"``, the default) or
as bounds the simulated team titrates inside every hour (``interface="titrated"``), as in
``sepsisrl truth --interface``. Rewards: a replay reward variant, computed as the
build computes it (``dataset/replay.py:compute_rewards``) with SOFA(tau) from the build's
hourly SOFA query over the rows charted so far; the last decision of the episode carries the
terminal +15 / -15 (alive / dead 90 days after onset). ``info`` of the last step holds the
episode's ``died_90d``, ``steps`` and ``return_eval`` (gamma^(T-1) * terminal).

A patient whose stays never enter the cohort (most do not: the cohort is the adults with
Sepsis-3) is skipped; drawing one costs a simulation and a small build (about a second),
cached under ``<workspace>/truth/populations`` so a second run over the same seed is quick.
``prefetch=n`` draws the next ``n`` patients of the stream ahead, in one background process,
while the agent acts: the same patients (a drawn patient depends only on its stream and
index), found in the cache instead of simulated on the spot.
"""

from __future__ import annotations

import multiprocessing
import queue
import shutil
import tempfile
import threading
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sepsisrl.dataset.replay import compute_rewards
from sepsisrl.truth.policies import DecisionContext, WorldPolicy
from sepsisrl.truth.rollout import INTERFACES, RolloutOutcome, rollout_population
from sepsisrl.truth.world import (
    TRUTH_STREAM,
    Population,
    TruthContext,
    TruthError,
    population_key,
    simulate_population,
)

try:
    import gymnasium
    from gymnasium import spaces
except ModuleNotFoundError as exc:  # an optional extra
    raise ModuleNotFoundError(
        'sepsisrl.env needs gymnasium: pip install "sepsisrl[gym]"', name=exc.name
    ) from exc

#: Mixed into the seed of an environment's patients: disjoint from worlds and truth populations.
ENV_STREAM = 0xE7A1
#: Patients drawn at most per reset before giving up (about one in five enters the cohort).
MAX_DRAWS = 400
_ABORT = object()


def _patient_entropy(ctx: TruthContext, stream: int, index: int) -> tuple[int, ...]:
    return (ctx.world_seed, TRUTH_STREAM, ENV_STREAM, int(stream), int(index))


def _draw(ctx: TruthContext, cache: Path, stream: int, index: int) -> Population:
    entropy = _patient_entropy(ctx, stream, index)
    return simulate_population(ctx, entropy, 1, cache / population_key(ctx, entropy, 1))


_PREFETCH_CONTEXTS: dict[str, TruthContext] = {}


def _prefetch(workspace: str, cache: str, stream: int, index: int) -> None:
    """A prefetching process's draw: the population the environment's own draw would make,
    into the shared cache (whose lock makes a draw wait for one in progress, then reuse it)."""
    from sepsisrl.threads import limited_threads

    ctx = _PREFETCH_CONTEXTS.get(workspace)
    if ctx is None:
        ctx = _PREFETCH_CONTEXTS[workspace] = TruthContext.load(workspace)
    with limited_threads(1):
        _draw(ctx, Path(cache), stream, index)


class _Abort(Exception):
    """The environment was reset or closed in the middle of an episode."""


class _Bridge(WorldPolicy):
    """A policy whose decisions come from ``step``: the rollout thread waits for them."""

    name = "gymnasium"
    needs_state = True
    wants_context = True

    def __init__(self) -> None:
        self.to_env: queue.Queue = queue.Queue()
        self.to_world: queue.Queue = queue.Queue()

    def decide(self, states: np.ndarray, raw: dict[str, np.ndarray]) -> np.ndarray:
        ctx = self.context
        self.to_env.put(("decide", np.array(states, np.float32), dict(raw), ctx))
        got = self.to_world.get()
        if got is _ABORT:
            raise _Abort
        return got


class _Patient:
    """One patient's rollout, running in a thread that stops at every decision."""

    def __init__(self, ctx: TruthContext, pop: Population, interface: str = "held") -> None:
        self.bridge = _Bridge()
        self.workdir = Path(tempfile.mkdtemp(prefix="sepsisrl-env-"))
        self.thread = threading.Thread(
            target=self._run, args=(ctx, pop, interface), name="sepsisrl-env", daemon=True
        )
        self.thread.start()

    def _run(self, ctx: TruthContext, pop: Population, interface: str) -> None:
        try:
            out = rollout_population(
                ctx, pop, self.bridge, self.workdir / "rollout", interface=interface
            )
        except _Abort:
            self.bridge.to_env.put(("aborted",))
        except BaseException as exc:  # reported to the caller of step/reset
            self.bridge.to_env.put(("error", exc))
        else:
            self.bridge.to_env.put(("done", out))

    def next(self) -> tuple:
        msg = self.bridge.to_env.get()
        if msg[0] == "error":
            self.close()
            raise msg[1]
        if msg[0] == "done":
            self.close()
        return msg

    def act(self, action: int) -> tuple:
        self.bridge.to_world.put(np.array([action], dtype=np.int64))
        return self.next()

    def close(self) -> None:
        if self.thread.is_alive():
            self.bridge.to_world.put(_ABORT)
            self.thread.join()
        shutil.rmtree(self.workdir, ignore_errors=True)


class SepsisWorldEnv(gymnasium.Env):
    """``gymnasium.make("sepsisrl/SepsisWorld-v0", workspace=WS, reward="sofa_shaped")``.

    ``workspace``: a workspace built from a synthetic world (``sepsisrl run`` or ``synth`` +
    ``build``); ``reward``: one of the build's replay reward variants (``sparse``,
    ``sofa_shaped``, ``sofa_state_shaped``, ``full_shaped``); ``cache``: where drawn patients
    are kept (default ``<workspace>/truth/populations``); ``interface``: how an action reaches
    the patient, as in ``sepsisrl truth --interface`` (``held``: the bins' representative doses
    for 4 hours; ``titrated``: the team titrates hourly inside the bins, docs/truth.md);
    ``prefetch``: how many patients of the stream to draw ahead in a background process (0:
    none; it changes no episode, only how long a reset waits; ``close()`` stops it).
    ``reset(seed=s)`` restarts the
    patient stream ``s``: the same seed gives the same patients, and the same actions the
    same episodes. RESEARCH ONLY: a simulator, not patients.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(
        self,
        workspace: str | Path,
        reward: str = "sofa_shaped",
        cache: str | Path | None = None,
        max_draws: int = MAX_DRAWS,
        interface: str = "held",
        prefetch: int = 0,
    ) -> None:
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise TruthError(f"prefetch {prefetch!r}: expected a whole number >= 0")
        if prefetch and multiprocessing.current_process().daemon:
            raise TruthError(
                f"prefetch {prefetch}: this environment runs in a daemonic process (such as a "
                "worker of gymnasium's async vector form), which cannot start the drawing "
                "process; use prefetch=0 there (the async form already draws in parallel)"
            )
        if interface not in INTERFACES:
            raise TruthError(
                f"interface {interface!r}: expected one of {list(INTERFACES)} (docs/truth.md)"
            )
        self.interface = interface
        self.ctx = TruthContext.load(workspace)
        variants = list(self.ctx.build_cfg.rewards.variants)
        if reward not in variants:
            raise TruthError(
                f"reward {reward!r}: not a replay reward variant of {self.ctx.workspace} "
                f"(build.yaml rewards.variants: {variants})"
            )
        self.reward_variant = reward
        self.cache = Path(cache) if cache else self.ctx.workspace / "truth" / "populations"
        self.max_draws = int(max_draws)
        low, high = _bounds(self.ctx)
        self.observation_space = spaces.Box(low=low, high=high, dtype=np.float32)
        self.action_space = spaces.Discrete(self.ctx.n_actions)
        self.feature_names = list(self.ctx.feature_names)
        self._stream: int | None = None
        self._draw = 0
        self._patient: _Patient | None = None
        self._last: dict[str, Any] | None = None
        self.prefetch = prefetch
        self._pool: ProcessPoolExecutor | None = None
        self._ahead: dict[tuple[int, int], Future] = {}

    # -- patients -------------------------------------------------------------------------
    def patient_entropy(self, stream: int, index: int) -> tuple[int, ...]:
        """The random stream of patient ``index`` of stream ``stream``."""
        return _patient_entropy(self.ctx, stream, index)

    def population(self, stream: int, index: int) -> Population:
        """Patient ``index`` of stream ``stream`` as a one-patient truth population (cached):
        ``sepsisrl.truth.harness.compute_truth(..., population=...)`` measures the truth of a
        policy on exactly this patient."""
        ahead = self._ahead.pop((stream, index), None)
        if ahead is not None:
            ahead.cancel()  # not started yet: drawn here; started: the cache's lock waits for it
        return _draw(self.ctx, self.cache, stream, index)

    def _draw_ahead(self, stream: int, after: int) -> None:
        """Queue the ``prefetch`` draws of ``stream`` after index ``after`` not queued yet."""
        if not self.prefetch:
            return
        for key in [k for k in self._ahead if k[0] != stream or k[1] < after]:
            self._ahead.pop(key).cancel()  # another stream, or passed
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        try:
            for index in range(after + 1, after + 1 + self.prefetch):
                if (stream, index) not in self._ahead:
                    self._ahead[stream, index] = self._pool.submit(
                        _prefetch, str(self.ctx.workspace), str(self.cache), stream, index
                    )
        except (BrokenProcessPool, RuntimeError) as exc:  # the process died or cannot start
            warnings.warn(
                f"prefetch stopped, patients are drawn on the spot from now on (the same "
                f"episodes): the drawing process failed ({type(exc).__name__}: {exc}). A script "
                "that starts one must guard its own code with if __name__ == '__main__':",
                RuntimeWarning,
                stacklevel=3,
            )
            self.prefetch = 0
            self._stop_prefetch()

    def _stop_prefetch(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._ahead.clear()

    # -- the Gymnasium API ----------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._stop()
        if seed is not None or self._stream is None:
            self._stream = int(seed if seed is not None else self.np_random.integers(2**31))
            self._draw = 0
        for _ in range(self.max_draws):
            index = self._draw
            self._draw += 1
            self._draw_ahead(self._stream, index)  # the next ones, while this one is drawn
            pop = self.population(self._stream, index)
            if pop.episodes().num_rows == 0:
                continue  # not in the cohort: no decision to make
            self._patient = _Patient(self.ctx, pop, self.interface)
            msg = self._patient.next()
            if msg[0] != "decide":
                continue
            self._last = {"patient": index, "decisions": 0}
            obs, info = self._observe(msg)
            return obs, info
        raise TruthError(
            f"no cohort patient among {self.max_draws} drawn from stream {self._stream} "
            f"of {self.ctx.workspace}: is its cohort empty?"
        )

    def step(self, action):
        if self._patient is None or self._last is None:
            raise RuntimeError("SepsisWorldEnv.step before reset (or after the episode ended)")
        if not self.action_space.contains(action):
            raise ValueError(
                f"action {action!r}: expected an integer in 0..{self.action_space.n - 1} "
                "(5 * vaso_bin + fluid_bin)"
            )
        prev = self._last
        msg = self._patient.act(int(action))
        if msg[0] == "decide":
            obs, info = self._observe(msg)
            nxt = self._last
            reward = self._rewards([prev, nxt], died=False)[0]
            return obs, float(reward), False, False, info
        outcome: RolloutOutcome = msg[1]
        self._patient = None
        ep = outcome.episodes
        died = bool(ep["died_90d"][0].as_py())
        steps = int(ep["steps"][0].as_py())
        reward = self._rewards([prev], died=died)[0]
        info = {
            "patient": prev["patient"],
            "stay_id": prev["stay_id"],
            "step": prev["step"],
            "died_90d": died,
            "steps": steps,
            "return_eval": float(ep["return_eval"][0].as_py()),
        }
        self._last = None
        return prev["obs"], float(reward), True, False, info

    def close(self) -> None:
        self._stop()
        self._stop_prefetch()
        super().close()

    # -- internals ------------------------------------------------------------------------
    def _stop(self) -> None:
        if self._patient is not None:
            self._patient.close()
            self._patient = None

    def _observe(self, msg: tuple) -> tuple[np.ndarray, dict[str, Any]]:
        _, states, raw, context = msg
        ctx: DecisionContext = context
        if len(states) != 1:
            raise RuntimeError(f"one patient decides at a time, got {len(states)} states")
        obs = states[0].astype(np.float32)
        raw1 = {k: float(v[0]) for k, v in raw.items()}
        self._last = {
            **(self._last or {}),
            "obs": obs,
            "raw": raw1,
            "stay_id": int(ctx.stay_id[0]),
            "step": int(ctx.step[0]),
            "sofa": float(ctx.sofa[0]),
            "sofa_state": float(ctx.sofa_state[0]),
        }
        info = {
            "patient": self._last["patient"],
            "stay_id": self._last["stay_id"],
            "step": self._last["step"],
            "state_raw": raw1,
            "sofa": self._last["sofa"],
        }
        return obs, info

    def _rewards(self, rows: list[dict[str, Any]], died: bool) -> np.ndarray:
        """The replay's reward of the first row: shaped by the next row when there is one,
        else the terminal reward (``compute_rewards`` on the episode's rows)."""
        n = len(rows)
        reward, _, _ = compute_rewards(
            self.reward_variant,
            np.zeros(n, dtype=np.int64),
            np.full(n, died),
            np.array([r["sofa"] for r in rows]),
            np.array([r["raw"]["lactate"] for r in rows]),
            np.array([r["raw"]["map"] for r in rows]),
            self.ctx.build_cfg,
            sofa_state=np.array([r["sofa_state"] for r in rows]),
        )
        return reward


def _bounds(ctx: TruthContext) -> tuple[np.ndarray, np.ndarray]:
    """The replay's recorded range of every state value (``meta.json`` state_bounds)."""
    from sepsisrl.contracts import ReplayMeta

    meta = ReplayMeta.load(sorted((ctx.workspace / "replay").glob("*/meta.json"))[0])
    names = list(meta.feature_names)
    if meta.state_bounds is None:
        inf = np.full(len(names), np.inf, dtype=np.float32)
        return -inf, inf
    b = meta.state_bounds.features
    low = np.array([b[n][0] for n in names], dtype=np.float32)
    high = np.array([b[n][1] for n in names], dtype=np.float32)
    return low, high
