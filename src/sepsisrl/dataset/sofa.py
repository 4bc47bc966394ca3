"""The hourly SOFA query (``sql/sofa.sql``) with the ``sofa`` conventions of a build config."""

from __future__ import annotations

from sepsisrl.dataset.config import BuildConfig
from sepsisrl.dataset.sqlfiles import Raw, render

#: FiO2 of a PaO2/FiO2 ratio, per sofa.fio2 (columns of the ``gases`` step of sofa.sql)
FIO2 = {"blood_gas_first": "coalesce(g.fio2_bg, g.fio2_chart)", "chart": "g.fio2_chart"}

#: PaO2 rows scored, per sofa.pao2_specimen (``arterial``: 1 for a specimen typed arterial)
PAO2 = {"arterial": "arterial = 1", "arterial_or_unknown": "true"}

#: An infusion running in hour ``h`` (given i.starttime < h.endtime), per sofa.vasopressor_rate
VASO_UNTIL = {"hour_end": "i.endtime >= h.endtime", "max_in_hour": "i.endtime > h.starttime"}
VASO_WHEN = {"hour_end": "at the end of the hour", "max_in_hour": "at any time of the hour"}


def render_sofa(cfg: BuildConfig) -> str:
    s = cfg.sofa
    return render(
        "sofa",
        hours_before=cfg.sepsis.sofa_hours_before_intime,
        fio2_expr=Raw(FIO2[s.fio2]),
        pao2_filter=Raw(PAO2[s.pao2_specimen]),
        vaso_until=Raw(VASO_UNTIL[s.vasopressor_rate]),
        vaso_when=VASO_WHEN[s.vasopressor_rate],
        urine_documented=s.urine == "documented_time",
    )
