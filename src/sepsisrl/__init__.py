"""sepsisrl: from raw MIMIC-IV tables to an evaluated offline-RL sepsis policy.

RESEARCH ONLY. Nothing produced by this package is clinical decision support.
"""

__version__ = "0.1.0"
