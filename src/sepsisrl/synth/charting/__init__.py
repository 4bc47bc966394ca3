"""From simulated hours to MIMIC-IV rows: what the nurses, the lab and the pharmacy record.

Every function here is vectorised over the hourly records of a chunk of stays. Charting habits
follow docs/synthetic_world.md: vitals about hourly with gaps; invasive and non-invasive blood
pressure; temperature in Celsius or Fahrenheit; FiO2 in percent (occasionally as a fraction);
GCS as three components every ~4 h (intubated verbal = "No Response-ETT"); labs as morning
panels plus extra draws when unstable; blood gases when ventilated or unstable (with a specimen
type row, some venous); infusions as start/end/rate/amount rows (vasopressin in units/hour, some
phenylephrine in mcg/min); urine in outputevents; antibiotics with routes; cultures, some
date-only; and a small share of artifacts (impossible values, duplicated rows, null values).

The rates and probabilities of these habits are settings (``configs/synth.yaml``, section
``charting``: the calibrated rates, then one sub-section per table and the per-stay habit
streams); the items, drugs and organisms are the catalogue's (``synth/catalog.yaml``). What
stays here is the structure: which rows exist, when, and how their values follow the hour.

Each table is built in named steps over the same random generator (``ctx.rng``); the order
of the steps is the order of the draws, so reordering them changes the world's bytes.

Modules: :mod:`.common` (context and helpers), :mod:`.bedside` (``chartevents``),
:mod:`.labs` (``labevents``), :mod:`.infusions` (``inputevents``), :mod:`.outputs`
(``outputevents``), :mod:`.orders` (``prescriptions``, ``microbiologyevents``).
"""

from sepsisrl.synth.charting.bedside import chartevents
from sepsisrl.synth.charting.common import MISSING_TIME, ChartContext, TextDictionary
from sepsisrl.synth.charting.infusions import inputevents
from sepsisrl.synth.charting.labs import labevents
from sepsisrl.synth.charting.orders import microbiologyevents, prescriptions
from sepsisrl.synth.charting.outputs import outputevents

__all__ = [
    "MISSING_TIME",
    "ChartContext",
    "TextDictionary",
    "chartevents",
    "inputevents",
    "labevents",
    "microbiologyevents",
    "outputevents",
    "prescriptions",
]
