"""Policies that act inside the synthetic world, named by one grammar shared with evaluate.

SPEC (``sepsisrl truth --policy`` and ``sepsisrl evaluate --policy``):

    clinician          defer every decision to the world's clinicians (the behaviour policy)
    no_treatment       action 0: no vasopressor, no IV fluid
    random             uniform over the 25 actions
    constant:K         always action K (0..24; K = 5 * vaso_bin + fluid_bin)
    rule:map_lactate   a hand-written protocol on the state's raw MAP, lactate and fluids

and, with their own options, a trained run (``--run RUN``), an exported model repository
(``--bundle DIR``) or a saved d3rlpy discrete-action model (``--d3rlpy MODEL``,
docs/d3rlpy.md). Every policy decides from the state the build defines (normalised for
networks, raw values for the rule); the clinicians need no state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sepsisrl.dataset.preprocessing import StatePreprocessor

SPEC_HELP = "clinician | no_treatment | random | constant:K | rule:map_lactate"
NAMED = ("clinician", "no_treatment", "random")
RULES = ("map_lactate",)
DEFER = -1


class PolicySpecError(ValueError):
    """An unknown or malformed policy SPEC."""


def parse_spec(spec: str, n_actions: int = 25) -> tuple[str, int | str | None]:
    """``(kind, argument)`` of a SPEC, or a clear error naming the grammar."""
    spec = str(spec).strip()
    if spec in NAMED:
        return spec, None
    if spec.startswith("constant:"):
        arg = spec.split(":", 1)[1]
        try:
            k = int(arg)
        except ValueError:
            k = -1
        if not 0 <= k < n_actions or str(k) != arg.strip():
            raise PolicySpecError(
                f"policy {spec!r}: K must be an action id in 0..{n_actions - 1} "
                f"(5 * vaso_bin + fluid_bin); expected {SPEC_HELP}"
            )
        return "constant", k
    if spec.startswith("rule:"):
        name = spec.split(":", 1)[1]
        if name not in RULES:
            raise PolicySpecError(f"policy {spec!r}: unknown rule; known rules: {RULES}")
        return "rule", name
    raise PolicySpecError(f"unknown policy {spec!r}; expected {SPEC_HELP}")


def map_lactate_actions(raw: dict[str, np.ndarray]) -> np.ndarray:
    """A surviving-sepsis-campaign flavoured protocol on the state's raw values.

    Vasopressor bin by MAP: < 55 -> 3, < 60 -> 2, < 65 -> 1, else 0. Fluid: resuscitation
    (bin 3) while MAP < 65 or lactate > 2 and less than 3 L were given in the episode, else
    maintenance (bin 1).
    """
    mean_ap = raw["map"]
    vaso = np.select([mean_ap < 55, mean_ap < 60, mean_ap < 65], [3, 2, 1], 0)
    shock = (mean_ap < 65) | (raw["lactate"] > 2.0)
    fluid = np.where(shock & (raw["cum_iv_fluid_ml"] < 3000.0), 3, 1)
    return (5 * vaso + fluid).astype(np.int64)


def raw_from_normalised(
    prep: StatePreprocessor, names: list[str], states: np.ndarray
) -> dict[str, np.ndarray]:
    """Raw feature values from normalised states (inverse z-score, inverse log1p)."""
    out = {}
    for j, name in enumerate(names):
        if name not in prep.mean:  # a 0/1 missingness flag is not normalised
            out[name] = states[:, j].astype(np.float64)
            continue
        x = states[:, j].astype(np.float64) * prep.std[name] + prep.mean[name]
        out[name] = np.expm1(x) if name in prep.log1p else x
    return out


@dataclass
class DecisionContext:
    """Who decides at a decision time, and the SOFA there (given to a policy that asks)."""

    stay_id: np.ndarray
    step: np.ndarray
    sofa: np.ndarray  # SOFA(tau): the last full SOFA hour ending at or before tau
    sofa_state: np.ndarray  # the same with the blood-pressure cardiovascular level


class WorldPolicy:
    """A policy acting in the world: ``decide(normalised, raw) -> action ids (-1: defer)``.

    A policy with ``wants_context`` gets ``context`` (a ``DecisionContext`` in the order of
    the states) set before each ``decide``.

    ``order_free``: its decision for a state does not depend on the calls before (no random
    stream, nothing learnt or recorded in order). A rollout may then ask for the decisions of
    its simulation batches (the stays of a patient's first, second and third ICU admission) in
    one merged state call per hour, in another order than batch after batch
    (``truth/rollout.py``); any other policy is asked batch after batch, as the world simulates
    them.
    """

    name = "policy"
    needs_state = True
    wants_context = False
    order_free = False
    context: DecisionContext | None = None

    def decide(self, states: np.ndarray, raw: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError


class Clinicians(WorldPolicy):
    name = "clinician"
    needs_state = False
    order_free = True

    def decide(self, states, raw):
        return np.full(len(states), DEFER, dtype=np.int64)


class Constant(WorldPolicy):
    needs_state = False
    order_free = True

    def __init__(self, action: int, name: str | None = None) -> None:
        self.action = int(action)
        self.name = name or f"constant:{action}"

    def decide(self, states, raw):
        return np.full(len(states), self.action, dtype=np.int64)


class Uniform(WorldPolicy):
    name = "random"
    needs_state = False

    def __init__(self, n_actions: int, seed: int) -> None:
        self.n_actions = n_actions
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 0x4A4D]))

    def decide(self, states, raw):
        return self.rng.integers(0, self.n_actions, len(states)).astype(np.int64)


class MapLactate(WorldPolicy):
    name = "rule:map_lactate"
    order_free = True

    def decide(self, states, raw):
        return map_lactate_actions(raw)


class Network(WorldPolicy):
    """A trained run, an exported bundle or a d3rlpy model (greedy action of its network)."""

    order_free = True

    def __init__(self, policy, name: str) -> None:
        self.policy = policy
        self.name = name

    def decide(self, states, raw):
        return np.asarray(self.policy.act(states), dtype=np.int64)


class HeldSample(WorldPolicy):
    """The clinicians' own decisions at the harness's resolution: at each 4-hour decision, an
    action drawn from a behaviour estimate of the clinicians' action probabilities (a
    behaviour-cloning run's softmax), held for the window like any policy's action.

    Beside the clinicians themselves (who decide every hour, also on what the tables never
    show) it measures what the action interface alone costs: the handicap any 4-hourly policy
    must make up before it can match the clinicians in truth. Seeded: the same seed draws the
    same actions for the same states in the same order."""

    def __init__(self, probabilities, seed: int, name: str = "clinicians_held_4h") -> None:
        self.prob = probabilities
        self.rng = np.random.default_rng(seed)
        self.name = name

    def decide(self, states, raw):
        p = np.asarray(self.prob(states), dtype=np.float64)
        u = self.rng.random((len(p), 1))
        return np.minimum((u > p.cumsum(1)).sum(1), p.shape[1] - 1).astype(np.int64)


def held_sample(run: str | Path, feature_names: list[str], seed: int,
                workspace: Path | None = None) -> HeldSample:  # fmt: skip
    """:class:`HeldSample` of a behaviour-cloning run (checked like ``--run``)."""
    from sepsisrl.rl.policies import softmax_of

    return HeldSample(softmax_of(_load_run(Path(run), feature_names, workspace)), seed)


class Recorder(WorldPolicy):
    """Defers to the clinicians but asks for every state (the parity check of the harness)."""

    name = "clinician_with_states"
    order_free = True

    def decide(self, states, raw):
        return np.full(len(states), DEFER, dtype=np.int64)


def world_policy(
    spec: str | None,
    run: str | Path | None,
    bundle: str | Path | None,
    feature_names: list[str],
    n_actions: int,
    seed: int,
    workspace: Path | None = None,
    d3rlpy: str | Path | None = None,
) -> WorldPolicy:
    """The policy named by exactly one of SPEC, a run folder, a bundle folder or a d3rlpy
    model file."""
    given = [x for x in (spec, run, bundle, d3rlpy) if x is not None]
    if len(given) != 1:
        raise PolicySpecError(
            "give exactly one of --policy SPEC, --run RUN, --bundle DIR, --d3rlpy MODEL"
        )
    if spec is not None:
        kind, arg = parse_spec(spec, n_actions)
        if kind == "clinician":
            return Clinicians()
        if kind == "no_treatment":
            return Constant(0, "no_treatment")
        if kind == "random":
            return Uniform(n_actions, seed)
        if kind == "constant":
            return Constant(int(arg))
        return MapLactate()
    if run is not None:
        return Network(_load_run(Path(run), feature_names, workspace), f"run:{Path(run).name}")
    if d3rlpy is not None:
        model = _load_d3rlpy(Path(d3rlpy), feature_names, n_actions, workspace)
        return Network(model, model.name)
    return Network(_load_bundle(Path(bundle), feature_names), f"bundle:{Path(bundle).name}")


def _load_run(run: Path, feature_names: list[str], workspace: Path | None):
    import json

    from sepsisrl.rl.data import load_split
    from sepsisrl.rl.policies import TrainedPolicy

    cfg_path = run / "config.json"
    if not cfg_path.is_file():
        raise PolicySpecError(f"{run} is not a training run (no config.json)")
    cfg = json.loads(cfg_path.read_text())
    names = cfg.get("replay", {}).get("feature_names")
    if names != feature_names:
        raise PolicySpecError(
            f"{run} was trained on other features than this workspace's build provides "
            f"(a run trained on another build?): {_feature_diff(names or [], feature_names)}"
        )
    replay = cfg.get("replay", {})
    if workspace is not None:
        variant = replay.get("variant")
        ours = Path(workspace) / "replay" / str(variant)
        if not (ours / "meta.json").is_file():
            raise PolicySpecError(
                f"{run} was trained on a {variant!r} replay that {workspace} does not have "
                "(a run trained on another build)"
            )
        if load_split(ours, "train").fingerprint != replay.get("train_fingerprint"):
            raise PolicySpecError(
                f"{run} was trained on another build than {workspace} (its train data "
                f"{replay.get('path')} differ from {ours}); the truth applies this "
                "workspace's state function, so use a run trained on this workspace"
            )
    try:
        return TrainedPolicy(run)
    except FileNotFoundError as err:
        raise PolicySpecError(str(err)) from err


def _load_bundle(bundle: Path, feature_names: list[str]):
    from sepsisrl.ope.evaluate import BundlePolicy, EvaluationError

    if not (bundle / "config.json").is_file():
        raise PolicySpecError(f"{bundle} is not a model repository (no config.json)")
    try:
        return BundlePolicy(bundle, feature_names)
    except EvaluationError as err:
        raise PolicySpecError(f"{err}") from err


def _load_d3rlpy(model: Path, feature_names: list[str], n_actions: int, workspace: Path | None):
    """A d3rlpy model checked against the build's state size and action count (it carries no
    feature names: it must have been trained on ``to_d3rlpy`` of this build's replay)."""
    from sepsisrl.interop.d3rlpy import D3rlpyModelError, D3rlpyPolicy

    where = (
        f"the build of {workspace if workspace is not None else 'this workspace'} (state of "
        f"{len(feature_names)} features, {n_actions} actions)"
    )
    try:
        return D3rlpyPolicy(model, len(feature_names), n_actions, where)
    except D3rlpyModelError as err:
        raise PolicySpecError(str(err)) from err


def _feature_diff(got: list[str], want: list[str]) -> str:
    missing = [n for n in want if n not in got]
    extra = [n for n in got if n not in want]
    if not missing and not extra:
        return "same names in another order"
    return f"missing {missing[:5]}, unexpected {extra[:5]}"
