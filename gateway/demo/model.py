"""The demo data set's plan: synthetic patients, their studies and series, and the ground truth.

Everything here is cheap, immutable and JSON-friendly (`dataclasses.asdict`), so later parts of the
project (DICOM-SEG of the lesions, EHR records) can be generated from the same plan without pixels.
Coordinates are millimetres in the DICOM patient coordinate system (LPS) of the study they belong to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DemoAnatomy:
    """How one patient's body differs from the template phantom (scale factors, fat, organs' fill)."""

    sex: str               # "F" | "M"
    width_scale: float     # template x → patient x
    depth_scale: float     # template y → patient y
    height_scale: float    # template z → patient z
    fat_mm: float          # subcutaneous fat thickness on the trunk
    breast_scale: float    # 0 for men
    bladder_fill: float
    seed: int              # drives the random parts of the anatomy (lung vessels, bowel loops)


@dataclass(frozen=True)
class DemoDiagnosis:
    """The cancer the patient is imaged for, coded as a registry would code it."""

    site: str                      # "lung", "breast", "prostate", "colorectal", "head_and_neck", ...
    icd10_code: str                # ICD-10 (WHO), e.g. "C34.1"
    icd10_display: str
    icdo3_topography: str          # ICD-O-3 topography, e.g. "C34.1"
    icdo3_topography_display: str
    icdo3_morphology: str          # ICD-O-3 morphology with behaviour, e.g. "8140/3"
    icdo3_morphology_display: str
    laterality: str | None         # "left" | "right" | None
    diagnosis_date: str            # YYYYMMDD, histological confirmation
    clinical_tnm: str              # e.g. "cT2a cN1 cM0", derived from the lesions at diagnosis
    course: str                    # "response" | "stable" | "progression" seen on follow-up imaging


@dataclass(frozen=True)
class DemoLesion:
    """One lesion as it appears in one study: an axis-aligned ellipsoid in that study's patient frame."""

    lesion_id: str                        # stable across the patient's studies ("L1" is the primary)
    kind: str                             # "primary tumour" | "lymph node metastasis" | "distant metastasis"
    location: str                         # anatomical location in words ("right upper lobe", "liver")
    centre_mm: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    tissue: str                           # phantom tissue used to render it
    suv_mean: float                       # FDG uptake of its viable part
    necrotic: bool                        # has a non-enhancing, cold core of half its radii

    @property
    def radius_mm(self) -> float:
        """Radius of the sphere with the same volume."""
        rx, ry, rz = self.radii_mm
        return (rx * ry * rz) ** (1.0 / 3.0)

    @property
    def diameter_mm(self) -> float:
        """Longest diameter, as a radiologist would measure it."""
        return 2.0 * max(self.radii_mm)

    @property
    def volume_ml(self) -> float:
        rx, ry, rz = self.radii_mm
        return 4.0 / 3.0 * math.pi * rx * ry * rz / 1000.0

    def contains(self, points_mm: np.ndarray) -> np.ndarray:
        """Which of the (..., 3) patient-coordinate points lie inside the lesion."""
        centre = np.asarray(self.centre_mm, dtype=float)
        radii = np.asarray(self.radii_mm, dtype=float)
        scaled = (np.asarray(points_mm, dtype=float) - centre) / radii
        return np.einsum("...i,...i->...", scaled, scaled) <= 1.0


@dataclass(frozen=True)
class DemoScanner:
    manufacturer: str
    model: str
    station_name: str
    serial_number: str
    software_versions: str
    field_strength_t: float | None = None  # MR only


@dataclass(frozen=True)
class DemoRadiopharmaceutical:
    """The tracer injection of a PET series (what SUV computation needs)."""

    radiopharmaceutical: str        # "Fludeoxyglucose F^18^"
    code_value: str                 # SNOMED CT
    code_meaning: str
    radionuclide_code_value: str
    radionuclide_code_meaning: str
    half_life_s: float
    positron_fraction: float
    total_dose_bq: float            # injected activity at start time
    start_datetime: str             # YYYYMMDDHHMMSS of the injection


@dataclass(frozen=True)
class DemoSeries:
    series_instance_uid: str
    series_number: int
    modality: str                   # "CT" | "MR" | "PT"
    sop_class_uid: str
    description: str
    body_part: str                  # BodyPartExamined defined term
    series_date: str
    series_time: str
    protocol_key: str               # key of the series protocol in gateway.demo.catalogue
    contrast: str                   # rendering contrast (gateway.demo.phantom.CONTRASTS)
    rows: int
    columns: int
    pixel_spacing_mm: tuple[float, float]  # (between rows, between columns) as in PixelSpacing
    slice_thickness_mm: float
    spacing_between_slices_mm: float
    origin_xy_mm: tuple[float, float]      # x, y of the centre of the first transmitted pixel
    slice_z_mm: tuple[float, ...]          # z of each image, in InstanceNumber order (descending)
    sop_instance_uids: tuple[str, ...]
    lesions: tuple[DemoLesion, ...]        # lesions that intersect this series' volume
    radiopharmaceutical: DemoRadiopharmaceutical | None = None

    @property
    def instance_count(self) -> int:
        return len(self.slice_z_mm)

    def image_position(self, index: int) -> tuple[float, float, float]:
        """ImagePositionPatient of the image with InstanceNumber index + 1."""
        return self.origin_xy_mm[0], self.origin_xy_mm[1], self.slice_z_mm[index]


@dataclass(frozen=True)
class DemoStudy:
    study_instance_uid: str
    accession_number: str
    study_id: str
    study_date: str
    study_time: str
    description: str
    exam_key: str                   # key of the exam protocol in gateway.demo.catalogue
    modality: str                   # the examination: "CT" | "MR" | "PT" (a PET/CT)
    purpose: str                    # "diagnosis" | "staging" | "follow-up"
    modalities: tuple[str, ...]     # ModalitiesInStudy
    body_part: str
    institution_name: str
    department: str
    referring_physician: str        # PN, family^given^^prefix
    scanner: DemoScanner
    frame_of_reference_uid: str     # shared by all series: they were acquired in one sitting
    patient_age: str                # AS, e.g. "063Y"
    patient_weight_kg: float
    patient_size_m: float
    table_offset_mm: tuple[float, float, float]  # where the template origin lies in this study's frame
    lesions: tuple[DemoLesion, ...]  # every lesion present at the time, in this study's frame
    series: tuple[DemoSeries, ...]


@dataclass(frozen=True)
class DemoPatient:
    patient_id: str
    name: str                       # PN: family^given
    birth_date: str                 # YYYYMMDD
    sex: str                        # "F" | "M"
    issuer: str                     # IssuerOfPatientID
    diagnosis: DemoDiagnosis
    studies: tuple[DemoStudy, ...]
    anatomy: DemoAnatomy
