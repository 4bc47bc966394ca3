"""The synthetic world as a Gymnasium environment (optional extra: ``pip install "sepsisrl[gym]"``).

``import sepsisrl.env`` registers ``sepsisrl/SepsisWorld-v0``::

    import gymnasium
    import sepsisrl.env  # noqa: F401  (registers the environment)

    env = gymnasium.make("sepsisrl/SepsisWorld-v0", workspace="ws", reward="sofa_shaped")
    envs = gymnasium.make_vec("sepsisrl/SepsisWorld-v0", num_envs=4, workspace="ws")

(``gymnasium.make("sepsisrl.env:sepsisrl/SepsisWorld-v0", ...)`` imports it itself.) RESEARCH
ONLY: a simulator of MIMIC-shaped patients, not clinical decision support. docs/gymnasium.md.
"""

from __future__ import annotations

from sepsisrl.env.world import ENV_STREAM, SepsisWorldEnv

ENV_ID = "sepsisrl/SepsisWorld-v0"


def _register() -> None:
    import gymnasium

    if ENV_ID not in gymnasium.registry:
        gymnasium.register(id=ENV_ID, entry_point="sepsisrl.env.world:SepsisWorldEnv")


_register()

__all__ = ["ENV_ID", "ENV_STREAM", "SepsisWorldEnv"]
