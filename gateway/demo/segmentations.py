"""DICOM-SEG of the demo lesions: one BINARY segmentation per demo series that shows lesions.

Each lesion of a series (`DemoSeries.lesions`) becomes one segment, rasterised from the ground-truth ellipsoid
at the centres of the series' voxels, so the segmentation is exactly what `DemoLesion.contains` says. The
segments carry SNOMED CT codes (category "Morphologically abnormal structure", type "Neoplasm, primary" or
"Neoplasm, secondary") and a tracking UID per lesion that is the same in all of a patient's studies, so
follow-up tools can pair the lesions.

Like the rest of the demo, everything is a pure function of the plan: UIDs derive from the source series' UID
(itself a function of the seed), dates and times from the series', and the one UID highdicom draws at random
(the dimension organisation) is replaced by a derived one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

from gateway.demo.model import DemoLesion, DemoSeries

if TYPE_CHECKING:
    from gateway.demo.model import DemoPatient

# Kept apart from the image UIDs' salt so a segmentation UID can never equal an image UID.
SEGMENTATION_SALT = "eucaim-gateway-demo-v1-segmentation"
# SEG series number = source series number + this, so "SEG of series 3" is series 103.
SERIES_NUMBER_OFFSET = 100
MANUFACTURER = "EUCAIM"
MANUFACTURER_MODEL_NAME = "Gateway demo lesion annotation"
SOFTWARE_VERSION = "1.0"
DEVICE_SERIAL_NUMBER = "DEMO-SEG-1"
# Reading happens after the acquisition; an hour later keeps the segmentation on the study's day.
READING_DELAY_S = 3600

ALGORITHM = hd.AlgorithmIdentificationSequence(
    name="Lesion contouring (region growing, reader-corrected)",
    family=codes.cid7162.NeighborhoodAnalysis,
    version=SOFTWARE_VERSION,
    source=MANUFACTURER,
)


def segmentation_series_uid(series: DemoSeries) -> str:
    return _derived_uid(series.series_instance_uid, "series")


def segmentation_sop_instance_uid(series: DemoSeries) -> str:
    return _derived_uid(series.series_instance_uid, "instance")


def segmentation_series_number(series: DemoSeries) -> int:
    return series.series_number + SERIES_NUMBER_OFFSET


def lesion_tracking_uid(patient_id: str, lesion: DemoLesion) -> str:
    """The same lesion gets the same tracking UID in every study of the patient."""
    return _derived_uid("tracking", patient_id, lesion.lesion_id)


def segment_label(lesion: DemoLesion) -> str:
    return f"{lesion.lesion_id} {lesion.kind}, {lesion.location}"[:64]


def lesion_masks(series: DemoSeries) -> np.ndarray:
    """Boolean (slices, rows, columns, lesions) masks in the series' InstanceNumber order.

    A voxel belongs to a lesion when its centre lies inside the lesion's ellipsoid.
    """
    masks = np.zeros((series.instance_count, series.rows, series.columns, len(series.lesions)), dtype=bool)
    for index, lesion in enumerate(series.lesions):
        box, inside = _lesion_box(series, lesion)
        if box is not None:
            masks[..., index][box] = inside
    return masks


def series_has_segmentation(series: DemoSeries) -> bool:
    """Whether the demo makes a segmentation for the series: some lesion covers a voxel centre. Cheap."""
    return any(_lesion_box(series, lesion)[1].any() for lesion in series.lesions)


def _lesion_box(series: DemoSeries, lesion: DemoLesion) -> tuple[tuple[np.ndarray, ...] | None, np.ndarray]:
    """The lesion's bounding box in the series' index space and which voxel centres in it the lesion holds.

    Only the box is evaluated: lesions are small against the field of view.
    """
    row_step, column_step = series.pixel_spacing_mm
    xs = series.origin_xy_mm[0] + column_step * np.arange(series.columns)
    ys = series.origin_xy_mm[1] + row_step * np.arange(series.rows)
    zs = np.asarray(series.slice_z_mm, dtype=float)
    (cx, cy, cz), (rx, ry, rz) = lesion.centre_mm, lesion.radii_mm
    slices = np.flatnonzero(np.abs(zs - cz) <= rz)
    rows = np.flatnonzero(np.abs(ys - cy) <= ry)
    columns = np.flatnonzero(np.abs(xs - cx) <= rx)
    if not (slices.size and rows.size and columns.size):
        return None, np.zeros(0, dtype=bool)
    z, y, x = np.meshgrid(zs[slices], ys[rows], xs[columns], indexing="ij")
    return np.ix_(slices, rows, columns), lesion.contains(np.stack([x, y, z], axis=-1))


def build_lesion_segmentation(series: DemoSeries, source_images: Sequence[Dataset]) -> hd.seg.Segmentation | None:
    """The DICOM-SEG of the series' lesions, or None when the series shows none.

    ``source_images`` are the series' images in InstanceNumber order (what `iter_demo_instances` yields for
    it); highdicom copies patient, study and geometry from them and references each one.
    """
    if not series.lesions:
        return None
    if [str(image.SOPInstanceUID) for image in source_images] != list(series.sop_instance_uids):
        raise ValueError(f"the source images do not match demo series {series.series_instance_uid}")
    masks = lesion_masks(series)
    present = [index for index in range(len(series.lesions)) if masks[..., index].any()]
    if not present:
        # A lesion can touch the series' box without covering a voxel centre.
        return None
    patient_id = str(source_images[0].PatientID)
    descriptions = []
    for number, index in enumerate(present, start=1):
        lesion = series.lesions[index]
        primary = lesion.kind == "primary tumour"
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=segment_label(lesion),
            segmented_property_category=codes.cid7150.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.cid7151.NeoplasmPrimary if primary else codes.cid7151.NeoplasmSecondary,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=ALGORITHM,
            tracking_uid=lesion_tracking_uid(patient_id, lesion),
            tracking_id=lesion.lesion_id,
        ))
    reading_time = _tm(_seconds(series.series_time) + READING_DELAY_S)
    with _quiet_highdicom():
        segmentation = _segmentation(series, source_images, masks[..., present], descriptions, reading_time)
    _make_deterministic(segmentation, series, reading_time)
    if "BodyPartExamined" in source_images[0]:
        segmentation.BodyPartExamined = source_images[0].BodyPartExamined
    return segmentation


def _segmentation(series: DemoSeries, source_images: Sequence[Dataset], masks: np.ndarray,
                  descriptions: list[hd.seg.SegmentDescription], reading_time: str) -> hd.seg.Segmentation:
    return hd.seg.Segmentation(
        source_images=list(source_images),
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=segmentation_series_uid(series),
        series_number=segmentation_series_number(series),
        sop_instance_uid=segmentation_sop_instance_uid(series),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MANUFACTURER_MODEL_NAME,
        software_versions=SOFTWARE_VERSION,
        device_serial_number=DEVICE_SERIAL_NUMBER,
        institution_name=source_images[0].get("InstitutionName"),
        institutional_department_name=source_images[0].get("InstitutionalDepartmentName"),
        content_description=f"Lesions on {series.description}"[:64],
        content_label="LESIONS",
        series_description=f"SEG lesions {series.description}"[:64],
        series_date=series.series_date,
        series_time=reading_time,
        content_date=series.series_date,
        content_time=reading_time,
    )


@contextlib.contextmanager
def _quiet_highdicom() -> Iterator[None]:
    """highdicom logs every module it copies at INFO; a demo run makes dozens of segmentations."""
    logger = logging.getLogger("highdicom")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def iter_demo_segmentations(plan: Sequence[DemoPatient]) -> Iterator[hd.seg.Segmentation]:
    """The segmentations of every series of the plan with lesions, rendering only those series' images.

    `iter_demo_instances` already yields these after their series; this is for callers that want the
    segmentations alone.
    """
    from gateway.demo.synth import iter_demo_instances  # synth imports this module

    for patient in plan:
        for study in patient.studies:
            for series in study.series:
                if not series.lesions:
                    continue
                only_series = dataclasses.replace(patient, studies=(dataclasses.replace(study, series=(series,)),))
                for dataset in iter_demo_instances([only_series]):
                    if dataset.Modality == "SEG":
                        yield hd.seg.Segmentation.from_dataset(dataset)


def _make_deterministic(segmentation: hd.seg.Segmentation, series: DemoSeries, reading_time: str) -> None:
    """Replace what highdicom takes from the clock or draws at random."""
    segmentation.InstanceCreationDate = series.series_date
    segmentation.InstanceCreationTime = reading_time
    for equipment in segmentation.get("ContributingEquipmentSequence", []):
        # The scanner's entry carries its acquisition time; highdicom stamps its own entry with the clock.
        purpose = equipment.get("PurposeOfReferenceCodeSequence", [Dataset()])[0]
        if purpose.get("CodeValue") != codes.DCM.AcquisitionEquipment.value:
            equipment.ContributionDateTime = series.series_date + reading_time
    organisation_uid = _derived_uid(series.series_instance_uid, "dimension-organisation")
    for item in segmentation.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = organisation_uid
    for item in segmentation.get("DimensionIndexSequence", []):
        item.DimensionOrganizationUID = organisation_uid


def _derived_uid(*parts: str) -> str:
    return generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=[SEGMENTATION_SALT, *parts])


def _seconds(tm: str) -> int:
    return int(tm[0:2]) * 3600 + int(tm[2:4]) * 60 + int(tm[4:6])


def _tm(seconds: int) -> str:
    seconds = min(seconds, 86399)  # stay on the series' day rather than wrap to a time before the scan
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"
