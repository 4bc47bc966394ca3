"""The report's sections, in page order, each addressed by its name.

A section is a name (stable; tests and callers use it), a title (its heading on the page) and a
function of the :class:`~sepsisrl.study.report.data.Study` that returns the blocks under the
heading. To add a section, write its function in the module of its theme and add one line to
:data:`SECTIONS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sepsisrl.study.report.blocks import Block, Heading
from sepsisrl.study.report.data import Study
from sepsisrl.study.report.sections import dataset, final, overview, selection, training, truth


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    build: Callable[[Study], list[Block]]

    def blocks(self, study: Study) -> list[Block]:
        return [Heading(self.title), *self.build(study)]


SECTIONS: tuple[Section, ...] = (
    Section("study", "Study", overview.study),
    Section("cohort", "Cohort flow", dataset.cohort_flow),
    Section("missingness", "Feature missingness", dataset.missingness),
    Section("actions", "Action distributions", dataset.logged_actions),
    Section("training", "Training curves", training.training_curves),
    Section("selection", "Model selection (validation split)", selection.model_selection),
    Section("seed-variance", "Seed variance of the finalists", selection.seed_variance),
    Section("test", "Test split: WIS and FQE with 95% CIs", final.final_estimates),
    Section("fqe-support", "FQE versus support (validation)", selection.fqe_versus_support),
    Section("heatmaps", "Action heatmaps of the selected policy (test)", final.action_heatmaps),
    Section("subgroups", "Subgroup safety of the selected policy (test)", final.subgroup_safety),
    Section("truth", "Estimates versus truth", truth.estimates_versus_truth),
    Section("final-table", "Final table (model card layout)", final.final_table),
    Section("limitations", "Limitations", overview.limitations),
)
_BY_NAME = {s.name: s for s in SECTIONS}


def section(name: str) -> Section:
    """The section called ``name`` (KeyError naming the known ones otherwise)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no report section {name!r}; known: {', '.join(_BY_NAME)}") from None


def build_blocks(study: Study, names: tuple[str, ...] | None = None) -> list[Block]:
    """The page: its preamble, then every section (or only those ``names``), in page order."""
    chosen = SECTIONS if names is None else tuple(section(n) for n in names)
    return [*overview.preamble(study), *(b for s in chosen for b in s.blocks(study))]
