"""Item dictionaries of the synthetic hospital (its ``d_items`` and ``d_labitems``).

The ids, labels and units follow MIMIC-IV (MetaVision) for every item the pipeline reads.
The world's catalogue is deliberately independent of the pipeline's configuration: the
pipeline must find its items in the data, as it would in a real MIMIC-IV download.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class Item:
    itemid: int
    label: str
    abbreviation: str
    linksto: str
    category: str
    unitname: str | None
    param_type: str
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class LabItem:
    itemid: int
    label: str
    fluid: str
    category: str
    unit: str | None
    ref_low: float | None
    ref_high: float | None
    decimals: int


# ---------------------------------------------------------------- chartevents (physiology)
CHART = {
    "hr": Item(
        220045, "Heart Rate", "HR", "chartevents", "Routine Vital Signs", "bpm", "Numeric", 60, 100
    ),
    "art_sbp": Item(
        220050,
        "Arterial Blood Pressure systolic",
        "ABPs",
        "chartevents",
        "Routine Vital Signs",
        "mmHg",
        "Numeric",
        90,
        140,
    ),
    "art_dbp": Item(
        220051,
        "Arterial Blood Pressure diastolic",
        "ABPd",
        "chartevents",
        "Routine Vital Signs",
        "mmHg",
        "Numeric",
        60,
        90,
    ),
    "art_map": Item(
        220052,
        "Arterial Blood Pressure mean",
        "ABPm",
        "chartevents",
        "Routine Vital Signs",
        "mmHg",
        "Numeric",
        70,
        110,
    ),
    "nibp_sbp": Item(
        220179,
        "Non Invasive Blood Pressure systolic",
        "NBPs",
        "chartevents",
        "Routine Vital Signs",
        "mmHg",
        "Numeric",
        90,
        140,
    ),
    "nibp_dbp": Item(
        220180,
        "Non Invasive Blood Pressure diastolic",
        "NBPd",
        "chartevents",
        "Routine Vital Signs",
        "mmHg",
        "Numeric",
        60,
        90,
    ),
    "nibp_map": Item(
        220181,
        "Non Invasive Blood Pressure mean",
        "NBPm",
        "chartevents",
        "Routine Vital Signs",
        "mmHg",
        "Numeric",
        70,
        110,
    ),
    "art2_sbp": Item(
        225309,
        "ART BP Systolic",
        "ART BP Systolic",
        "chartevents",
        "Routine Vital Signs",
        "mmHg",
        "Numeric",
        90,
        140,
    ),
    "art2_dbp": Item(
        225310,
        "ART BP Diastolic",
        "ART BP Diastolic",
        "chartevents",
        "Routine Vital Signs",
        "mmHg",
        "Numeric",
        60,
        90,
    ),
    "art2_map": Item(
        225312,
        "ART BP Mean",
        "ART BP Mean",
        "chartevents",
        "Routine Vital Signs",
        "mmHg",
        "Numeric",
        70,
        110,
    ),
    "rr": Item(
        220210,
        "Respiratory Rate",
        "RR",
        "chartevents",
        "Respiratory",
        "insp/min",
        "Numeric",
        12,
        20,
    ),
    "rr_total": Item(
        224690,
        "Respiratory Rate (Total)",
        "RR (Total)",
        "chartevents",
        "Respiratory",
        "insp/min",
        "Numeric",
        None,
        None,
    ),
    "temp_c": Item(
        223762,
        "Temperature Celsius",
        "Temperature C",
        "chartevents",
        "Routine Vital Signs",
        "°C",
        "Numeric",
        36.5,
        37.5,
    ),
    "temp_f": Item(
        223761,
        "Temperature Fahrenheit",
        "Temperature F",
        "chartevents",
        "Routine Vital Signs",
        "°F",
        "Numeric",
        97.7,
        99.5,
    ),
    "spo2": Item(
        220277,
        "O2 saturation pulseoxymetry",
        "SpO2",
        "chartevents",
        "Respiratory",
        "%",
        "Numeric",
        92,
        100,
    ),
    "gcs_eye": Item(
        220739,
        "GCS - Eye Opening",
        "GCS - Eye Opening",
        "chartevents",
        "Neurological",
        None,
        "Text",
    ),
    "gcs_verbal": Item(
        223900,
        "GCS - Verbal Response",
        "GCS - Verbal Response",
        "chartevents",
        "Neurological",
        None,
        "Text",
    ),
    "gcs_motor": Item(
        223901,
        "GCS - Motor Response",
        "GCS - Motor Response",
        "chartevents",
        "Neurological",
        None,
        "Text",
    ),
    "fio2": Item(
        223835, "Inspired O2 Fraction", "FiO2", "chartevents", "Respiratory", None, "Numeric"
    ),
    "peep": Item(220339, "PEEP set", "PEEP set", "chartevents", "Respiratory", "cmH2O", "Numeric"),
    "peep_total": Item(
        224700,
        "Total PEEP Level",
        "Total PEEP Level",
        "chartevents",
        "Respiratory",
        "cmH2O",
        "Numeric",
    ),
    "o2_device": Item(
        226732,
        "O2 Delivery Device(s)",
        "O2 Delivery Device(s)",
        "chartevents",
        "Respiratory",
        None,
        "Text",
    ),
    "vent_mode": Item(
        223849, "Ventilator Mode", "Ventilator Mode", "chartevents", "Respiratory", None, "Text"
    ),
    # in the dictionary only (the synthetic ventilators are not Hamilton)
    "vent_mode_hamilton": Item(
        229314,
        "Ventilator Mode (Hamilton)",
        "Ventilator Mode (Hamilton)",
        "chartevents",
        "Respiratory",
        None,
        "Text",
    ),
    "weight_kg": Item(
        226512,
        "Admission Weight (Kg)",
        "Admission Weight (Kg)",
        "chartevents",
        "General",
        "kg",
        "Numeric",
    ),
    "weight_lb": Item(
        226531,
        "Admission Weight (lbs.)",
        "Admission Weight (lbs.)",
        "chartevents",
        "General",
        "lbs",
        "Numeric",
    ),
    "weight_daily": Item(
        224639, "Daily Weight", "Daily Weight", "chartevents", "General", "kg", "Numeric"
    ),
}

GCS_EYE_TEXT = {1: "None", 2: "To Pain", 3: "To Speech", 4: "Spontaneously"}
GCS_VERBAL_TEXT = {
    1: "No Response",
    2: "Incomprehensible sounds",
    3: "Inappropriate Words",
    4: "Confused",
    5: "Oriented",
}
GCS_VERBAL_INTUBATED = "No Response-ETT"
GCS_MOTOR_TEXT = {
    1: "No response",
    2: "Abnormal extension",
    3: "Abnormal Flexion",
    4: "Flex-withdraws",
    5: "Localizes Pain",
    6: "Obeys Commands",
}

# Unrelated chartevents items that give the table MIMIC-like volume (nursing assessments,
# alarm limits, lines and drains). (key, item, weight, numeric mean, sd, decimals | text values)
_FILLER_SPEC: list[tuple[Item, float, tuple]] = [
    (
        Item(
            220046,
            "Heart rate Alarm - High",
            "HR Alarm - High",
            "chartevents",
            "Alarms",
            "bpm",
            "Numeric",
        ),
        4,
        (120, 5, 0),
    ),
    (
        Item(
            220047,
            "Heart Rate Alarm - Low",
            "HR Alarm - Low",
            "chartevents",
            "Alarms",
            "bpm",
            "Numeric",
        ),
        4,
        (50, 3, 0),
    ),
    (
        Item(
            223751,
            "Non-Invasive Blood Pressure Alarm - High",
            "NBP Alarm - High",
            "chartevents",
            "Alarms",
            "mmHg",
            "Numeric",
        ),
        3,
        (160, 8, 0),
    ),
    (
        Item(
            223752,
            "Non-Invasive Blood Pressure Alarm - Low",
            "NBP Alarm - Low",
            "chartevents",
            "Alarms",
            "mmHg",
            "Numeric",
        ),
        3,
        (90, 5, 0),
    ),
    (
        Item(
            223769,
            "O2 Saturation Pulseoxymetry Alarm - High",
            "SpO2 Alarm - High",
            "chartevents",
            "Alarms",
            "%",
            "Numeric",
        ),
        3,
        (100, 0.3, 0),
    ),
    (
        Item(
            223770,
            "O2 Saturation Pulseoxymetry Alarm - Low",
            "SpO2 Alarm - Low",
            "chartevents",
            "Alarms",
            "%",
            "Numeric",
        ),
        3,
        (88, 2, 0),
    ),
    (
        Item(
            224161,
            "Resp Alarm - High",
            "Resp Alarm - High",
            "chartevents",
            "Alarms",
            "insp/min",
            "Numeric",
        ),
        3,
        (35, 3, 0),
    ),
    (
        Item(
            224162,
            "Resp Alarm - Low",
            "Resp Alarm - Low",
            "chartevents",
            "Alarms",
            "insp/min",
            "Numeric",
        ),
        3,
        (8, 1, 0),
    ),
    (
        Item(
            220048,
            "Heart Rhythm",
            "Heart Rhythm",
            "chartevents",
            "Routine Vital Signs",
            None,
            "Text",
        ),
        8,
        (
            "SR (Sinus Rhythm)",
            "ST (Sinus Tachycardia)",
            "AF (Atrial Fibrillation)",
            "SB (Sinus Bradycardia)",
        ),
    ),
    (
        Item(
            224650,
            "Ectopy Type 1",
            "Ectopy Type 1",
            "chartevents",
            "Routine Vital Signs",
            None,
            "Text",
        ),
        5,
        ("None", "PVC's", "PAC's"),
    ),
    (Item(224641, "Alarms On", "Alarms On", "chartevents", "Alarms", None, "Text"), 5, ("Yes",)),
    (
        Item(
            224168,
            "Parameters Checked",
            "Parameters Checked",
            "chartevents",
            "Alarms",
            None,
            "Text",
        ),
        5,
        ("Yes",),
    ),
    (
        Item(
            228096,
            "Richmond-RAS Scale",
            "Richmond-RAS Scale",
            "chartevents",
            "Pain/Sedation",
            None,
            "Text",
        ),
        5,
        (
            "0  Alert and calm",
            "-1 Awakens to voice (eye opening/contact) > 10 sec",
            "-2 Light sedation, briefly awakens to voice (eye opening/contact) < 10 sec",
            "-4 Deep sedation, no response to voice but any movement to physical stimulation",
        ),
    ),
    (
        Item(223791, "Pain Level", "Pain Level", "chartevents", "Pain/Sedation", None, "Text"),
        4,
        ("None", "Mild", "Moderate"),
    ),
    (
        Item(
            224054,
            "Braden Sensory Perception",
            "Braden SensoryPer",
            "chartevents",
            "Skin - Impairment",
            None,
            "Text",
        ),
        2,
        ("Slightly Impaired", "Very Limited", "No Impairment"),
    ),
    (
        Item(
            224055,
            "Braden Moisture",
            "Braden Moisture",
            "chartevents",
            "Skin - Impairment",
            None,
            "Text",
        ),
        2,
        ("Occasionally Moist", "Moist", "Rarely Moist"),
    ),
    (
        Item(
            224056,
            "Braden Activity",
            "Braden Activity",
            "chartevents",
            "Skin - Impairment",
            None,
            "Text",
        ),
        2,
        ("Bedfast", "Chairfast"),
    ),
    (
        Item(
            224057,
            "Braden Mobility",
            "Braden Mobility",
            "chartevents",
            "Skin - Impairment",
            None,
            "Text",
        ),
        2,
        ("Very Limited", "Slightly Limited", "Completely Immobile"),
    ),
    (
        Item(
            224058,
            "Braden Nutrition",
            "Braden Nutrition",
            "chartevents",
            "Skin - Impairment",
            None,
            "Text",
        ),
        2,
        ("Probably Inadequate", "Adequate"),
    ),
    (
        Item(
            224059,
            "Braden Friction/Shear",
            "Braden Frict/Shear",
            "chartevents",
            "Skin - Impairment",
            None,
            "Text",
        ),
        2,
        ("Potential Problem", "Problem"),
    ),
    (
        Item(224082, "Turn", "Turn", "chartevents", "Skin - Assessment", None, "Text"),
        6,
        ("Side to Side", "Supine", "Left Side", "Right Side"),
    ),
    (
        Item(
            223999,
            "Skin Integrity",
            "Skin Integrity",
            "chartevents",
            "Skin - Assessment",
            None,
            "Text",
        ),
        3,
        ("Intact", "Impaired"),
    ),
    (
        Item(224003, "Skin Temp", "Skin Temp", "chartevents", "Skin - Assessment", None, "Text"),
        3,
        ("Warm", "Cool"),
    ),
    (
        Item(
            224015,
            "Skin Condition",
            "Skin Condition",
            "chartevents",
            "Skin - Assessment",
            None,
            "Text",
        ),
        3,
        ("Dry", "Moist"),
    ),
    (
        Item(
            223988,
            "Pupil Response R",
            "Pupil Response R",
            "chartevents",
            "Neurological",
            None,
            "Text",
        ),
        3,
        ("Brisk", "Sluggish"),
    ),
    (
        Item(
            223989,
            "Pupil Response L",
            "Pupil Response L",
            "chartevents",
            "Neurological",
            None,
            "Text",
        ),
        3,
        ("Brisk", "Sluggish"),
    ),
    (
        Item(
            223907, "Pupil Size Right", "Pupil Size R", "chartevents", "Neurological", None, "Text"
        ),
        3,
        ("2 mm", "3 mm", "4 mm"),
    ),
    (
        Item(
            224733, "Pupil Size Left", "Pupil Size L", "chartevents", "Neurological", None, "Text"
        ),
        3,
        ("2 mm", "3 mm", "4 mm"),
    ),
    (
        Item(
            223934,
            "Activity Tolerance",
            "Activity Tolerance",
            "chartevents",
            "Treatments",
            None,
            "Text",
        ),
        2,
        ("Tolerated well", "Not applicable"),
    ),
    (
        Item(224086, "Position", "Position", "chartevents", "Treatments", None, "Text"),
        4,
        ("Head of Bed 30", "Left Side", "Right Side"),
    ),
    (
        Item(224093, "Head of Bed", "Head of Bed", "chartevents", "Treatments", None, "Text"),
        4,
        ("30 Degrees", "45 Degrees"),
    ),
    (
        Item(224756, "Skin Care", "Skin Care", "chartevents", "Treatments", None, "Text"),
        2,
        ("Moisturizer", "Barrier Cream"),
    ),
    (
        Item(
            220293,
            "Minute Volume Alarm - High",
            "MV Alarm - High",
            "chartevents",
            "Alarms",
            "L/min",
            "Numeric",
        ),
        2,
        (15, 2, 0),
    ),
    (
        Item(
            220292,
            "Minute Volume Alarm - Low",
            "MV Alarm - Low",
            "chartevents",
            "Alarms",
            "L/min",
            "Numeric",
        ),
        2,
        (4, 1, 0),
    ),
    (
        Item(
            224697,
            "Mean Airway Pressure",
            "MAP (vent)",
            "chartevents",
            "Respiratory",
            "cmH2O",
            "Numeric",
        ),
        2,
        (10, 2, 0),
    ),
    (
        Item(
            224695, "Peak Insp. Pressure", "PIP", "chartevents", "Respiratory", "cmH2O", "Numeric"
        ),
        2,
        (24, 5, 0),
    ),
    (
        Item(
            224687,
            "Minute Volume",
            "Minute Volume",
            "chartevents",
            "Respiratory",
            "L/min",
            "Numeric",
        ),
        2,
        (9, 2, 1),
    ),
    (
        Item(
            224684,
            "Tidal Volume (set)",
            "Tidal Volume (set)",
            "chartevents",
            "Respiratory",
            "mL",
            "Numeric",
        ),
        2,
        (450, 50, 0),
    ),
    (
        Item(227969, "Safety Measures", "Safety Measures", "chartevents", "Safety", None, "Text"),
        4,
        ("Bed locked in low position", "Call light within reach", "Side rails up x 3"),
    ),
    (
        Item(224080, "Back Care", "Back Care", "chartevents", "Skin - Assessment", None, "Text"),
        2,
        ("Done",),
    ),
    (
        Item(
            225054, "On Admission", "On Admission", "chartevents", "Skin - Impairment", None, "Text"
        ),
        1,
        ("Yes", "No"),
    ),
    (
        Item(
            226253, "SpO2 Desat Limit", "SpO2 Desat Limit", "chartevents", "Alarms", "%", "Numeric"
        ),
        2,
        (85, 2, 0),
    ),
    (
        Item(
            227343,
            "IV/Saline lock",
            "IV/Saline lock",
            "chartevents",
            "Access Lines - Peripheral",
            None,
            "Text",
        ),
        3,
        ("Yes", "No"),
    ),
    (
        Item(
            224277,
            "PICC Line Dressing Occlusive",
            "PICC Dressing",
            "chartevents",
            "Access Lines - Invasive",
            None,
            "Text",
        ),
        2,
        ("Yes",),
    ),
    (
        Item(
            224263,
            "Multi Lumen Insertion Date",
            "ML Insertion Date",
            "chartevents",
            "Access Lines - Invasive",
            None,
            "Text",
        ),
        1,
        ("Unknown",),
    ),
]
FILLER_ITEMS: list[Item] = [s[0] for s in _FILLER_SPEC]
FILLER_WEIGHTS: list[float] = [s[1] for s in _FILLER_SPEC]
FILLER_VALUES: list[tuple] = [s[2] for s in _FILLER_SPEC]

# ---------------------------------------------------------------- inputevents
INPUT = {
    "norepinephrine": Item(
        221906, "Norepinephrine", "Norepinephrine", "inputevents", "Medications", "mg", "Solution"
    ),
    "epinephrine": Item(
        221289, "Epinephrine", "Epinephrine", "inputevents", "Medications", "mg", "Solution"
    ),
    "phenylephrine": Item(
        221749, "Phenylephrine", "Phenylephrine", "inputevents", "Medications", "mg", "Solution"
    ),
    "dopamine": Item(
        221662, "Dopamine", "Dopamine", "inputevents", "Medications", "mg", "Solution"
    ),
    "vasopressin": Item(
        222315, "Vasopressin", "Vasopressin", "inputevents", "Medications", "units", "Solution"
    ),
    "dobutamine": Item(
        221653, "Dobutamine", "Dobutamine", "inputevents", "Medications", "mg", "Solution"
    ),
    "nacl_09": Item(
        225158, "NaCl 0.9%", "NaCl 0.9%", "inputevents", "Fluids/Intake", "mL", "Solution"
    ),
    "nacl_045": Item(
        225159, "NaCl 0.45%", "NaCl 0.45%", "inputevents", "Fluids/Intake", "mL", "Solution"
    ),
    "nacl_3": Item(
        225161,
        "NaCl 3% (Hypertonic Saline)",
        "NaCl 3%",
        "inputevents",
        "Fluids/Intake",
        "mL",
        "Solution",
    ),
    "lactated_ringers": Item(225828, "LR", "LR", "inputevents", "Fluids/Intake", "mL", "Solution"),
    "d5w": Item(220949, "Dextrose 5%", "D5W", "inputevents", "Fluids/Intake", "mL", "Solution"),
    "d5_half_ns": Item(
        225823, "D5 1/2NS", "D5 1/2NS", "inputevents", "Fluids/Intake", "mL", "Solution"
    ),
    "d5ns": Item(225825, "D5NS", "D5NS", "inputevents", "Fluids/Intake", "mL", "Solution"),
    "d5lr": Item(225827, "D5LR", "D5LR", "inputevents", "Fluids/Intake", "mL", "Solution"),
    "d5_quarter_ns": Item(
        225941, "D5 1/4NS", "D5 1/4NS", "inputevents", "Fluids/Intake", "mL", "Solution"
    ),
    "albumin_25": Item(
        220862,
        "Albumin 25%",
        "Albumin 25%",
        "inputevents",
        "Blood Products/Colloids",
        "mL",
        "Solution",
    ),
    "albumin_5": Item(
        220864,
        "Albumin 5%",
        "Albumin 5%",
        "inputevents",
        "Blood Products/Colloids",
        "mL",
        "Solution",
    ),
    "hetastarch": Item(
        225174,
        "Hetastarch (Hespan) 6%",
        "Hespan",
        "inputevents",
        "Blood Products/Colloids",
        "mL",
        "Solution",
    ),
    "prbc": Item(
        225168,
        "Packed Red Blood Cells",
        "Packed Red Blood Cells",
        "inputevents",
        "Blood Products/Colloids",
        "mL",
        "Solution",
    ),
    "propofol": Item(
        222168, "Propofol", "Propofol", "inputevents", "Medications", "mg", "Solution"
    ),
    "fentanyl": Item(
        221744, "Fentanyl", "Fentanyl", "inputevents", "Medications", "mg", "Solution"
    ),
    "insulin": Item(
        223258,
        "Insulin - Regular",
        "Insulin - Regular",
        "inputevents",
        "Medications",
        "units",
        "Solution",
    ),
    "heparin": Item(
        225152,
        "Heparin Sodium",
        "Heparin Sodium",
        "inputevents",
        "Medications",
        "units",
        "Solution",
    ),
}


@dataclass(frozen=True)
class InputFiller:
    """An ``inputevents`` item charted as filler: pushes, oral intake, electrolytes."""

    item: Item
    weight: float  # relative frequency
    category: str  # ordercategoryname
    description: str  # ordercategorydescription
    amount_uom: str
    amounts: tuple[float, ...]  # typical charted amounts (drips: rates), drawn uniformly
    minutes: int  # endtime - starttime (drips: the typical row length)
    rate_uom: str | None = None  # drips only: the rate's unit
    amount_per_rate_hour: float = 0.0  # drips: amount per (rate unit x 1 h), per kg if per_kg
    per_kg: bool = False


def _med(itemid: int, label: str, unit: str | None) -> Item:
    return Item(itemid, label, label, "inputevents", "Medications", unit, "Solution")


def _intake(itemid: int, label: str) -> Item:
    return Item(itemid, label, label, "inputevents", "Fluids/Intake", "mL", "Solution")


#: Inputs the build never reads, with the categories, units and typical amounts of MIMIC-IV
#: (relative frequencies as in the demo's inputevents). None is an IV fluid or a vasopressor.
INPUT_FILLER: list[InputFiller] = [
    InputFiller(_intake(226452, "PO Intake"), 805, "14-Oral/Gastric Intake", "Bolus", "ml",
                (60, 120, 150, 240, 360), 1),
    InputFiller(_intake(225799, "Gastric Meds"), 668, "14-Oral/Gastric Intake", "Bolus", "ml",
                (20, 30, 40, 60, 120), 1),
    InputFiller(_intake(226453, "GT Flush"), 581, "14-Oral/Gastric Intake", "Bolus", "ml",
                (20, 30, 50, 100, 200), 1),
    InputFiller(_med(225975, "Heparin Sodium (Prophylaxis)", "dose"), 439,
                "11-Prophylaxis (Non IV)", "Drug Push", "dose", (1,), 1),
    InputFiller(_med(225166, "Potassium Chloride", "mEq"), 380, "02-Fluids (Crystalloids)",
                "Continuous IV", "mEq", (10, 20, 20, 40), 60),
    InputFiller(_med(223262, "Insulin - Humalog", "units"), 268, "06-Insulin (Non IV)",
                "Drug Push", "units", (2, 4, 6, 10), 1),
    InputFiller(_med(221833, "Hydromorphone (Dilaudid)", "mg"), 208, "05-Med Bolus",
                "Drug Push", "mg", (0.25, 0.5, 1), 1),
    InputFiller(_med(221794, "Furosemide (Lasix)", "mg"), 194, "05-Med Bolus", "Drug Push",
                "mg", (20, 40, 80), 1),
    InputFiller(_med(221456, "Calcium Gluconate", "grams"), 170, "02-Fluids (Crystalloids)",
                "Continuous IV", "grams", (1, 2, 2), 60),
    InputFiller(_med(225907, "Famotidine (Pepcid)", "dose"), 170, "10-Prophylaxis (IV)",
                "Drug Push", "dose", (1,), 1),
    InputFiller(_med(228315, "Acetaminophen-IV", "mg"), 166, "05-Med Bolus", "Drug Push", "mg",
                (650, 1000), 1),
    InputFiller(_med(222011, "Magnesium Sulfate", "grams"), 165, "02-Fluids (Crystalloids)",
                "Continuous IV", "grams", (2, 2, 4), 60),
    InputFiller(_med(225154, "Morphine Sulfate", "mg"), 149, "05-Med Bolus", "Drug Push", "mg",
                (2, 4, 5), 1),
    InputFiller(_med(221385, "Lorazepam (Ativan)", "mg"), 132, "05-Med Bolus", "Drug Push",
                "mg", (0.5, 1, 2), 1),
    InputFiller(_med(225910, "Pantoprazole (Protonix)", "dose"), 114, "10-Prophylaxis (IV)",
                "Drug Push", "dose", (1,), 1),
    # drips (no diluent row: their volume is no IV fluid item the build reads)
    InputFiller(_med(225942, "Fentanyl (Concentrate)", "mg"), 411, "01-Drips", "Continuous Med",
                "mg", (25, 50, 75, 100, 150, 200), 120, "mcg/hour", 0.001),
    InputFiller(_med(223258, "Insulin - Regular", "units"), 284, "01-Drips", "Continuous Med",
                "units", (1, 2, 3, 4, 6, 8), 90, "units/hour", 1.0),
    InputFiller(_med(225150, "Dexmedetomidine (Precedex)", "mcg"), 251, "01-Drips",
                "Continuous Med", "mcg", (0.2, 0.4, 0.6, 0.8, 1.2), 75, "mcg/kg/hour", 1.0,
                per_kg=True),
    InputFiller(_med(225152, "Heparin Sodium", "units"), 157, "01-Drips", "Continuous Med",
                "units", (500, 800, 1000, 1200, 1500), 240, "units/hour", 1.0),
]  # fmt: skip


# ---------------------------------------------------------------- outputevents
OUTPUT = {
    "foley": Item(226559, "Foley", "Foley", "outputevents", "Output", "mL", "Numeric"),
    "void": Item(226560, "Void", "Void", "outputevents", "Output", "mL", "Numeric"),
    "condom_cath": Item(
        226561, "Condom Cath", "Condom Cath", "outputevents", "Output", "mL", "Numeric"
    ),
    "ileoconduit": Item(
        226584, "Ileoconduit", "Ileoconduit", "outputevents", "Output", "mL", "Numeric"
    ),
    "suprapubic": Item(
        226563, "Suprapubic", "Suprapubic", "outputevents", "Output", "mL", "Numeric"
    ),
    "r_nephrostomy": Item(
        226564, "R Nephrostomy", "R Nephrostomy", "outputevents", "Output", "mL", "Numeric"
    ),
    "l_nephrostomy": Item(
        226565, "L Nephrostomy", "L Nephrostomy", "outputevents", "Output", "mL", "Numeric"
    ),
    "straight_cath": Item(
        226567, "Straight Cath", "Straight Cath", "outputevents", "Output", "mL", "Numeric"
    ),
    "r_ureteral_stent": Item(
        226557, "R Ureteral Stent", "R Ureteral Stent", "outputevents", "Output", "mL", "Numeric"
    ),
    "l_ureteral_stent": Item(
        226558, "L Ureteral Stent", "L Ureteral Stent", "outputevents", "Output", "mL", "Numeric"
    ),
    "gu_irrigant_in": Item(
        227488,
        "GU Irrigant Volume In",
        "GU Irrigant Volume In",
        "outputevents",
        "Output",
        "mL",
        "Numeric",
    ),
    "gu_irrigant_out": Item(
        227489,
        "GU Irrigant/Urine Volume Out",
        "GU Irrigant/Urine Volume Out",
        "outputevents",
        "Output",
        "mL",
        "Numeric",
    ),
    "chest_tube": Item(
        226588, "Chest Tube #1", "Chest Tube #1", "outputevents", "Output", "mL", "Numeric"
    ),
    "ogt": Item(226576, "OG Tube", "OG Tube", "outputevents", "Output", "mL", "Numeric"),
    "stool": Item(226579, "Stool", "Stool", "outputevents", "Output", "mL", "Numeric"),
}

# ---------------------------------------------------------------- labevents
LAB = {
    "specimen_type": LabItem(52033, "Specimen Type", "Blood", "Blood Gas", None, None, None, 0),
    "pao2": LabItem(50821, "pO2", "Blood", "Blood Gas", "mm Hg", 85, 105, 0),
    "paco2": LabItem(50818, "pCO2", "Blood", "Blood Gas", "mm Hg", 35, 45, 0),
    "ph": LabItem(50820, "pH", "Blood", "Blood Gas", "units", 7.35, 7.45, 2),
    "base_excess": LabItem(50802, "Base Excess", "Blood", "Blood Gas", "mEq/L", -2, 2, 0),
    "bicarb_bg": LabItem(
        50803, "Calculated Bicarbonate, Whole Blood", "Blood", "Blood Gas", "mEq/L", 22, 26, 0
    ),
    "lactate": LabItem(50813, "Lactate", "Blood", "Blood Gas", "mmol/L", 0.5, 2.0, 1),
    "potassium_bg": LabItem(
        50822, "Potassium, Whole Blood", "Blood", "Blood Gas", "mEq/L", 3.5, 5.3, 1
    ),
    "sodium_bg": LabItem(50824, "Sodium, Whole Blood", "Blood", "Blood Gas", "mEq/L", 135, 145, 0),
    "glucose_bg": LabItem(50809, "Glucose", "Blood", "Blood Gas", "mg/dL", 70, 105, 0),
    "hgb_bg": LabItem(50811, "Hemoglobin", "Blood", "Blood Gas", "g/dL", 13.7, 17.5, 1),
    "hct_bg": LabItem(50810, "Hematocrit, Calculated", "Blood", "Blood Gas", "%", 40, 52, 0),
    # in the dictionary only (no synthetic blood gas records its FiO2)
    "fio2_bg": LabItem(50816, "Oxygen", "Blood", "Blood Gas", "%", None, None, 0),
    "bicarbonate": LabItem(50882, "Bicarbonate", "Blood", "Chemistry", "mEq/L", 22, 32, 0),
    "creatinine": LabItem(50912, "Creatinine", "Blood", "Chemistry", "mg/dL", 0.5, 1.2, 1),
    "bun": LabItem(51006, "Urea Nitrogen", "Blood", "Chemistry", "mg/dL", 6, 20, 0),
    "bilirubin": LabItem(50885, "Bilirubin, Total", "Blood", "Chemistry", "mg/dL", 0, 1.5, 1),
    "albumin": LabItem(50862, "Albumin", "Blood", "Chemistry", "g/dL", 3.5, 5.2, 1),
    "sodium": LabItem(50983, "Sodium", "Blood", "Chemistry", "mEq/L", 135, 145, 0),
    "potassium": LabItem(50971, "Potassium", "Blood", "Chemistry", "mEq/L", 3.3, 5.1, 1),
    "glucose": LabItem(50931, "Glucose", "Blood", "Chemistry", "mg/dL", 70, 100, 0),
    "inr": LabItem(51237, "INR(PT)", "Blood", "Hematology", None, 0.9, 1.1, 1),
    "ptt": LabItem(51275, "PTT", "Blood", "Hematology", "sec", 25, 36.5, 1),
    "wbc": LabItem(51301, "White Blood Cells", "Blood", "Hematology", "K/uL", 4, 11, 1),
    "wbc_count": LabItem(51300, "WBC Count", "Blood", "Hematology", "K/uL", 4, 11, 1),
    "hgb": LabItem(51222, "Hemoglobin", "Blood", "Hematology", "g/dL", 13.7, 17.5, 1),
    "hct": LabItem(51221, "Hematocrit", "Blood", "Hematology", "%", 40, 51, 1),
    "platelets": LabItem(51265, "Platelet Count", "Blood", "Hematology", "K/uL", 150, 400, 0),
    "chloride": LabItem(50902, "Chloride", "Blood", "Chemistry", "mEq/L", 96, 108, 0),
    "anion_gap": LabItem(50868, "Anion Gap", "Blood", "Chemistry", "mEq/L", 8, 20, 0),
    "magnesium": LabItem(50960, "Magnesium", "Blood", "Chemistry", "mg/dL", 1.6, 2.6, 1),
    "calcium": LabItem(50893, "Calcium, Total", "Blood", "Chemistry", "mg/dL", 8.4, 10.3, 1),
    "phosphate": LabItem(50970, "Phosphate", "Blood", "Chemistry", "mg/dL", 2.7, 4.5, 1),
}


def d_items_table() -> pa.Table:
    items = (
        list(CHART.values())
        + FILLER_ITEMS
        + list(INPUT.values())
        + [f.item for f in INPUT_FILLER]
        + list(OUTPUT.values())
    )
    items = sorted({i.itemid: i for i in items}.values(), key=lambda i: i.itemid)
    return pa.table(
        {
            "itemid": pa.array([i.itemid for i in items], pa.int64()),
            "label": [i.label for i in items],
            "abbreviation": [i.abbreviation for i in items],
            "linksto": [i.linksto for i in items],
            "category": [i.category for i in items],
            "unitname": pa.array([i.unitname for i in items], pa.string()),
            "param_type": [i.param_type for i in items],
            "lownormalvalue": pa.array([i.low for i in items], pa.float64()),
            "highnormalvalue": pa.array([i.high for i in items], pa.float64()),
        }
    )


def d_labitems_table() -> pa.Table:
    items = sorted(LAB.values(), key=lambda i: i.itemid)
    return pa.table(
        {
            "itemid": pa.array([i.itemid for i in items], pa.int64()),
            "label": [i.label for i in items],
            "fluid": [i.fluid for i in items],
            "category": [i.category for i in items],
        }
    )
