"""A realistic synthetic cancer-imaging data set for `gateway demo`.

`plan_demo` draws patients (names, MRNs, a cancer with its ICD-10/ICD-O-3 codes and TNM), their CT, MR and
PET/CT studies over 2015-2025, the series and the lesions, without touching a pixel. `iter_demo_instances`
renders each series from the analytical phantom (`gateway.demo.phantom`) and yields Part-10-ready pydicom
datasets, each series with lesions followed by their DICOM-SEG (`gateway.demo.segmentations`);
`write_demo_files` writes them. Everything is a pure function of the seed: UIDs come from
`generate_uid(entropy_srcs=...)`, dates are drawn, nothing reads the clock, so a seed always gives
byte-identical files.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, PYDICOM_ROOT_UID, ExplicitVRLittleEndian, generate_uid

from gateway.demo import anatomy as body
from gateway.demo.catalogue import (
    CANCER_SITES,
    EXAMS,
    F18_HALF_LIFE_S,
    F18_POSITRON_FRACTION,
    FDG,
    HOSPITALS,
    NAME_POOLS,
    SCANNER_MODELS,
    SERIES_PROTOCOLS,
    SOP_CLASS_BY_MODALITY,
    CancerSite,
    ExamProtocol,
    Hospital,
    NamePool,
    ScannerModel,
    SeriesProtocol,
)
from gateway.demo.model import (
    DemoAnatomy,
    DemoDiagnosis,
    DemoLesion,
    DemoPatient,
    DemoRadiopharmaceutical,
    DemoScanner,
    DemoSeries,
    DemoStudy,
)
from gateway.demo.phantom import (
    CT_CONTRASTS,
    Ellipsoid,
    Layer,
    RenderedVolumes,
    SliceGrid,
    ct_hounsfield,
    mr_signal,
    noise_bank,
    pet_suv,
    render,
    window_from_percentiles,
)
from gateway.demo.segmentations import build_lesion_segmentation

__all__ = [
    "DemoAnatomy",
    "DemoDiagnosis",
    "DemoLesion",
    "DemoPatient",
    "DemoRadiopharmaceutical",
    "DemoScanner",
    "DemoSeries",
    "DemoStudy",
    "ground_truth",
    "iter_demo_instances",
    "plan_demo",
    "write_demo_files",
]

# Mixed into every UID and random stream so the demo never collides with other generated data.
DEMO_SALT = "eucaim-gateway-demo-v1"
IMPLEMENTATION_VERSION_NAME = "GATEWAY_DEMO_1"
FIRST_STUDY_DATE = dt.date(2015, 1, 15)
LAST_DIAGNOSIS_DATE = dt.date(2023, 6, 30)
LAST_STUDY_DATE = dt.date(2025, 11, 28)
MAX_SLICES = 64
MIN_SLICES = 24
PET_FOV_MM = 600.0


# --- Deterministic randomness --------------------------------------------------------------------------

def _seed_words(*parts: object) -> list[int]:
    digest = hashlib.sha256("\x1f".join([DEMO_SALT, *map(str, parts)]).encode()).digest()
    return [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 32, 4)]


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(_seed_words(*parts))


def _uid(seed: int, *parts: object) -> str:
    return generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=[DEMO_SALT, str(seed), *map(str, parts)])


def _pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    return items[int(rng.integers(len(items)))]


def _da(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


def _tm(seconds: int) -> str:
    seconds %= 86400
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def _years_between(earlier: dt.date, later: dt.date) -> int:
    return later.year - earlier.year - ((later.month, later.day) < (earlier.month, earlier.day))


# --- Planning ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _LesionTrack:
    """A lesion over the course of the disease, in template coordinates, before any study exists."""

    lesion_id: str
    kind: str
    location: str
    centre: tuple[float, float, float]   # template mm
    radii_mm: tuple[float, float, float]  # patient mm at diagnosis
    tissue: str
    suv: float
    first_study: int                      # index in the patient's study list where it is first seen


@dataclass(frozen=True)
class _Site:
    """Hospital-wide choices shared by all patients of one seed."""

    hospital: Hospital
    fleet: dict[str, tuple[ScannerModel, ...]]
    serial_numbers: dict[str, str]
    physicians: tuple[str, ...]


def plan_demo(seed: int = 0, patients: int = 8) -> list[DemoPatient]:
    """Draw the demo patients, studies, series and lesions for a seed. Cheap: no pixels."""
    if patients < 0:
        raise ValueError("patients must not be negative")
    site = _plan_site(seed)
    rng = _rng(seed, "cohort")
    cancer_keys = list(CANCER_SITES)
    rng.shuffle(cancer_keys)
    used_ids: set[str] = set()
    used_accessions: set[str] = set()
    plan = []
    for index in range(patients):
        cancer = CANCER_SITES[cancer_keys[index % len(cancer_keys)]]
        plan.append(_plan_patient(seed, index, cancer, site, used_ids, used_accessions))
    return plan


def _plan_site(seed: int) -> _Site:
    rng = _rng(seed, "site")
    hospital = _pick(rng, HOSPITALS)
    fleet: dict[str, tuple[ScannerModel, ...]] = {}
    serial_numbers: dict[str, str] = {}
    for modality, count in (("CT", 2), ("MR", 2), ("PT", 1)):
        models = [m for m in SCANNER_MODELS if m.modality == modality]
        chosen = tuple(models[i] for i in sorted(rng.choice(len(models), size=count, replace=False)))
        fleet[modality] = chosen
        for model in chosen:
            serial_numbers[model.model] = str(int(rng.integers(10_000, 99_999)))
    pool = NAME_POOLS[hospital.country]
    physicians = []
    for _ in range(4):
        sex = "F" if rng.random() < 0.5 else "M"
        family, given = _draw_name(rng, pool, sex)
        prefix = hospital.physician_prefix[1 if sex == "F" else 0]
        physicians.append(f"{family}^{given}^^{prefix}")
    return _Site(hospital, fleet, serial_numbers, tuple(physicians))


def _draw_name(rng: np.random.Generator, pool: NamePool, sex: str) -> tuple[str, str]:
    family = pool.family_name(_pick(rng, pool.family), sex)
    if pool.double_family_name:
        second = pool.family_name(_pick(rng, pool.family), sex)
        if second != family:
            family = f"{family} {second}"
    given = _pick(rng, pool.given_female if sex == "F" else pool.given_male)
    return family, given


def _plan_patient(seed: int, index: int, cancer: CancerSite, site: _Site, used_ids: set[str],
                  used_accessions: set[str]) -> DemoPatient:
    rng = _rng(seed, "patient", index)
    hospital = site.hospital
    sex = cancer.sex or ("M" if rng.random() < cancer.male_fraction else "F")
    # Most patients carry names of the hospital's country, some those of neighbours who settled there.
    pool = NAME_POOLS[hospital.country] if rng.random() < 0.8 else NAME_POOLS[_pick(rng, sorted(NAME_POOLS))]
    family, given = _draw_name(rng, pool, sex)
    while True:
        digits = "".join(str(int(d)) for d in rng.integers(0, 10, size=hospital.mrn_digits))
        patient_id = hospital.mrn_prefix + ("1" if digits[0] == "0" else digits[0]) + digits[1:]
        if patient_id not in used_ids:
            used_ids.add(patient_id)
            break

    diagnosis_window = (LAST_DIAGNOSIS_DATE - FIRST_STUDY_DATE).days
    first_day = FIRST_STUDY_DATE + dt.timedelta(days=int(rng.integers(0, diagnosis_window)))
    age = float(np.clip(rng.normal(cancer.age_mean, cancer.age_sd), 38, 88))
    birth_date = first_day - dt.timedelta(days=int(age * 365.25) + int(rng.integers(0, 365)))
    height_m = float(np.clip(rng.normal(1.76 if sex == "M" else 1.64, 0.07), 1.48, 1.98))
    bmi = float(np.clip(rng.normal(26.5, 4.0), 18.5, 38.0))
    weight_kg = bmi * height_m**2
    anatomy = DemoAnatomy(
        sex=sex,
        width_scale=round((0.94 if sex == "F" else 1.0) * (bmi / 25.0) ** 0.25, 3),
        depth_scale=round((0.95 if sex == "F" else 1.0) * (bmi / 25.0) ** 0.3, 3),
        height_scale=round(height_m / 1.72, 3),
        fat_mm=round(max(6.0, 4.0 + (bmi - 18.0) * 2.0 + float(rng.normal(0, 3))), 1),
        breast_scale=round(float(rng.uniform(0.75, 1.25)) * (bmi / 25.0) ** 0.3, 3) if sex == "F" else 0.0,
        bladder_fill=round(float(rng.uniform(0.65, 1.15)), 3),
        seed=int(rng.integers(0, 2**31)),
    )
    variant = _pick(rng, cancer.variants)
    side = "left" if rng.random() < 0.5 else "right"
    course = _pick(rng, ("response", "response", "stable", "progression"))

    # Imaging first, histology a few days later, staging after that and follow-up months to years on.
    diagnosis_date = first_day + dt.timedelta(days=int(rng.integers(4, 22)))
    staging_day = (diagnosis_date - first_day).days + int(rng.integers(3, 22))
    followup_day = min(int(rng.integers(120, 900)), (LAST_STUDY_DATE - first_day).days)
    study_count = int(rng.choice([1, 2, 3], p=[0.2, 0.35, 0.45]))
    dx_exam, staging_exam, followup_exam = cancer.pathway
    schedule = [("diagnosis", dx_exam, 0)]
    with_staging = study_count == 3 or (study_count == 2 and rng.random() < 0.5)
    if with_staging:
        schedule.append(("staging", staging_exam, staging_day))
    if len(schedule) < study_count:
        schedule.append(("follow-up", followup_exam, followup_day))

    tracks = _plan_lesions(rng, cancer.key, variant.icd10_code, anatomy, side,
                           course, followup_index=len(schedule) - 1 if schedule[-1][0] == "follow-up" else None)
    size_factor = {"response": float(rng.uniform(0.5, 0.8)), "stable": float(rng.uniform(0.92, 1.08)),
                   "progression": float(rng.uniform(1.25, 1.6))}[course]
    at_diagnosis = [t for t in tracks if t.first_study == 0]
    diagnosis = DemoDiagnosis(
        site=cancer.key,
        icd10_code=variant.icd10_code,
        icd10_display=variant.icd10_display,
        icdo3_topography=variant.icdo3_topography,
        icdo3_topography_display=variant.icdo3_topography_display,
        icdo3_morphology=variant.icdo3_morphology,
        icdo3_morphology_display=variant.icdo3_morphology_display,
        laterality=side if cancer.key in ("lung", "breast", "kidney", "head_and_neck") else None,
        diagnosis_date=_da(diagnosis_date),
        clinical_tnm=_clinical_tnm(cancer.key, at_diagnosis),
        course=course,
    )
    physician = _pick(rng, site.physicians)
    studies = []
    for study_index, (purpose, exam_key, day) in enumerate(schedule):
        factor = size_factor if purpose == "follow-up" else 1.0
        studies.append(_plan_study(
            seed, index, study_index, rng, site, EXAMS[exam_key], purpose, first_day + dt.timedelta(days=day),
            birth_date, weight_kg, height_m, anatomy, tracks, factor, physician, used_accessions))
    return DemoPatient(
        patient_id=patient_id,
        name=f"{family}^{given}",
        birth_date=_da(birth_date),
        sex=sex,
        issuer=hospital.issuer,
        diagnosis=diagnosis,
        studies=tuple(studies),
        anatomy=anatomy,
    )


def _radii(rng: np.random.Generator, radius: float, z_stretch: float = 1.0) -> tuple[float, float, float]:
    """Slightly irregular ellipsoid radii around `radius` mm."""
    wobble = rng.uniform(0.88, 1.12, size=3)
    return (round(radius * float(wobble[0]), 1), round(radius * float(wobble[1]), 1),
            round(radius * float(wobble[2]) * z_stretch, 1))


def _plan_lesions(rng: np.random.Generator, cancer: str, icd10: str, anatomy: DemoAnatomy, side: str,
                  course: str, followup_index: int | None) -> list[_LesionTrack]:
    """Primary, nodes and metastases in template coordinates, each with the study it appears in."""
    sign = 1.0 if side == "left" else -1.0
    sx = (anatomy.width_scale + anatomy.depth_scale) / 2.0
    tracks: list[_LesionTrack] = []

    def add(kind: str, location: str, centre: tuple[float, float, float], radius: float, tissue: str,
            suv: tuple[float, float], first_study: int = 0, z_stretch: float = 1.0) -> None:
        tracks.append(_LesionTrack(f"L{len(tracks) + 1}", kind, location,
                                   tuple(round(c, 2) for c in centre),  # type: ignore[arg-type]
                                   _radii(rng, radius, z_stretch), tissue, round(float(rng.uniform(*suv)), 1),
                                   first_study))

    def organ_point(key: str, radius: float, z_range: tuple[float, float] | None = None,
                    x_max: float = math.inf) -> tuple[float, float, float]:
        return body.point_in_organ(anatomy, key, rng, radius / sx, z_range, x_max)

    def liver_metastasis(first_study: int) -> None:
        radius = float(rng.uniform(7, 20))
        add("distant metastasis", "liver", organ_point("liver", radius), radius, "liver_metastasis", (5, 11),
            first_study)

    def bone_metastasis(first_study: int, sclerotic: bool) -> None:
        level = float(rng.uniform(-420, -300))
        centre = (0.0, float(np.interp(level, [k[0] for k in body.VERTEBRA_KEYS],
                                       [k[2] for k in body.VERTEBRA_KEYS])), level)
        add("distant metastasis", "lumbar vertebral body", centre, float(rng.uniform(8, 12)),
            "sclerotic_metastasis" if sclerotic else "tumour", (4, 9), first_study)

    new_lesion_at = followup_index if course == "progression" else None
    if cancer == "lung":
        radius = float(rng.uniform(8, 24))
        lobe = f"{side} upper lobe"
        add("primary tumour", lobe, organ_point(f"lung_{side}", radius, (-110, -20)), radius, "tumour", (7, 16))
        roll = rng.random()
        if roll < 0.35:
            add("lymph node metastasis", f"{side} hilar", (sign * 44, 8, -100), float(rng.uniform(6, 11)),
                "tumour", (5, 10))
        elif roll < 0.65:
            add("lymph node metastasis", "subcarinal", (4, 22, -114), float(rng.uniform(7, 12)), "tumour",
                (5, 10))
        if rng.random() < 0.12:
            liver_metastasis(0)
        if new_lesion_at is not None:
            other = "right" if side == "left" else "left"
            radius = float(rng.uniform(5, 10))
            add("distant metastasis", f"{other} lung", organ_point(f"lung_{other}", radius, (-200, -40)), radius,
                "tumour", (4, 9), new_lesion_at)
    elif cancer == "breast":
        s = anatomy.breast_scale
        radius = float(rng.uniform(6, min(18, 24 * s)))
        centre = (sign * (82 + 14 * s), -92 - 22 * s, -112 + 12 * s)
        add("primary tumour", f"{side} breast, upper-outer quadrant", centre, radius, "tumour", (4, 12))
        if rng.random() < 0.5:
            add("lymph node metastasis", f"{side} axilla", _subcutaneous_point(anatomy, sign, -55.0, 118.0),
                float(rng.uniform(5, 8)), "tumour", (3, 8))
        if new_lesion_at is not None:
            liver_metastasis(new_lesion_at)
    elif cancer == "prostate":
        add("primary tumour", f"{side} peripheral zone", (sign * 9, 21, -655), float(rng.uniform(5, 9)),
            "prostate_tumour", (3, 5.5))
        if rng.random() < 0.3:
            add("lymph node metastasis", f"{side} external iliac", (sign * 60, 12, -560),
                float(rng.uniform(6, 10)), "tumour", (3, 6))
        if rng.random() < 0.15:
            bone_metastasis(0, sclerotic=True)
        if new_lesion_at is not None:
            bone_metastasis(new_lesion_at, sclerotic=True)
    elif cancer == "colorectal":
        add("primary tumour", "rectum", (sign * 5, 55, -600), float(rng.uniform(14, 21)), "tumour", (8, 16),
            z_stretch=1.4)
        if rng.random() < 0.45:
            add("lymph node metastasis", "mesorectum", (sign * 22, 64, -585), float(rng.uniform(4, 8)),
                "tumour", (3, 7))
        if rng.random() < 0.25:
            liver_metastasis(0)
        if new_lesion_at is not None:
            # Restaging is a pelvic MR, so progression shows as a new pelvic side-wall node.
            add("lymph node metastasis", f"{side} internal iliac", (sign * 48, 40, -575), float(rng.uniform(6, 10)),
                "tumour", (4, 8), new_lesion_at)
    elif cancer == "head_and_neck":
        if icd10.startswith("C32"):
            add("primary tumour", f"{side} vocal cord", (sign * 6, -14, 62), float(rng.uniform(6, 10)), "tumour",
                (8, 16))
        else:
            add("primary tumour", f"{side} palatine tonsil", (sign * 20, 4, 118), float(rng.uniform(10, 17)),
                "tumour", (8, 18))
        if rng.random() < 0.7:
            add("lymph node metastasis", f"{side} neck level II", (sign * 42, -8, 98), float(rng.uniform(8, 15)),
                "tumour", (6, 14))
        if new_lesion_at is not None:
            radius = float(rng.uniform(5, 9))
            add("distant metastasis", "right lung", organ_point("lung_right", radius, (-200, -40)), radius,
                "tumour", (4, 8), new_lesion_at)
    elif cancer == "liver":
        radius = float(rng.uniform(10, 25))
        add("primary tumour", "liver, right lobe", organ_point("liver", radius, (-300, -200), x_max=-50), radius,
            "hcc", (3, 7))
        if rng.random() < 0.25:
            radius = float(rng.uniform(5, 10))
            add("primary tumour", "liver, satellite nodule", organ_point("liver", radius, x_max=-20), radius, "hcc",
                (3, 6))
        if new_lesion_at is not None:
            radius = float(rng.uniform(8, 15))
            add("primary tumour", "liver, new nodule", organ_point("liver", radius), radius, "hcc", (3, 6),
                new_lesion_at)
    elif cancer == "kidney":
        radius = float(rng.uniform(15, 32))
        add("primary tumour", f"{side} kidney", organ_point(f"kidney_{side}", min(radius, 16)), radius, "tumour",
            (3, 7))
        if rng.random() < 0.2:
            radius = float(rng.uniform(5, 9))
            add("distant metastasis", "right lung", organ_point("lung_right", radius, (-200, -40)), radius,
                "tumour", (3, 6))
        if new_lesion_at is not None:
            bone_metastasis(new_lesion_at, sclerotic=False)
    else:  # pragma: no cover - the catalogue and this function are kept in step
        raise ValueError(f"no lesion model for cancer site {cancer!r}")
    return tracks


def _subcutaneous_point(anatomy: DemoAnatomy, sign: float, z: float, angle_deg: float
                        ) -> tuple[float, float, float]:
    """Halfway through the fat on the body ring, at an angle from the posterior midline."""
    zs = [k[0] for k in reversed(body.WALL_KEYS)]
    cy, a, b = (float(np.interp(z, zs, [k[i] for k in reversed(body.WALL_KEYS)])) for i in (2, 3, 4))
    half_fat = anatomy.fat_mm / anatomy.width_scale * body.fat_factor(z) / 2.0
    theta = math.radians(angle_deg)
    return sign * (a + half_fat) * math.sin(theta), cy + (b + half_fat) * math.cos(theta), z


def _clinical_tnm(cancer: str, lesions: Sequence[_LesionTrack]) -> str:
    """A simplified AJCC 8th clinical TNM from the lesions seen at diagnosis (sizes only, no invasion)."""
    primary = next(t for t in lesions if t.kind == "primary tumour")
    size = 2 * max(primary.radii_mm)
    nodes = [t for t in lesions if t.kind == "lymph node metastasis"]
    metastatic = any(t.kind == "distant metastasis" for t in lesions)

    def by_size(limits: Sequence[tuple[float, str]], largest: str) -> str:
        return next((stage for limit, stage in limits if size <= limit), largest)

    if cancer == "lung":
        t = by_size([(10, "T1a"), (20, "T1b"), (30, "T1c"), (40, "T2a"), (50, "T2b"), (70, "T3")], "T4")
        n = "N0" if not nodes else ("N2" if nodes[0].location == "subcarinal" else "N1")
        m = "M1b" if metastatic else "M0"
    elif cancer == "breast":
        t = by_size([(20, "T1"), (50, "T2")], "T3")
        n, m = ("N1" if nodes else "N0"), ("M1" if metastatic else "M0")
    elif cancer == "prostate":
        t, n, m = "T2", ("N1" if nodes else "N0"), ("M1b" if metastatic else "M0")
    elif cancer == "colorectal":
        t = "T3" if size > 30 else "T2"
        n, m = ("N1" if nodes else "N0"), ("M1a" if metastatic else "M0")
    elif cancer == "head_and_neck":
        t = by_size([(20, "T1"), (40, "T2")], "T3")
        n = "N0" if not nodes else ("N1" if 2 * max(nodes[0].radii_mm) <= 30 else "N2a")
        m = "M1" if metastatic else "M0"
    elif cancer == "liver":
        t = ("T1a" if size <= 20 else "T1b") if len(lesions) == 1 else "T2"
        n, m = "N0", "M0"
    else:  # kidney
        t = by_size([(40, "T1a"), (70, "T1b"), (100, "T2a")], "T2b")
        n, m = "N0", ("M1" if metastatic else "M0")
    return f"c{t} c{n} c{m}"


def _plan_study(seed: int, patient_index: int, study_index: int, rng: np.random.Generator, site: _Site,
                exam: ExamProtocol, purpose: str, day: dt.date, birth_date: dt.date, weight_kg: float,
                height_m: float, anatomy: DemoAnatomy, tracks: Sequence[_LesionTrack], size_factor: float,
                physician: str, used_accessions: set[str]) -> DemoStudy:
    hospital = site.hospital
    scanner_model = _pick(rng, site.fleet[exam.modality])
    station_prefix = "PETCT" if exam.modality == "PT" else exam.modality
    scanner = DemoScanner(
        manufacturer=scanner_model.manufacturer,
        model=scanner_model.model,
        station_name=f"{station_prefix}{site.fleet[exam.modality].index(scanner_model) + 1:02d}",
        serial_number=site.serial_numbers[scanner_model.model],
        software_versions=scanner_model.software,
        field_strength_t=scanner_model.field_strength_t,
    )
    if exam.nuclear_medicine:
        start = int(rng.integers(8 * 12, 14 * 12)) * 300
    else:
        start = int(rng.integers(7 * 12 + 6, 17 * 12 + 9)) * 300
    while True:
        accession = f"{hospital.accession_prefix}{day.year % 100:02d}{int(rng.integers(0, 1_000_000)):06d}"
        if accession not in used_accessions:
            used_accessions.add(accession)
            break
    study_weight = round(weight_kg * (1 + float(rng.normal(0, 0.02))) - (2.0 if purpose == "follow-up" else 0.0), 1)

    # The patient frame is the scanner's: MR puts the examined region at the magnet's isocentre, CT and
    # PET/CT report table positions, so the same anatomy gets different coordinates in every study.
    region_top, region_bottom = body.REGIONS[exam.region]
    if exam.modality == "MR":
        dz = -anatomy.height_scale * (region_top + region_bottom) / 2.0 + float(rng.normal(0, 8))
    else:
        dz = float(rng.uniform(-450, 150))
    offset = (round(float(rng.normal(0, 3)), 1), round(float(rng.normal(0, 4)), 1), round(dz, 1))

    lesions = tuple(_lesion_in_study(t, anatomy, offset, size_factor if t.first_study < study_index else 1.0)
                    for t in tracks if t.first_study <= study_index)
    frame_of_reference = _uid(seed, "patient", patient_index, "study", study_index, "frame-of-reference")
    series = _plan_series(seed, patient_index, study_index, rng, exam, scanner_model, day, start, anatomy,
                          offset, lesions, study_weight)
    return DemoStudy(
        study_instance_uid=_uid(seed, "patient", patient_index, "study", study_index),
        accession_number=accession,
        study_id=str(int(rng.integers(1000, 99_999))),
        study_date=_da(day),
        study_time=_tm(start),
        description=exam.descriptions[hospital.language],
        exam_key=exam.key,
        modality=exam.modality,
        purpose=purpose,
        modalities=tuple(sorted({s.modality for s in series})),
        body_part=exam.body_part,
        institution_name=hospital.name,
        department=hospital.nuclear_medicine if exam.nuclear_medicine else hospital.radiology,
        referring_physician=physician,
        scanner=scanner,
        frame_of_reference_uid=frame_of_reference,
        patient_age=f"{_years_between(birth_date, day):03d}Y",
        patient_weight_kg=study_weight,
        patient_size_m=round(height_m, 2),
        table_offset_mm=offset,
        lesions=lesions,
        series=series,
    )


def _to_patient(anatomy: DemoAnatomy, offset: tuple[float, float, float], point: Sequence[float]
                ) -> tuple[float, float, float]:
    return (anatomy.width_scale * point[0] + offset[0], anatomy.depth_scale * point[1] + offset[1],
            anatomy.height_scale * point[2] + offset[2])


def _lesion_in_study(track: _LesionTrack, anatomy: DemoAnatomy, offset: tuple[float, float, float],
                     size_factor: float) -> DemoLesion:
    radii = tuple(round(r * size_factor, 1) for r in track.radii_mm)
    centre = tuple(round(c, 1) for c in _to_patient(anatomy, offset, track.centre))
    mean_radius = (radii[0] * radii[1] * radii[2]) ** (1 / 3)
    return DemoLesion(
        lesion_id=track.lesion_id,
        kind=track.kind,
        location=track.location,
        centre_mm=centre,  # type: ignore[arg-type]
        radii_mm=radii,  # type: ignore[arg-type]
        tissue=track.tissue,
        suv_mean=track.suv,
        necrotic=mean_radius >= 15.0 and track.tissue != "sclerotic_metastasis",
    )


def _body_half_width(anatomy: DemoAnatomy, z_template: float) -> float:
    zs = [k[0] for k in reversed(body.WALL_KEYS)]
    a = float(np.interp(z_template, zs, [k[3] for k in reversed(body.WALL_KEYS)]))
    return anatomy.width_scale * a + anatomy.fat_mm * body.fat_factor(z_template)


def _plan_series(seed: int, patient_index: int, study_index: int, rng: np.random.Generator,
                 exam: ExamProtocol, scanner_model: ScannerModel, day: dt.date, start: int, anatomy: DemoAnatomy,
                 offset: tuple[float, float, float], lesions: Sequence[DemoLesion], weight_kg: float
                 ) -> tuple[DemoSeries, ...]:
    region_top, region_bottom = body.REGIONS[exam.region]
    top = anatomy.height_scale * region_top + offset[2]
    bottom = anatomy.height_scale * region_bottom + offset[2]
    samples = np.linspace(region_bottom, region_top, 12)
    widest = max(_body_half_width(anatomy, float(z)) for z in samples)
    fitted_fov = float(np.clip(math.ceil((2 * widest + 40) / 10) * 10, 300, 500))
    if exam.fov_centre is not None:
        centre_x, centre_y = _to_patient(anatomy, offset, (*exam.fov_centre, 0.0))[:2]
    else:
        centre_x, centre_y = offset[0], anatomy.depth_scale * 8.0 + offset[1]
    start_z = round(top - float(rng.uniform(0, 3)), 1)
    injection: DemoRadiopharmaceutical | None = None
    series = []
    for series_index, protocol in enumerate(exam.series):
        if protocol.modality == "PT":
            fov = PET_FOV_MM
        elif protocol.modality == "CT" and exam.modality == "PT":
            fov = max(fitted_fov, 500.0)
        else:
            fov = exam.fov_mm or fitted_fov
        spacing = protocol.slice_spacing_mm
        count = int(np.clip(math.floor((top - bottom) / spacing) + 1, MIN_SLICES, MAX_SLICES))
        pixel = round(fov / protocol.matrix, 5)
        origin = (round(centre_x - (protocol.matrix / 2 - 0.5) * pixel, 2),
                  round(centre_y - (protocol.matrix / 2 - 0.5) * pixel, 2))
        slice_z = tuple(round(start_z - i * spacing, 2) for i in range(count))
        acquired = start + protocol.delay_s
        series_time = acquired + (45 if protocol.reuse_of else 0)
        if protocol.modality == "PT":
            injection = _plan_injection(rng, day, acquired, weight_kg)
        ids = ("patient", patient_index, "study", study_index, "series", series_index)
        lesions_seen = tuple(le for le in lesions if _intersects(le, slice_z, origin, pixel, protocol.matrix))
        series.append(DemoSeries(
            series_instance_uid=_uid(seed, *ids),
            series_number=series_index + 2,  # series 1 is the scout/localiser on real scanners
            modality=protocol.modality,
            sop_class_uid=str(SOP_CLASS_BY_MODALITY[protocol.modality]),
            description=_describe(protocol, exam, scanner_model),
            body_part=exam.body_part,
            series_date=_da(day),
            series_time=_tm(series_time),
            protocol_key=protocol.key,
            contrast=protocol.contrast,
            rows=protocol.matrix,
            columns=protocol.matrix,
            pixel_spacing_mm=(pixel, pixel),
            slice_thickness_mm=protocol.slice_thickness_mm,
            spacing_between_slices_mm=spacing,
            origin_xy_mm=origin,
            slice_z_mm=slice_z,
            sop_instance_uids=tuple(_uid(seed, *ids, "image", i) for i in range(count)),
            lesions=lesions_seen,
            radiopharmaceutical=injection if protocol.modality == "PT" else None,
        ))
    return tuple(series)


def _plan_injection(rng: np.random.Generator, day: dt.date, scan_start: int, weight_kg: float
                    ) -> DemoRadiopharmaceutical:
    uptake_s = int(rng.integers(55, 71)) * 60
    dose_bq = round(3.5e6 * weight_kg * float(rng.uniform(0.9, 1.1)), -5)
    injected = dt.datetime.combine(day, dt.time()) + dt.timedelta(seconds=scan_start - uptake_s)
    name, code, meaning, nuclide_code, nuclide_meaning = FDG
    return DemoRadiopharmaceutical(
        radiopharmaceutical=name,
        code_value=code,
        code_meaning=meaning,
        radionuclide_code_value=nuclide_code,
        radionuclide_code_meaning=nuclide_meaning,
        half_life_s=F18_HALF_LIFE_S,
        positron_fraction=F18_POSITRON_FRACTION,
        total_dose_bq=dose_bq,
        start_datetime=injected.strftime("%Y%m%d%H%M%S"),
    )


def _intersects(lesion: DemoLesion, slice_z: Sequence[float], origin: tuple[float, float], pixel: float,
                matrix: int) -> bool:
    (x, y, z), (rx, ry, rz) = lesion.centre_mm, lesion.radii_mm
    extent = (matrix - 1) * pixel
    return (min(slice_z) - rz <= z <= max(slice_z) + rz
            and origin[0] - rx <= x <= origin[0] + extent + rx
            and origin[1] - ry <= y <= origin[1] + extent + ry)


def _describe(protocol: SeriesProtocol, exam: ExamProtocol, scanner: ScannerModel) -> str:
    """SeriesDescription in the naming style of the scanner's vendor."""
    if protocol.mr is not None:
        return protocol.mr.names[("siemens", "ge", "philips").index(scanner.vendor)]
    if protocol.modality == "PT":
        return {"siemens": "PET AC 3D", "ge": "PET WB AC", "philips": "PET WB CTAC"}.get(scanner.vendor, "PET AC")
    kernel = scanner.kernels[("soft", "lung", "bone").index(protocol.kernel)]
    return f"{exam.region_label} {protocol.label} {protocol.slice_thickness_mm:.1f} {kernel}"


def _scanner_model(scanner: DemoScanner) -> ScannerModel:
    return next(m for m in SCANNER_MODELS if m.model == scanner.model)


def ground_truth(plan: Sequence[DemoPatient]) -> list[dict[str, Any]]:
    """The plan as plain JSON-ready dictionaries (for SEG and EHR generators, or a ground-truth file)."""
    return [asdict(patient) for patient in plan]


# --- Pixels --------------------------------------------------------------------------------------------

def _layers_for_study(patient: DemoPatient, study: DemoStudy) -> tuple[Layer, ...]:
    anatomy, (dx, dy, dz) = patient.anatomy, study.table_offset_mm
    lesion_layers = []
    for lesion in study.lesions:
        (x, y, z), (rx, ry, rz) = lesion.centre_mm, lesion.radii_mm
        centre = ((x - dx) / anatomy.width_scale, (y - dy) / anatomy.depth_scale, (z - dz) / anatomy.height_scale)
        radii = (rx / anatomy.width_scale, ry / anatomy.depth_scale, rz / anatomy.height_scale)
        uptake = (("pet_suv", lesion.suv_mean),)
        lesion_layers.append(Layer(lesion.tissue, Ellipsoid(*centre, *radii), overrides=uptake))
        if lesion.necrotic:
            lesion_layers.append(Layer("necrosis", Ellipsoid(*centre, *(r * 0.5 for r in radii))))
    return body.build_body(anatomy) + tuple(lesion_layers)


def _grid(patient: DemoPatient, study: DemoStudy, series: DemoSeries) -> SliceGrid:
    anatomy, (dx, dy, dz) = patient.anatomy, study.table_offset_mm
    row_step, col_step = series.pixel_spacing_mm
    xs = series.origin_xy_mm[0] + col_step * np.arange(series.columns)
    ys = series.origin_xy_mm[1] + row_step * np.arange(series.rows)
    zs = np.asarray(series.slice_z_mm)
    edge = col_step / ((anatomy.width_scale + anatomy.depth_scale) / 2.0)
    return SliceGrid((xs - dx) / anatomy.width_scale, (ys - dy) / anatomy.depth_scale,
                     (zs - dz) / anatomy.height_scale, edge)


def _geometry_key(series: DemoSeries) -> tuple[Any, ...]:
    return (series.rows, series.columns, series.pixel_spacing_mm, series.origin_xy_mm, series.slice_z_mm)


def _spacing(series: DemoSeries) -> tuple[float, float, float]:
    return series.spacing_between_slices_mm, series.pixel_spacing_mm[0], series.pixel_spacing_mm[1]


@dataclass
class _Rendered:
    """A noise-free rendering shared by the series of one geometry, with its tissue texture field."""

    volumes: RenderedVolumes
    texture: np.ndarray


def _series_pixels(patient: DemoPatient, study: DemoStudy, series: DemoSeries, rendered: _Rendered
                   ) -> tuple[np.ndarray, list[float]]:
    """Stored pixel values (slices, rows, columns) and, for PET, each slice's RescaleSlope."""
    protocol = SERIES_PROTOCOLS[series.protocol_key]
    rng = _rng("noise", series.series_instance_uid)
    volumes = rendered.volumes
    clean = volumes.signal[series.contrast]
    if series.contrast in CT_CONTRASTS:
        hu = ct_hounsfield(clean, rendered.texture, volumes.texture_hu, rng, protocol.noise,
                           sharp=protocol.kernel != "soft")
        return (np.clip(np.rint(hu), -1024, 3071) + 1024).astype(np.int16), []
    if series.modality == "MR":
        # Receiver gain is arbitrary on MR, so magnitude images differ in scale from series to series.
        values = mr_signal(clean, rendered.texture, volumes.texture_rel, rng, gain=float(rng.uniform(0.8, 1.6)),
                           noise_sd=protocol.noise * 1000.0, magnitude=series.contrast != "mr_adc")
        return np.clip(np.rint(values), 0, 65535).astype(np.uint16), []
    # PET: SUV → activity concentration (Bq/ml) decay-corrected to the scan start, per-slice scaling.
    suv = pet_suv(clean, rendered.texture, volumes.texture_rel, rng, _spacing(series), noise_level=protocol.noise)
    injection = series.radiopharmaceutical
    assert injection is not None
    bqml = suv * _suv_to_bqml(injection, series, study.patient_weight_kg)
    stored = np.empty(bqml.shape, dtype=np.uint16)
    slopes = []
    for index, plane in enumerate(bqml):
        slope = float(f"{max(float(plane.max()) / 32767.0, 1e-4):.6g}")
        stored[index] = np.clip(np.rint(plane / slope), 0, 32767).astype(np.uint16)
        slopes.append(slope)
    return stored, slopes


def _suv_to_bqml(injection: DemoRadiopharmaceutical, series: DemoSeries, weight_kg: float) -> float:
    injected = dt.datetime.strptime(injection.start_datetime, "%Y%m%d%H%M%S")
    scan = dt.datetime.strptime(series.series_date + series.series_time, "%Y%m%d%H%M%S")
    decayed_dose = injection.total_dose_bq * 0.5 ** ((scan - injected).total_seconds() / injection.half_life_s)
    return decayed_dose / (weight_kg * 1000.0)


def _iter_series(plan: Sequence[DemoPatient]) -> Iterator[tuple[DemoStudy, DemoSeries, Dataset, list[Dataset]]]:
    """Per series: the attributes all its images share, and each image's own (pixels included)."""
    for patient in plan:
        for study in patient.studies:
            layers = _layers_for_study(patient, study)
            remaining = Counter(_geometry_key(s) for s in study.series)
            cache: dict[tuple[Any, ...], _Rendered] = {}
            for series in study.series:
                key = _geometry_key(series)
                if key not in cache:
                    # Series that share a geometry (native/venous/lung CT, T2/T1 MR, DWI/ADC) share one
                    # rendering and one tissue texture, as one patient scanned in one sitting would.
                    contrasts = sorted({s.contrast for s in study.series if _geometry_key(s) == key})
                    volumes = render(layers, _grid(patient, study, series), contrasts)
                    bank = noise_bank()
                    texture = bank.draw(bank.texture, _rng("texture", series.series_instance_uid),
                                        volumes.texture_hu.shape)
                    cache[key] = _Rendered(volumes, texture)
                pixels, slopes = _series_pixels(patient, study, series, cache[key])
                remaining[key] -= 1
                if remaining[key] == 0:
                    del cache[key]
                header = _series_header(patient, study, series, pixels)
                yield study, series, header, _image_datasets(patient, study, series, header, pixels, slopes)


def _file_meta(series: DemoSeries, sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = series.sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def _clone(element: pydicom.DataElement) -> pydicom.DataElement:
    # Sequences and multi-values are copied so that editing one image never changes its neighbours.
    if isinstance(element.value, DicomSequence):
        return copy.deepcopy(element)
    duplicate = copy.copy(element)
    if isinstance(element.value, MultiValue):
        duplicate.value = list(element.value)
    return duplicate


def _image_file_dataset(series: DemoSeries, header: Dataset, image: Dataset) -> FileDataset:
    dataset = Dataset()
    for element in header:
        dataset.add(_clone(element))
    for element in image:
        dataset.add(element)
    return FileDataset("", dataset, file_meta=_file_meta(series, image.SOPInstanceUID), preamble=b"\0" * 128)


def _segmentation_file_dataset(series: DemoSeries, sources: list[FileDataset]) -> FileDataset | None:
    """The DICOM-SEG of the series' lesions as a Part-10-ready dataset (None: no lesion voxel)."""
    segmentation = build_lesion_segmentation(series, sources)
    if segmentation is None:
        return None
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = segmentation.SOPClassUID
    meta.MediaStorageSOPInstanceUID = segmentation.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return FileDataset("", segmentation, file_meta=meta, preamble=b"\0" * 128)


def iter_demo_instances(plan: list[DemoPatient]) -> Iterator[pydicom.FileDataset]:
    """Render and yield every image of the plan, series by series, as Part-10-ready datasets.

    A series that shows lesions is followed by its DICOM-SEG (`gateway.demo.segmentations`), one instance in
    a series of its own.
    """
    for _, series, header, images in _iter_series(plan):
        sources = []
        for image in images:
            dataset = _image_file_dataset(series, header, image)
            if series.lesions:
                sources.append(dataset)
            yield dataset
        if sources:
            segmentation = _segmentation_file_dataset(series, sources)
            if segmentation is not None:
                yield segmentation


def _encode(element: pydicom.DataElement, encodings: str | list[str]) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_data_element(buffer, element, encodings)
    return buffer.getvalue()


def write_demo_files(out_dir: Path, seed: int = 0, patients: int = 8) -> list[Path]:
    """Write the demo data set as .dcm files under out_dir/<PatientID>/<date>_<accession>/<series>/.

    The files are exactly what `iter_demo_instances(...)[i].save_as(path, enforce_file_format=True)` writes,
    the lesion segmentations included (folder <number>_SEG); the attributes shared by a series are encoded
    once instead of once per image, which is most of the cost of writing with pydicom.
    """
    out_dir = Path(out_dir)
    plan = plan_demo(seed, patients)
    patient_of = {study.study_instance_uid: patient for patient in plan for study in patient.studies}
    paths = []
    for study, series, header, images in _iter_series(plan):
        patient = patient_of[study.study_instance_uid]
        folder = (out_dir / patient.patient_id / f"{study.study_date}_{study.accession_number}"
                  / f"{series.series_number:03d}_{series.modality}")
        folder.mkdir(parents=True, exist_ok=True)
        encodings = header.SpecificCharacterSet
        shared = {int(element.tag): _encode(element, encodings) for element in header}
        meta_template = _file_meta(series, "")
        meta_shared = {int(e.tag): _encode(e, "") for e in meta_template if e.keyword != "MediaStorageSOPInstanceUID"}
        meta_shared[0x00020001] = _encode(pydicom.DataElement(0x00020001, "OB", b"\x00\x01"), "")
        for image in images:
            meta = dict(meta_shared)
            meta[0x00020003] = _encode(pydicom.DataElement(0x00020003, "UI", image.SOPInstanceUID), "")
            meta_bytes = b"".join(meta[tag] for tag in sorted(meta))
            group_length = b"\x02\x00\x00\x00UL\x04\x00" + len(meta_bytes).to_bytes(4, "little")
            elements = dict(shared)
            for element in image:
                elements[int(element.tag)] = _encode(element, encodings)
            path = folder / f"{image.InstanceNumber:04d}.dcm"
            with path.open("wb") as handle:
                handle.write(b"\0" * 128 + b"DICM" + group_length + meta_bytes)
                handle.write(b"".join(elements[tag] for tag in sorted(elements)))
            paths.append(path)
        if series.lesions:
            sources = [_image_file_dataset(series, header, image) for image in images]
            segmentation = _segmentation_file_dataset(series, sources)
            if segmentation is not None:
                seg_folder = folder.with_name(f"{int(segmentation.SeriesNumber):03d}_SEG")
                seg_folder.mkdir(exist_ok=True)
                path = seg_folder / f"{int(segmentation.InstanceNumber):04d}.dcm"
                segmentation.save_as(path, enforce_file_format=True)
                paths.append(path)
    return paths


# --- DICOM datasets ------------------------------------------------------------------------------------

def _code(value: str, meaning: str, scheme: str = "SCT") -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _series_header(patient: DemoPatient, study: DemoStudy, series: DemoSeries, pixels: np.ndarray) -> Dataset:
    """Everything that is the same for all images of the series."""
    protocol = SERIES_PROTOCOLS[series.protocol_key]
    exam = EXAMS[study.exam_key]
    model = _scanner_model(study.scanner)
    acquisition_time = _tm(_seconds(study.study_time) + protocol.delay_s)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = list(protocol.image_type)
    ds.InstanceCreationDate = series.series_date
    ds.InstanceCreationTime = series.series_time
    ds.SOPClassUID = series.sop_class_uid
    ds.StudyDate = study.study_date
    ds.SeriesDate = series.series_date
    ds.AcquisitionDate = series.series_date
    ds.ContentDate = series.series_date
    ds.StudyTime = study.study_time
    ds.SeriesTime = series.series_time
    ds.AcquisitionTime = acquisition_time
    ds.ContentTime = series.series_time
    ds.AccessionNumber = study.accession_number
    ds.Modality = series.modality
    ds.Manufacturer = study.scanner.manufacturer
    ds.InstitutionName = study.institution_name
    ds.InstitutionAddress = next(h.address for h in HOSPITALS if h.name == study.institution_name)
    ds.ReferringPhysicianName = study.referring_physician
    ds.StationName = study.scanner.station_name
    ds.StudyDescription = study.description
    ds.SeriesDescription = series.description
    ds.InstitutionalDepartmentName = study.department
    ds.ManufacturerModelName = study.scanner.model
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = patient.issuer
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientAge = study.patient_age
    ds.PatientSize = study.patient_size_m
    ds.PatientWeight = study.patient_weight_kg
    ds.BodyPartExamined = series.body_part
    ds.SliceThickness = series.slice_thickness_mm
    ds.SpacingBetweenSlices = series.spacing_between_slices_mm
    ds.DeviceSerialNumber = study.scanner.serial_number
    ds.SoftwareVersions = study.scanner.software_versions.split("\\")
    ds.ProtocolName = exam.protocol_name
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study.study_instance_uid
    ds.SeriesInstanceUID = series.series_instance_uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = series.series_number
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = series.rows
    ds.Columns = series.columns
    ds.PixelSpacing = list(series.pixel_spacing_mm)
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.BurnedInAnnotation = "NO"
    if protocol.contrast_agent:
        if series.modality == "CT":
            ds.ContrastBolusAgent = "Iohexol 350 mg I/ml"
            ds.ContrastBolusRoute = "IV"
            ds.ContrastBolusVolume = 90
            ds.ContrastBolusIngredient = "IODINE"
            ds.ContrastBolusIngredientConcentration = 350
        else:
            ds.ContrastBolusAgent = "Gadoterate meglumine 0.5 mmol/ml"
            ds.ContrastBolusRoute = "IV"
            ds.ContrastBolusVolume = round(study.patient_weight_kg * 0.2, 1)
            ds.ContrastBolusIngredient = "GADOLINIUM"
    if series.modality == "CT":
        _add_ct(ds, study, series, protocol, model)
    elif series.modality == "MR":
        _add_mr(ds, study, series, protocol, pixels)
    else:
        _add_pet(ds, series, study.patient_weight_kg)
    return ds


def _seconds(tm: str) -> int:
    return int(tm[0:2]) * 3600 + int(tm[2:4]) * 60 + int(tm[4:6])


def _add_ct(ds: Dataset, study: DemoStudy, series: DemoSeries, protocol: SeriesProtocol,
            model: ScannerModel) -> None:
    low_dose = study.modalities != ("CT",)
    ds.ScanOptions = "HELICAL"
    ds.KVP = 120
    ds.DataCollectionDiameter = 500
    ds.ReconstructionDiameter = round(series.columns * series.pixel_spacing_mm[1], 1)
    ds.DistanceSourceToDetector = 1085.6
    ds.DistanceSourceToPatient = 595
    ds.GantryDetectorTilt = 0
    ds.TableHeight = round(150.0 + study.table_offset_mm[1], 1)
    ds.RotationDirection = "CW"
    ds.ExposureTime = 500
    ds.FilterType = "BODY"
    ds.GeneratorPower = 60 if low_dose else 90
    ds.FocalSpots = 1.2
    ds.ConvolutionKernel = model.kernels[("soft", "lung", "bone").index(protocol.kernel)]
    ds.SpiralPitchFactor = 1.0 if low_dose else 0.9
    ds.CTDIvol = 2.6 if low_dose else 9.8
    assert protocol.window is not None
    ds.WindowCenter = protocol.window[0]
    ds.WindowWidth = protocol.window[1]
    ds.WindowCenterWidthExplanation = protocol.window[2]
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"


def _add_mr(ds: Dataset, study: DemoStudy, series: DemoSeries, protocol: SeriesProtocol,
            pixels: np.ndarray) -> None:
    sequence = protocol.mr
    assert sequence is not None
    field = study.scanner.field_strength_t or 1.5
    ds.ScanningSequence = list(sequence.scanning_sequence)
    ds.SequenceVariant = list(sequence.sequence_variant)
    ds.ScanOptions = list(sequence.scan_options)
    ds.MRAcquisitionType = sequence.acquisition_type
    ds.SequenceName = {"mr_t2": "*tse2d1_17", "mr_t1": "*tse2d1_3", "mr_t1c": "*fl3d1",
                       "mr_dwi": "*ep_b800t", "mr_adc": "*ep_b50_800"}[series.contrast]
    ds.RepetitionTime = sequence.repetition_time_ms
    ds.EchoTime = sequence.echo_time_ms
    ds.NumberOfAverages = 2 if series.contrast in ("mr_dwi", "mr_adc") else 1
    ds.ImagingFrequency = round(42.577478 * field, 6)
    ds.ImagedNucleus = "1H"
    ds.MagneticFieldStrength = field
    ds.EchoTrainLength = sequence.echo_train_length
    ds.PercentSampling = 100
    ds.PercentPhaseFieldOfView = 100
    ds.PixelBandwidth = 1860 if series.contrast in ("mr_dwi", "mr_adc") else 200
    ds.ReceiveCoilName = "Body"
    ds.TransmitCoilName = "Body"
    ds.AcquisitionMatrix = [0, series.columns, series.rows, 0]
    ds.InPlanePhaseEncodingDirection = "ROW"
    ds.FlipAngle = sequence.flip_angle_deg
    if sequence.b_value is not None:
        ds.DiffusionBValue = sequence.b_value
    # Diffusion images are mostly dark: the window must leave room for the bright (restricted) lesions.
    centre, width = window_from_percentiles(pixels, high=99.9 if series.contrast == "mr_dwi" else 99.5)
    ds.WindowCenter = round(centre)
    ds.WindowWidth = round(width)


def _add_pet(ds: Dataset, series: DemoSeries, weight_kg: float) -> None:
    injection = series.radiopharmaceutical
    assert injection is not None
    ds.SeriesType = ["WHOLE BODY", "IMAGE"]
    ds.Units = "BQML"
    ds.CountsSource = "EMISSION"
    ds.NumberOfSlices = series.instance_count
    ds.DecayCorrection = "START"
    ds.CorrectedImage = ["DECY", "ATTN", "SCAT", "DTIM", "RAN", "NORM"]
    ds.RandomsCorrectionMethod = "DLYD"
    ds.AttenuationCorrectionMethod = "measured,AC CT"
    ds.ReconstructionMethod = "OSEM 3i21s"
    ds.CollimatorType = "NONE"
    ds.FrameReferenceTime = 0
    ds.ActualFrameDuration = 120000
    ds.DecayFactor = 1
    ds.DoseCalibrationFactor = 1
    ds.DeadTimeFactor = 1
    ds.RescaleIntercept = 0
    radiopharmaceutical = Dataset()
    radiopharmaceutical.RadiopharmaceuticalRoute = "Intravenous"
    radiopharmaceutical.RadiopharmaceuticalStartTime = injection.start_datetime[8:]
    radiopharmaceutical.RadiopharmaceuticalStartDateTime = injection.start_datetime
    radiopharmaceutical.RadionuclideTotalDose = injection.total_dose_bq
    radiopharmaceutical.RadionuclideHalfLife = injection.half_life_s
    radiopharmaceutical.RadionuclidePositronFraction = injection.positron_fraction
    radiopharmaceutical.Radiopharmaceutical = injection.radiopharmaceutical
    radiopharmaceutical.RadionuclideCodeSequence = DicomSequence(
        [_code(injection.radionuclide_code_value, injection.radionuclide_code_meaning)])
    radiopharmaceutical.RadiopharmaceuticalCodeSequence = DicomSequence(
        [_code(injection.code_value, injection.code_meaning)])
    ds.RadiopharmaceuticalInformationSequence = DicomSequence([radiopharmaceutical])
    orientation = _code("102538003", "recumbent")
    orientation.PatientOrientationModifierCodeSequence = DicomSequence([_code("40199007", "supine")])
    ds.PatientOrientationCodeSequence = DicomSequence([orientation])
    ds.PatientGantryRelationshipCodeSequence = DicomSequence([_code("102540008", "headfirst")])
    # A viewer's default PET window: SUV 0-6 expressed in Bq/ml.
    bqml_per_suv = _suv_to_bqml(injection, series, weight_kg)
    ds.WindowCenter = round(3.0 * bqml_per_suv)
    ds.WindowWidth = round(6.0 * bqml_per_suv)


def _image_datasets(patient: DemoPatient, study: DemoStudy, series: DemoSeries, header: Dataset,
                    pixels: np.ndarray, slopes: list[float]) -> list[Dataset]:
    """The attributes that differ from image to image (position, UID, pixels, per-slice scaling)."""
    acquired = _seconds(str(header.AcquisitionTime))
    body_widths: list[float] = []
    if series.modality == "CT":
        dz = study.table_offset_mm[2]
        body_widths = [_body_half_width(patient.anatomy, (z - dz) / patient.anatomy.height_scale)
                       for z in series.slice_z_mm]
    images = []
    for index, sop_instance_uid in enumerate(series.sop_instance_uids):
        ds = Dataset()
        ds.SOPInstanceUID = sop_instance_uid
        ds.InstanceNumber = index + 1
        x, y, z = series.image_position(index)
        ds.ImagePositionPatient = [x, y, z]
        ds.SliceLocation = z
        if series.modality == "CT":
            # Tube current follows the patient's width, as automatic exposure control does.
            current = int(np.clip(round(220 * (body_widths[index] / 165.0) ** 2), 60, 500))
            if study.modalities != ("CT",):
                current = max(current // 4, 30)
            ds.XRayTubeCurrent = current
            ds.Exposure = round(current * 0.5 / float(header.SpiralPitchFactor))
            ds.AcquisitionTime = _tm(acquired + round(index * 0.3 * series.spacing_between_slices_mm / 5.0))
        elif series.modality == "PT":
            ds.ImageIndex = index + 1
            ds.RescaleSlope = slopes[index]
        ds.add_new(0x7FE00010, "OW", pixels[index].tobytes())
        images.append(ds)
    return images
