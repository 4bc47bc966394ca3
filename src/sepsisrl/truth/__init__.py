"""The true outcome of a policy in the synthetic world (``sepsisrl truth``).

- ``world``    the workspace's world and build (``TruthContext``), fresh populations
- ``online``   the build's state function run at decision time over the rows charted so far
- ``rollout``  re-simulation of a population with a policy in control on the replay's grid
- ``policies`` the policy grammar shared with ``sepsisrl evaluate --policy``
- ``harness``  ``truth.json``: mortality and value with CIs, paired difference from clinicians
- ``compare``  offline estimates against the truth (rank correlation, error, coverage, regret)
"""
