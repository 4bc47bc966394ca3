"""Hourly simulation of ICU patients: latent physiology, clinicians, treatment and death.

The simulator advances a batch of stays in lock-step, one hour at a time, from hospital
admission (hour 0) through the pre-ICU period to ICU discharge or death. Each hour:

1. observables are derived from the latent state (what a perfect monitor would show);
2. the treating clinicians decide fluids, vasopressors, antibiotics and ventilation from what
   they perceive (observables with noise, plus a bedside volume assessment that the tables do
   not contain - a little unobserved confounding); an external policy may take over fluids
   and vasopressors for chosen stays (see :mod:`sepsisrl.synth.rollout`);
3. the hour is recorded;
4. the latent state advances under that treatment, urine is produced, death may occur;
5. stable patients past their planned length of stay are discharged.

Causal structure (what a good policy can exploit):
- fluids raise intravascular volume with diminishing returns and patient-specific
  responsiveness; beyond a patient-specific positive balance they injure the lungs and raise
  the death hazard;
- vasopressors raise MAP with a saturating, patient-specific dose response; above a high dose
  they cause ischaemic harm;
- adequate perfusion (MAP and volume) clears lactate and protects kidney, liver and brain;
- timely antibiotics reduce the infection burden that drives vasoplegia, capillary leak and
  organ injury.

Random numbers are drawn with fixed shapes each hour whatever the treatment, so two runs of
the same patients under different policies share their noise (common random numbers): the
difference in their outcomes is the effect of the policy, not of the dice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sepsisrl.synth.config import SynthConfig
from sepsisrl.synth.population import (
    FIRST_LINE_AGENTS,
    VASOPRESSIN_NE_FACTOR,
    Attendings,
    Stays,
)

#: Fluid products the clinicians use; index is recorded in ``bolus_type`` / ``maint_type``.
BOLUS_FLUIDS: tuple[str, ...] = ("lactated_ringers", "nacl_09", "albumin_5", "hetastarch")
MAINTENANCE_FLUIDS: tuple[str, ...] = (
    "d5w",
    "nacl_045",
    "d5_half_ns",
    "lactated_ringers",
    "nacl_09",
)

MAX_WORKUPS = 3
_N_PHYS_NORMALS = 8
_N_CLIN_NORMALS = 4
_N_CLIN_UNIFORMS = 26


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class SimulationResult:
    """Output of a simulation: hourly records (long format) and per-stay outcomes."""

    hourly: dict[str, np.ndarray]  # one row per simulated stay-hour; 'stay' indexes the batch
    icu_end_h: np.ndarray  # hours after hospital admission the ICU stay ended (float)
    died_in_icu: np.ndarray
    death_h: np.ndarray  # hours after admission of death in the ICU (nan if survived the ICU)
    # infection work-ups, shape (n_stays, MAX_WORKUPS); nan where absent
    suspicion_h: np.ndarray
    culture_h: np.ndarray  # culture drawn (nan: none)
    culture2_h: np.ndarray  # a second, later culture (urine/sputum; nan: none)
    antibiotic_h: np.ndarray  # empiric antibiotic started (nan: none)
    antibiotic_stop_h: np.ndarray
    escalation_h: np.ndarray  # second antibiotic for resistant infections (nan: none)
    infection_cleared_h: np.ndarray
    residual_organ: np.ndarray  # organ dysfunction score at ICU discharge
    residual_infection: np.ndarray


@dataclass
class _HourNoise:
    """One hour's random numbers (drawn whatever the treatment: common random numbers)."""

    phys: np.ndarray  # standard normals (n, _N_PHYS_NORMALS): urine, infection, lactate, AR
    death: np.ndarray  # uniform: death in this hour against the hazard
    death_time: np.ndarray  # uniform: time of death within the hour
    clin_normals: np.ndarray  # (n, _N_CLIN_NORMALS): perception noise of the clinicians
    clin_uniforms: np.ndarray  # (n, _N_CLIN_UNIFORMS): clinicians' choices; the last, discharge

    @property
    def discharge(self) -> np.ndarray:
        return self.clin_uniforms[:, 25]


class Simulator:
    """Simulates ``stays`` hour by hour; call :meth:`run` or drive :meth:`step` yourself."""

    def __init__(
        self,
        cfg: SynthConfig,
        stays: Stays,
        attendings: Attendings,
        seed: np.random.SeedSequence,
        record_latent: bool = True,
    ) -> None:
        self.cfg = cfg
        self.p = cfg.physiology
        self.c = cfg.clinicians
        self.stays = stays
        self.att = attendings
        self.record_latent = record_latent
        n = stays.n
        self.n = n
        phys_seed, clin_seed = seed.spawn(2)
        self.rng_phys = np.random.Generator(np.random.PCG64(phys_seed))
        self.rng_clin = np.random.Generator(np.random.PCG64(clin_seed))
        self.h = 0
        st = stays
        a = st.attending
        self.att_fluid_bias = attendings.fluid_bias[a]
        self.att_balance_tol = attendings.balance_tolerance_l[a]
        self.att_start_map = attendings.vaso_start_map[a]
        self.att_fluid_before = attendings.fluid_before_vaso_l[a]
        self.att_speed = attendings.antibiotic_speed[a]
        self.att_over_fluid = attendings.over_fluid[a]
        self.intime_h = st.pre_icu_h.astype(np.float64)

        z = np.zeros(n)
        nan = np.full(n, np.nan)
        # latent state
        self.infection = z.copy()
        self.tone_loss = z.copy()
        self.volume = np.clip(1.0 - 0.05 * self.rng_phys.random(n), 0.8, 1.0)
        self.balance_l = z.copy()
        self.lactate = 0.8 + 0.6 * self.rng_phys.random(n)
        self.kidney = 0.02 * self.rng_phys.random(n)
        self.lung = st.lung_damage_base.copy()
        self.liver = z.copy()
        self.coag = z.copy()
        self.brain = z.copy()
        self.creatinine = st.creatinine_base.copy()
        self.bilirubin = st.bilirubin_base.copy()
        self.platelets = st.platelets_base.copy()
        self.bun = st.bun_base.copy()
        self.map_ar = z.copy()
        self.hr_ar = z.copy()
        self.temp_ar = z.copy()
        self.urine_last = st.weight_kg * 0.9
        # treatment state
        self.vaso_eq = z.copy()  # first-line agent, NE-equivalent mcg/kg/min
        self.vasopressin = z.copy()  # units/min
        self.epi_add = z.copy()  # add-on epinephrine, mcg/kg/min
        self.dobutamine = z.copy()
        self.maint_rate = z.copy()  # mL/h
        self.maint_type = np.zeros(n, dtype=np.int64)
        self.bolus_last_h = np.full(n, -100.0)
        self.fluid_icu_l = z.copy()
        self.last_vaso_h = np.full(n, -100.0)
        self.ventilated = np.zeros(n, dtype=bool)
        self.vent_start_h = z.copy()
        # infection work-ups (suspicion -> cultures and antibiotics), up to MAX_WORKUPS per stay
        w = np.full((n, MAX_WORKUPS), np.nan)
        self.n_workups = np.zeros(n, dtype=np.int64)
        self.suspicion_h = w.copy()
        self.culture_h = w.copy()
        self.culture2_h = w.copy()
        self.antibiotic_h = w.copy()
        self.antibiotic_stop_h = w.copy()
        self.escalation_h = w.copy()
        self.cleared_h = nan.copy()
        # outcome state
        self.alive = np.ones(n, dtype=bool)
        self.active = np.ones(n, dtype=bool)
        self.icu_end_h = nan.copy()
        self.death_h = nan.copy()
        self.residual_organ = nan.copy()
        self.residual_infection = nan.copy()
        # external control of fluids and vasopressors (set by a rollout driver)
        self.override = np.zeros(n, dtype=bool)
        self.override_vaso_eq = z.copy()
        self.override_fluid_ml_h = z.copy()
        # ... or, with override_titrate, the clinicians' own hourly titration kept inside an
        # action bin: NE-equivalent rate in [vaso_floor, vaso_ceil], fluid in [fluid_floor,
        # fluid_ceil] mL per hour
        self.override_titrate = np.zeros(n, dtype=bool)
        self.titrate_vaso_floor = z.copy()
        self.titrate_vaso_ceil = z.copy()
        self.titrate_fluid_floor = z.copy()
        self.titrate_fluid_ceil = z.copy()
        self._records: list[dict[str, np.ndarray]] = []

    # ------------------------------------------------------------------ observables
    def _observables(self) -> dict[str, np.ndarray]:
        st, p = self.stays, self.p
        inf = np.minimum(self.infection, 1.5)
        total_eq = self.total_vaso_eq()
        preload = np.clip(0.55 + 0.45 * self.volume, 0.45, 1.07)
        cardiac = st.cardiac_reserve * (1.0 - 0.2 * np.minimum(inf, 1.0))
        cardiac = cardiac + 0.3 * self.dobutamine / (5.0 + self.dobutamine)
        vaso = p.vaso_emax_mmhg * st.vaso_sensitivity * total_eq / (p.vaso_ec50 + total_eq)
        mean_ap = (
            st.map_base
            * (1.0 - p.tone_loss_per_infection * self.tone_loss)
            * preload
            * (0.75 + 0.25 * np.minimum(cardiac, 1.2))
            + vaso
            + self.map_ar
        )
        mean_ap = np.clip(mean_ap, 25.0, 160.0)
        pulse_p = np.clip(48.0 * preload * (1.0 + 0.004 * (st.age - 60.0)), 18.0, 90.0)
        temp = 37.0 + st.fever_sign * 1.7 * np.minimum(inf, 1.2) + self.temp_ar
        hr = (
            st.hr_base
            + 45.0 * np.maximum(0.0, 1.0 - self.volume)
            + 22.0 * inf
            + 8.0 * np.maximum(temp - 37.0, 0.0)
            + 150.0 * self.epi_add
            + 0.15 * self.vaso_eq * (st.first_line == FIRST_LINE_AGENTS.index("dopamine")) * 100
            + self.hr_ar
        )
        perfusion = _sigmoid((mean_ap - p.perfusion_map_mid) / p.perfusion_map_scale) * np.clip(
            0.55 + 0.45 * np.minimum(self.volume, 1.0) * np.minimum(cardiac, 1.0), 0.0, 1.0
        )
        vent = self.ventilated
        pf = np.clip(480.0 * (1.0 - 0.82 * self.lung) * np.where(vent, 1.1, 1.0), 40.0, 560.0)
        fio2 = np.where(
            vent,
            np.clip(np.round((0.3 + 0.75 * self.lung**1.5) * 20) / 20, 0.3, 1.0),
            np.where(pf < 300, 0.32, 0.21),
        )
        peep = np.where(vent, np.clip(np.round(5 + 10 * self.lung), 5, 18), 0.0)
        pao2 = np.clip(pf * fio2, 30.0, 600.0)
        spo2 = 100.0 / (1.0 + 23400.0 / (pao2**3 + 150.0 * pao2))
        lac = self.lactate
        hco3 = np.clip(24.5 - 0.85 * (lac - 1.0) - 3.0 * self.kidney, 5.0, 40.0)
        paco2 = np.where(vent, 40.0, np.clip(40.0 - 1.1 * (24.0 - hco3), 22.0, 60.0))
        ph = 6.1 + np.log10(hco3 / (0.0307 * paco2))
        base_excess = 0.93 * (hco3 - 24.4 + 14.8 * (ph - 7.4))
        # GCS: neurological function, and sedation of ventilated patients
        neuro = 15.0 - 12.0 * self.brain**1.1
        sed = np.where(vent, st.sedation_depth, 0.0)
        gcs_e = np.clip(np.round(1 + 3 * (neuro - 3) / 12 - 3 * sed), 1, 4)
        gcs_v = np.where(vent, 1.0, np.clip(np.round(1 + 4 * (neuro - 3) / 12), 1, 5))
        gcs_m = np.clip(np.round(1 + 5 * (neuro - 3) / 12 - 4 * sed), 1, 6)
        wbc = st.wbc_base * np.clip(1.0 + 1.3 * inf * st.leukocyte_sign, 0.2, 4.0)
        dilution = 1.0 - 0.03 * np.clip(self.balance_l, 0.0, 10.0)
        hgb = st.haemoglobin_base * dilution
        return {
            "map": mean_ap,
            "sbp": mean_ap + 2.0 * pulse_p / 3.0,
            "dbp": mean_ap - pulse_p / 3.0,
            "hr": np.clip(hr, 30.0, 200.0),
            "rr": np.where(
                vent,
                18.0 + 6.0 * self.lung,
                15.0
                + 8.0 * np.minimum(inf, 1.0)
                + 10.0 * self.lung
                + 1.5 * np.maximum(lac - 2.0, 0.0),
            ),
            "temp": temp,
            "spo2": spo2,
            "fio2": fio2,
            "peep": peep,
            "pao2": pao2,
            "pf": pf,
            "paco2": paco2,
            "ph": ph,
            "hco3": hco3,
            "base_excess": base_excess,
            "lactate": lac,
            "creatinine": self.creatinine,
            "bun": self.bun,
            "bilirubin": self.bilirubin,
            "albumin": np.clip(
                st.albumin_base
                - 0.7 * np.minimum(inf, 1.0)
                - 0.04 * np.clip(self.balance_l, 0, 10),
                1.0,
                5.5,
            ),
            "sodium": st.sodium_base + 0.3 * np.clip(self.balance_l, -3, 8),
            "potassium": 4.0 + 1.1 * self.kidney + 0.2 * (lac > 4),
            "glucose": 115.0 + 55.0 * inf + 400.0 * self.epi_add,
            "inr": 1.05 + 1.2 * self.coag + 1.6 * self.liver + 0.5 * st.cirrhosis,
            "ptt": 29.0 + 28.0 * self.coag + 6.0 * st.cirrhosis,
            "wbc": wbc,
            "haemoglobin": hgb,
            "haematocrit": 3.0 * hgb + 1.0,
            "platelets": self.platelets,
            "gcs_eye": gcs_e,
            "gcs_verbal": gcs_v,
            "gcs_motor": gcs_m,
            "perfusion": perfusion,
            "cardiac": cardiac,
        }

    def total_vaso_eq(self) -> np.ndarray:
        """Total vasopressor dose, NE-equivalent mcg/kg/min (all concurrent agents summed)."""
        return self.vaso_eq + self.epi_add + VASOPRESSIN_NE_FACTOR * self.vasopressin

    # ------------------------------------------------------------------ clinicians
    def _clinicians(
        self, obs: dict[str, np.ndarray], z: np.ndarray, u: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The treating team's decisions for this hour (vectorised over stays): what they see
        (``z``: perception noise), then boluses, maintenance fluid and vasoactive drugs
        (``u``: the uniforms of their choices, columns 0-4, 5-8 and 9-14)."""
        c = self.c
        in_icu = self.h >= self.intime_h
        map_seen = obs["map"] + c.map_perception_sd * z[:, 0]
        lac_seen = obs["lactate"] * (1.0 + 0.08 * z[:, 1])
        vol_seen = self.volume + c.volume_perception_sd * z[:, 2]
        return {
            **self._boluses(map_seen, lac_seen, vol_seen, u),
            **self._maintenance_fluid(in_icu, u),
            **self._vasoactive_drugs(obs, map_seen, lac_seen, in_icu, u),
        }

    def _boluses(
        self, map_seen: np.ndarray, lac_seen: np.ndarray, vol_seen: np.ndarray, u: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Fluid boluses: given for low MAP, high lactate, low urine output or a dry look,
        held back by a positive balance beyond the attending's tolerance."""
        c, st, h = self.c, self.stays, self.h
        uo_per_kg = self.urine_last / st.weight_kg
        score = (
            c.bolus_map_weight * np.maximum(0.0, 65.0 - map_seen) / 10.0
            + c.bolus_lactate_weight * np.maximum(0.0, lac_seen - 2.0) / 2.0
            + c.bolus_urine_weight * (uo_per_kg < 0.5)
            + c.bolus_volume_weight * np.maximum(0.0, 1.0 - vol_seen) * 3.0
            + self.att_fluid_bias
            - c.bolus_balance_weight * np.maximum(0.0, self.balance_l - self.att_balance_tol)
        )
        p_bolus = _sigmoid(score - c.bolus_intercept)
        p_bolus = np.where(h - self.bolus_last_h <= 1, 0.5 * p_bolus, p_bolus)
        bolus = u[:, 0] < p_bolus
        bolus_ml = np.where(u[:, 1] < 0.15, 250.0, np.where(u[:, 1] < 0.85, 500.0, 1000.0))
        bolus_type = np.searchsorted(np.array([0.47, 0.93, 0.985]), u[:, 2])
        bolus_ml = np.where(
            bolus_type == BOLUS_FLUIDS.index("albumin_5"), np.minimum(bolus_ml, 500.0), bolus_ml
        )
        return {
            "bolus_ml": np.where(bolus, bolus_ml, 0.0),
            "bolus_type": bolus_type,
            "bolus_minute": np.floor(u[:, 3] * 50.0),
            "bolus_duration_min": np.where(u[:, 4] < 0.5, 30.0, 60.0),
        }

    def _maintenance_fluid(self, in_icu: np.ndarray, u: np.ndarray) -> dict[str, np.ndarray]:
        """Maintenance fluid: starts at ICU admission for some, toggles rarely."""
        c, h = self.c, self.h
        start_icu = in_icu & (h - 1 < self.intime_h)
        maint_on = np.where(
            start_icu,
            u[:, 5] < c.maintenance_fraction + 0.2 * self.att_over_fluid,
            (self.maint_rate > 0) ^ (u[:, 5] < 0.012),
        )
        maint_on &= ~((self.balance_l > self.att_balance_tol + 3.0) & (u[:, 6] < 0.2))
        new_rate = np.where(self.att_over_fluid, 125.0, 75.0) + 25.0 * np.floor(u[:, 7] * 3) - 25.0
        maint_rate = np.where(
            maint_on, np.where(self.maint_rate > 0, self.maint_rate, new_rate), 0.0
        )
        maint_type = np.where(
            self.maint_rate > 0,
            self.maint_type,
            np.floor(u[:, 8] * len(MAINTENANCE_FLUIDS)).astype(np.int64),
        )
        return {"maint_rate": maint_rate, "maint_type": maint_type}

    def _vasoactive_drugs(
        self,
        obs: dict[str, np.ndarray],
        map_seen: np.ndarray,
        lac_seen: np.ndarray,
        in_icu: np.ndarray,
        u: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Vasopressors (ICU only) titrated to a MAP target, vasopressin and epinephrine added
        at high doses, dobutamine for a failing heart."""
        c = self.c
        on = self.vaso_eq > 0
        start = (
            ~on
            & in_icu
            & (map_seen < self.att_start_map)
            & ((self.fluid_icu_l >= self.att_fluid_before) | (map_seen < 50.0))
            & (u[:, 9] < 0.6)
        )
        vaso = np.where(start, 0.04 + 0.06 * u[:, 10], self.vaso_eq)
        gap = c.vaso_target_map - map_seen
        up = on & (gap > 2.0) & (u[:, 10] < 0.7)
        down = on & (gap < -10.0) & (u[:, 10] < 0.5)
        vaso = np.where(up, vaso + c.vaso_step * (1.0 + np.minimum(gap, 20.0) / 10.0), vaso)
        vaso = np.where(down, vaso - c.vaso_step, vaso)
        vaso = np.where(on & (vaso < 0.02), 0.0, np.minimum(vaso, c.vaso_max))
        vaso = np.round(vaso, 3)
        vp = np.where(
            (self.vasopressin == 0) & (vaso > c.vasopressin_threshold) & (u[:, 11] < 0.15),
            np.where(u[:, 12] < 0.7, 0.04, 0.03),
            np.where(
                (self.vasopressin > 0) & (vaso < 0.06) & (u[:, 11] < 0.3), 0.0, self.vasopressin
            ),
        )
        epi = np.where(
            (self.epi_add == 0) & (vaso > 0.6) & (u[:, 13] < 0.03),
            0.05,
            np.where((self.epi_add > 0) & (vaso < 0.3), 0.0, self.epi_add),
        )
        dob = np.where(
            (self.dobutamine == 0)
            & (obs["cardiac"] < 0.65)
            & (lac_seen > 3)
            & (map_seen > 65)
            & (u[:, 14] < 0.03),
            np.where(u[:, 12] < 0.5, 2.5, 5.0),
            np.where(
                (self.dobutamine > 0) & (lac_seen < 2) & (u[:, 14] < 0.2), 0.0, self.dobutamine
            ),
        )
        no_icu = ~in_icu
        vaso[no_icu] = 0.0
        vp[no_icu] = 0.0
        epi[no_icu] = 0.0
        dob[no_icu] = 0.0
        return {"vaso_eq": vaso, "vasopressin": vp, "epi_add": epi, "dobutamine": dob}

    def _infection_management(
        self, obs: dict[str, np.ndarray], z: np.ndarray, u: np.ndarray
    ) -> None:
        """Suspicion of infection, cultures, antibiotics (scheduled as event times)."""
        c, st, h = self.c, self.stays, self.h
        lac_seen = obs["lactate"] * (1.0 + 0.08 * z[:, 1])
        map_seen = obs["map"] + c.map_perception_sd * z[:, 0]
        signs = (
            1.0 * (obs["temp"] > 38.3)
            + 0.7 * (obs["temp"] < 36.0)
            + 0.8 * (obs["wbc"] > 12.0)
            + 0.8 * (map_seen < 65.0)
            + 0.6 * (lac_seen > 2.0)
            + c.suspicion_gestalt_weight * np.maximum(self.infection + 0.05 * z[:, 3], 0.0)
        )
        p = _sigmoid(c.suspicion_intercept + signs) * self.att_speed + c.false_suspicion_per_h
        # a new work-up needs no antibiotic course running (or just finished) and a free slot
        last = np.maximum(self.n_workups - 1, 0)
        last_stop = self.antibiotic_stop_h[np.arange(self.n), last]
        busy = (self.n_workups > 0) & ~(h > last_stop + 12.0)
        newly = ~busy & (self.n_workups < MAX_WORKUPS) & self.active & (u[:, 0] < p)
        if not newly.any():
            return
        idx = np.flatnonzero(newly)
        k = self.n_workups[idx]
        self.n_workups[idx] += 1
        self.suspicion_h[idx, k] = h
        delay = c.antibiotic_delay_h.median * np.exp(c.antibiotic_delay_h.sigma * z[idx, 3])
        delay = delay / self.att_speed[idx]
        order = u[idx, 1]
        culture_first = order < c.culture_first_fraction
        abx_only = order > 1.0 - c.culture_missing_fraction
        t0 = h + u[idx, 2]
        culture = np.where(culture_first, t0, t0 + delay + 30.0 * u[idx, 3] ** 2)
        culture = np.where(abx_only, np.nan, culture)
        abx = np.maximum(np.where(culture_first, t0 + delay, t0), h + 0.05)
        self.culture_h[idx, k] = culture
        self.antibiotic_h[idx, k] = abx
        infected = self.infection[idx] > 0
        course = np.where(infected, 24.0 * (5.0 + 5.0 * u[idx, 4]), 48.0 + 24.0 * u[idx, 4])
        self.antibiotic_stop_h[idx, k] = abx + course
        self.escalation_h[idx, k] = np.where(
            infected & st.resistant[idx], abx + 36.0 + 36.0 * u[idx, 5], np.nan
        )
        self.culture2_h[idx, k] = np.where(
            u[idx, 6] < 0.45, np.nan_to_num(culture, nan=abx) + 2.0 * u[idx, 7], np.nan
        )

    def _ventilation(self, obs: dict[str, np.ndarray], u: np.ndarray) -> None:
        c, st, h = self.c, self.stays, self.h
        in_icu = h >= self.intime_h
        at_admission = in_icu & (h - 1 < self.intime_h) & st.ventilated_at_admission
        neuro_gcs = 15.0 - 12.0 * self.brain**1.1
        need = (obs["pf"] < 150.0) | (neuro_gcs <= 8.0) | (obs["lactate"] > 7.0)
        intubate = at_admission | (
            ~self.ventilated & in_icu & need & (u[:, 0] < c.intubation_per_h)
        )
        ready = (
            (obs["pf"] > 230.0)
            & (self.infection < 0.4)
            & (self.total_vaso_eq() < 0.1)
            & (self.brain < 0.35)
            & (h - self.vent_start_h >= 12.0)
        )
        extubate = self.ventilated & ready & (u[:, 1] < c.extubation_per_h)
        self.vent_start_h = np.where(intubate & ~self.ventilated, float(h), self.vent_start_h)
        self.ventilated = (self.ventilated | intubate) & ~extubate

    # ------------------------------------------------------------------ one hour
    def step(self) -> None:
        """Advance every active stay by one hour (the five stages of the module docstring)."""
        noise = self._draw_noise()
        act = self.active
        in_icu = self.h >= self.intime_h
        self._start_infections(act)
        dec = self._decide(noise, in_icu)
        total_eq = self._apply_treatment(dec)
        obs = self._observables()  # the hour's effective treatment uses the new doses
        perf = obs["perfusion"]
        urine = self._advance_fluids(dec, perf, noise.phys, in_icu)
        excess_vaso = np.maximum(total_eq - self.p.high_vaso_threshold, 0.0)
        overload = np.maximum(self.balance_l - self.stays.fluid_tolerance_l, 0.0)
        self._advance_infection(noise.phys)
        self._advance_organs(perf, excess_vaso, overload, noise.phys)
        self._advance_noise(noise.phys)
        organ = self.organ_score(perf)
        hazard = self._hazard(organ, excess_vaso, overload)
        dies = act & in_icu & (noise.death < -np.expm1(-hazard))
        self._record(act, obs, dec, in_icu, urine, total_eq, organ, hazard)
        self._end_stays(act, in_icu, dies, noise.death_time, noise.discharge, perf, organ)
        self.h += 1

    def _draw_noise(self) -> _HourNoise:
        """The hour's random numbers, in fixed shapes whatever happens (common random numbers)."""
        n = self.n
        phys = self.rng_phys.standard_normal((n, _N_PHYS_NORMALS))
        death = self.rng_phys.random(n)
        death_time = self.rng_phys.random(n)
        clin_normals = self.rng_clin.standard_normal((n, _N_CLIN_NORMALS))
        clin_uniforms = self.rng_clin.random((n, _N_CLIN_UNIFORMS))
        return _HourNoise(phys, death, death_time, clin_normals, clin_uniforms)

    def _start_infections(self, act: np.ndarray) -> None:
        st = self.stays
        start_inf = (st.infection_h == self.h) & act
        self.infection = np.where(start_inf, st.infection_severity, self.infection)

    def _decide(self, noise: _HourNoise, in_icu: np.ndarray) -> dict[str, np.ndarray]:
        """Ventilation, infection work-ups and the hour's treatment (clinicians or policy)."""
        zc, uc = noise.clin_normals, noise.clin_uniforms
        self._ventilation(self._observables(), uc[:, 23:25])
        obs = self._observables()
        self._infection_management(obs, zc, uc[:, 15:23])
        dec = self._clinicians(obs, zc, uc[:, :15])
        self._external_control(dec, in_icu)
        return dec

    def _external_control(self, dec: dict[str, np.ndarray], in_icu: np.ndarray) -> None:
        """Fluids and vasopressors of the stays an external policy controls (in place): held
        doses, or (``override_titrate``) the clinicians' titration kept inside the policy's bins."""
        ctl = self.override & in_icu
        if not ctl.any():
            return
        tit = ctl & self.override_titrate
        if tit.any():
            self._titrate_within(dec, tit)
        ext = ctl & ~tit
        if not ext.any():
            return
        dec["vaso_eq"] = np.where(ext, self.override_vaso_eq, dec["vaso_eq"])
        for key in ("vasopressin", "epi_add", "dobutamine", "bolus_ml"):
            dec[key] = np.where(ext, 0.0, dec[key])
        dec["maint_rate"] = np.where(ext, self.override_fluid_ml_h, dec["maint_rate"])
        dec["maint_type"] = np.where(ext, MAINTENANCE_FLUIDS.index("nacl_09"), dec["maint_type"])

    def _titrate_within(self, dec: dict[str, np.ndarray], m: np.ndarray) -> None:
        """The clinicians' hour, moved into the policy's bins for the stays ``m`` (in place).

        Vasopressors: the total NE-equivalent rate the team chose is clipped into
        [titrate_vaso_floor, titrate_vaso_ceil], every agent scaled by the same factor; a team
        that chose none starts its first-line agent at the floor. Fluids: the hour's volume
        (boluses + maintenance) is clipped into [titrate_fluid_floor, titrate_fluid_ceil] mL,
        scaled the same way, or run as normal saline when the team gave none. Bounding every
        hour (not only the window's sum) keeps any 4 hours - however the build's window lies on
        the hourly clock - inside the bins. Dobutamine stays theirs.
        """
        total = dec["vaso_eq"] + dec["epi_add"] + VASOPRESSIN_NE_FACTOR * dec["vasopressin"]
        target = np.clip(total, self.titrate_vaso_floor, self.titrate_vaso_ceil)
        scale = np.divide(target, total, out=np.zeros_like(total), where=total > 0)
        fresh = (total <= 0) & (target > 0)
        dec["vaso_eq"] = np.where(
            m, np.where(fresh, target, dec["vaso_eq"] * scale), dec["vaso_eq"]
        )
        for key in ("vasopressin", "epi_add"):
            dec[key] = np.where(m & ~fresh, dec[key] * scale, np.where(m, 0.0, dec[key]))
        volume = dec["bolus_ml"] + dec["maint_rate"]
        hour = np.clip(volume, self.titrate_fluid_floor, self.titrate_fluid_ceil)
        f = np.divide(hour, volume, out=np.zeros_like(volume), where=volume > 0)
        none = (volume <= 0) & (hour > 0)
        dec["bolus_ml"] = np.where(m, dec["bolus_ml"] * f, dec["bolus_ml"])
        dec["maint_rate"] = np.where(
            m, np.where(none, hour, dec["maint_rate"] * f), dec["maint_rate"]
        )
        dec["maint_type"] = np.where(
            m & none, MAINTENANCE_FLUIDS.index("nacl_09"), dec["maint_type"]
        )

    def _apply_treatment(self, dec: dict[str, np.ndarray]) -> np.ndarray:
        """Set the hour's doses; returns the total vasopressor dose (NE-equivalent)."""
        h = self.h
        self.vaso_eq = dec["vaso_eq"]
        self.vasopressin = dec["vasopressin"]
        self.epi_add = dec["epi_add"]
        self.dobutamine = dec["dobutamine"]
        self.maint_rate = dec["maint_rate"]
        self.maint_type = dec["maint_type"]
        self.bolus_last_h = np.where(dec["bolus_ml"] > 0, float(h), self.bolus_last_h)
        total_eq = self.total_vaso_eq()
        self.last_vaso_h = np.where(total_eq > 0, float(h), self.last_vaso_h)
        return total_eq

    # ------------------------------------------------------------------ latent state
    def _advance_fluids(
        self, dec: dict[str, np.ndarray], perf: np.ndarray, z: np.ndarray, in_icu: np.ndarray
    ) -> np.ndarray:
        """Intravascular volume, urine and fluid balance over the hour; returns urine (mL)."""
        p, st = self.p, self.stays
        fluid_l = (dec["bolus_ml"] + dec["maint_rate"]) / 1000.0
        colloid = (dec["bolus_type"] >= BOLUS_FLUIDS.index("albumin_5")) & (dec["bolus_ml"] > 0)
        expansion = np.where(colloid, 1.6, 1.0)
        inf = np.minimum(self.infection, 1.5)
        saturation = _sigmoid(-(self.volume - p.volume_saturation) / 0.05)
        gain = fluid_l * expansion * p.volume_per_litre * st.fluid_response * saturation
        leak = p.capillary_leak_per_h * inf * (1.0 + 0.5 * st.comorbidity)
        excretion = (
            p.volume_excretion_per_h * np.maximum(self.volume - 1.0, 0.0) * (1.0 - self.kidney)
        )
        refill = 0.004 * np.maximum(1.0 - self.volume, 0.0) * (inf < 0.1)
        self.volume = np.clip(self.volume + gain - leak - 0.002 - excretion + refill, 0.35, 1.6)
        urine = (
            st.weight_kg
            * 1.0
            * perf
            * (1.0 - self.kidney) ** 2
            * np.clip(self.volume, 0.5, 1.4)
            * np.exp(0.25 * z[:, 0])
        )
        urine = np.maximum(urine, 0.0)
        self.balance_l = self.balance_l + fluid_l - urine / 1000.0 - 0.035
        self.urine_last = urine
        self.fluid_icu_l = np.where(in_icu, self.fluid_icu_l + fluid_l, self.fluid_icu_l)
        return urine

    def _advance_infection(self, z: np.ndarray) -> None:
        """Growth of the infection, killing by antibiotics (weak until escalation if resistant)."""
        st, h = self.stays, self.h
        abx_on = ((h >= self.antibiotic_h + 1.0) & (h < self.antibiotic_stop_h)).any(axis=1)
        kill = np.where(abx_on, st.antibiotic_kill, 0.0)
        weak = st.resistant & ~(h >= self.escalation_h).any(axis=1)
        kill = np.where(weak, 0.25 * kill, kill)
        growth = st.infection_growth * self.infection * (1.0 - self.infection / 1.5)
        self.infection = np.clip(
            self.infection + growth - kill * self.infection + 0.01 * self.infection * z[:, 1],
            0.0,
            2.0,
        )
        cleared = (self.infection > 0) & (self.infection < 0.01) & abx_on
        self.cleared_h = np.where(cleared & np.isnan(self.cleared_h), float(h), self.cleared_h)
        self.infection = np.where(cleared, 0.0, self.infection)

    def _advance_organs(
        self, perf: np.ndarray, excess_vaso: np.ndarray, overload: np.ndarray, z: np.ndarray
    ) -> None:
        """Vascular tone, lactate, organ injury and recovery, and the labs that follow them."""
        p, st = self.p, self.stays
        deficit = 1.0 - perf
        inf = np.minimum(self.infection, 1.5)
        quiet = inf < 0.3
        self.tone_loss += (np.minimum(inf, 1.3) - self.tone_loss) / p.tone_time_constant_h
        self.lactate = np.clip(
            self.lactate
            + p.lactate_production * deficit * (1.0 + 0.5 * np.minimum(inf, 1.0))
            + 0.08 * np.minimum(inf, 1.0)
            + 0.5 * excess_vaso
            - p.lactate_clearance_per_h
            * (self.lactate - 0.9)
            * (1.0 - 0.6 * self.liver)
            * (0.3 + 0.7 * perf)
            + 0.05 * z[:, 2],
            0.4,
            25.0,
        )
        rec = p.organ_recovery_per_h
        self.kidney = np.clip(
            self.kidney
            + (p.kidney_injury_per_h * deficit + 0.008 * np.minimum(inf, 1.0) + 0.02 * excess_vaso)
            * (1.0 - self.kidney)
            - p.kidney_recovery_per_h * self.kidney * perf * quiet,
            0.0,
            1.0,
        )
        self.lung = np.clip(
            self.lung
            + (
                p.lung_injury_per_h * np.minimum(inf, 1.2)
                + p.lung_overload_injury_per_l_h * overload
            )
            * (1.0 - self.lung)
            - p.lung_recovery_per_h
            * np.maximum(self.lung - st.lung_damage_base, 0.0)
            * quiet
            * (overload == 0),
            0.0,
            1.0,
        )
        self.liver = np.clip(
            self.liver
            + p.liver_injury_per_h
            * (deficit + 0.4 * np.minimum(inf, 1.0) + excess_vaso)
            * (1.0 - self.liver)
            - 0.3 * rec * self.liver * (perf > 0.8) * quiet,
            0.0,
            1.0,
        )
        self.coag = np.clip(
            self.coag
            + p.coag_injury_per_h * np.minimum(inf, 1.2) * (1.0 - self.coag)
            - 0.5 * rec * self.coag * quiet,
            0.0,
            1.0,
        )
        self.brain = np.clip(
            self.brain
            + p.brain_injury_per_h * (deficit + 0.5 * np.minimum(inf, 1.0)) * (1.0 - self.brain)
            - 2.0 * rec * self.brain * (perf > 0.8) * (inf < 0.4),
            0.0,
            1.0,
        )
        self.creatinine += (st.creatinine_base * (1.0 + 3.2 * self.kidney) - self.creatinine) / 18.0
        self.bun += (st.bun_base * (1.0 + 2.5 * self.kidney) - self.bun) / 24.0
        self.bilirubin += (st.bilirubin_base + 9.0 * self.liver**1.3 - self.bilirubin) / 24.0
        self.platelets += (st.platelets_base * (1.0 - 0.85 * self.coag) - self.platelets) / 18.0

    def _advance_noise(self, z: np.ndarray) -> None:
        """Autocorrelated hour-to-hour variation of MAP, heart rate and temperature."""
        self.map_ar = 0.8 * self.map_ar + 0.6 * self.p.map_noise_sd * z[:, 3]
        self.hr_ar = 0.8 * self.hr_ar + 0.6 * 5.0 * z[:, 4]
        self.temp_ar = 0.9 * self.temp_ar + 0.44 * 0.25 * z[:, 5]

    def _hazard(
        self, organ: np.ndarray, excess_vaso: np.ndarray, overload: np.ndarray
    ) -> np.ndarray:
        """Hourly death hazard in the ICU."""
        p, st = self.p, self.stays
        return np.exp(
            p.hazard_intercept
            + p.hazard_organ * organ
            + p.hazard_lactate * np.minimum(self.lactate, 15.0)
            + p.hazard_high_vaso * excess_vaso / 0.3
            + p.hazard_overload * overload
            + p.hazard_age_per_year * (st.age - 65.0)
            + p.hazard_comorbidity * st.comorbidity
        )

    # ------------------------------------------------------------------ record and outcome
    def _record(
        self,
        act: np.ndarray,
        obs: dict[str, np.ndarray],
        dec: dict[str, np.ndarray],
        in_icu: np.ndarray,
        urine: np.ndarray,
        total_eq: np.ndarray,
        organ: np.ndarray,
        hazard: np.ndarray,
    ) -> None:
        """Append the hour's row of every active stay (float64 stored as float32)."""
        rec_row = {
            "stay": np.flatnonzero(act).astype(np.int32),
            "h": np.full(int(act.sum()), self.h, dtype=np.int32),
        }
        row = dict(obs)
        row.update(dec)
        row["in_icu"] = in_icu
        row["ventilated"] = self.ventilated
        row["urine_ml"] = urine
        row["total_vaso_eq"] = total_eq
        if self.record_latent:
            row.update(
                infection=self.infection,
                volume=self.volume,
                tone_loss=self.tone_loss,
                balance_l=self.balance_l,
                kidney=self.kidney,
                lung=self.lung,
                liver=self.liver,
                coag=self.coag,
                brain=self.brain,
                organ_score=organ,
                hazard=hazard,
            )
        for key, value in row.items():
            arr = np.asarray(value)
            if arr.dtype == np.float64:
                arr = arr.astype(np.float32)
            rec_row[key] = arr[act]
        self._records.append(rec_row)

    def _end_stays(
        self,
        act: np.ndarray,
        in_icu: np.ndarray,
        dies: np.ndarray,
        u_death_time: np.ndarray,
        u_discharge: np.ndarray,
        perf: np.ndarray,
        organ: np.ndarray,
    ) -> None:
        """Deaths, and discharge of stable patients past their planned length of stay."""
        h, st = self.h, self.stays
        death_time = h + np.clip(u_death_time, 0.02, 0.98)
        self.death_h = np.where(dies, death_time, self.death_h)
        self.alive &= ~dies
        los = h + 1 - self.intime_h
        stable = (
            in_icu
            & ~self.ventilated
            & (h - self.last_vaso_h >= 6)
            & (self.lactate < 2.5)
            & (perf > 0.7)
            & (
                (self.infection < 0.3)
                | (h - np.nanmax(np.nan_to_num(self.antibiotic_h, nan=-1e9), axis=1) >= 24)
            )
        )
        discharge = (
            act
            & self.alive
            & (
                ((los >= st.planned_los_h) & stable & (u_discharge < 0.5))
                | (los >= self.cfg.population.max_icu_los_h)
            )
        )
        ends = act & (dies | discharge)
        self.icu_end_h = np.where(
            dies, self.death_h, np.where(discharge, float(h + 1), self.icu_end_h)
        )
        self.residual_organ = np.where(ends, organ, self.residual_organ)
        self.residual_infection = np.where(ends, self.infection, self.residual_infection)
        self.active = act & ~ends

    def organ_score(self, perfusion: np.ndarray) -> np.ndarray:
        """Weighted organ dysfunction (0 = none) that drives the death hazard."""
        return (
            self.kidney
            + 1.3 * self.lung_excess()
            + 0.8 * self.liver
            + 0.7 * self.coag
            + 0.8 * self.brain
            + 2.0 * (1.0 - perfusion)
        )

    def lung_excess(self) -> np.ndarray:
        return np.maximum(self.lung - 0.5 * self.stays.lung_damage_base, 0.0)

    def run(self, max_hours: int | None = None) -> SimulationResult:
        limit = (
            max_hours
            if max_hours is not None
            else int(self.intime_h.max()) + self.cfg.population.max_icu_los_h + 2
        )
        while self.active.any() and self.h < limit:
            self.step()
        return self.result()

    def result(self) -> SimulationResult:
        keys = self._records[0].keys() if self._records else []
        hourly = {k: np.concatenate([r[k] for r in self._records]) for k in keys}
        return SimulationResult(
            hourly=hourly,
            icu_end_h=self.icu_end_h.copy(),
            died_in_icu=~np.isnan(self.death_h),
            death_h=self.death_h.copy(),
            suspicion_h=self.suspicion_h.copy(),
            culture_h=self.culture_h.copy(),
            culture2_h=self.culture2_h.copy(),
            antibiotic_h=self.antibiotic_h.copy(),
            antibiotic_stop_h=self.antibiotic_stop_h.copy(),
            escalation_h=self.escalation_h.copy(),
            infection_cleared_h=self.cleared_h.copy(),
            residual_organ=self.residual_organ.copy(),
            residual_infection=self.residual_infection.copy(),
        )
