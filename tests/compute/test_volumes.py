"""Volumes and regions of interest from stored series: geometry, rescaling, SEG and RTSTRUCT masks, features.

Everything is stored through the real ingest path (``node.ingest.store_bytes``) and read back through the
retrieve service, on SQLite and PostgreSQL (the ``node`` fixture).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from gateway.compute.features.pipeline import extract_features
from gateway.compute.regions import (
    fill_even_odd,
    load_rtstruct_masks,
    load_segmentation_masks,
)
from gateway.compute.volumes import Volume, load_series_volume
from gateway.demo.model import DemoLesion, DemoSeries, DemoStudy
from gateway.demo.segmentations import segmentation_series_uid
from gateway.demo.synth import iter_demo_instances, plan_demo
from gateway.node import Node
from tests.dicom_factory import make_dataset, new_uid, to_bytes

ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"


# --- Demo data: one PET/CT study with a large lesion (rendered once per module) ---------------------------

@dataclasses.dataclass
class DemoCase:
    study: DemoStudy
    ct: DemoSeries
    pet: DemoSeries
    lesion: DemoLesion
    files: dict[str, list[bytes]]  # series UID → Part 10 files (SEG series included)


@pytest.fixture(scope="module")
def demo_case() -> DemoCase:
    for patient in plan_demo(seed=0, patients=8):
        for study in patient.studies:
            modalities = {series.modality: series for series in study.series}
            if "PT" not in modalities or "CT" not in modalities:
                continue
            pet = modalities["PT"]
            lesion = next((lesion for lesion in pet.lesions if min(lesion.radii_mm) >= 12), None)
            if lesion is None:
                continue
            files: dict[str, list[bytes]] = {}
            for dataset in iter_demo_instances([dataclasses.replace(patient, studies=(study,))]):
                buffer = io.BytesIO()
                dataset.save_as(buffer, enforce_file_format=True)
                files.setdefault(str(dataset.SeriesInstanceUID), []).append(buffer.getvalue())
            return DemoCase(study, modalities["CT"], pet, lesion, files)
    raise LookupError("no PET/CT demo study with a lesion of 12 mm radius or more")


def store(node: Node, files: Iterable[bytes]) -> None:
    for data in files:
        result = node.ingest.store_bytes(data)
        assert result.ok, result.message


def store_shuffled(node: Node, files: Sequence[bytes], seed: int = 0) -> None:
    """Store in a random order: nothing may depend on the order instances arrive in."""
    order = np.random.default_rng(seed).permutation(len(files))
    store(node, [files[i] for i in order])


def truth_mask(volume: Volume, lesion: DemoLesion) -> np.ndarray:
    return np.stack([lesion.contains(volume.slice_points(k)) for k in range(volume.shape[0])])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def part10(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# --- Volumes from the demo --------------------------------------------------------------------------------

def test_ct_volume_is_sorted_along_the_normal_with_hounsfield_units(node: Node, demo_case: DemoCase) -> None:
    files = demo_case.files[demo_case.ct.series_instance_uid]
    store_shuffled(node, files)
    volume = load_series_volume(node, demo_case.study.study_instance_uid, demo_case.ct.series_instance_uid)

    series = demo_case.ct
    assert volume.shape == (series.instance_count, series.rows, series.columns)
    assert volume.array.dtype == np.float32 and volume.warnings == []
    assert volume.spacing == pytest.approx((series.spacing_between_slices_mm, *series.pixel_spacing_mm))
    assert np.allclose(volume.direction, np.eye(3))
    assert volume.frame_of_reference_uid == demo_case.study.frame_of_reference_uid
    assert volume.modality == "CT" and volume.series_uid == series.series_instance_uid
    # InstanceNumber runs head to feet in the demo; the volume runs along +normal, feet to head.
    assert volume.sop_instance_uids == list(reversed(series.sop_instance_uids))
    assert np.all(np.diff(volume.slice_offsets) > 0)
    assert volume.origin == pytest.approx(series.image_position(series.instance_count - 1))
    by_uid = {str(dataset.SOPInstanceUID): dataset for dataset in map(read, files)}
    for k in (0, 17, volume.shape[0] - 1):
        dataset = by_uid[volume.sop_instance_uids[k]]
        assert np.array_equal(volume.array[k], dataset.pixel_array.astype(np.float64) - 1024.0)
        assert volume.positions[k] == pytest.approx([float(v) for v in dataset.ImagePositionPatient])


def test_pet_volume_applies_each_slices_rescale_slope(node: Node, demo_case: DemoCase) -> None:
    files = demo_case.files[demo_case.pet.series_instance_uid]
    store_shuffled(node, files, seed=1)
    volume = load_series_volume(node, demo_case.study.study_instance_uid, demo_case.pet.series_instance_uid,
                                dtype=np.float64)
    by_uid = {str(dataset.SOPInstanceUID): dataset for dataset in map(read, files)}
    slopes = {float(by_uid[uid].RescaleSlope) for uid in volume.sop_instance_uids}
    assert len(slopes) > 10, "the demo PET should have per-slice slopes"
    for k, uid in enumerate(volume.sop_instance_uids):
        dataset = by_uid[uid]
        expected = dataset.pixel_array * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
        assert np.allclose(volume.array[k], expected, rtol=1e-12)
    assert volume.array.dtype == np.float64 and volume.array.max() > 1000  # Bq/ml, not stored values


def test_a_segmentation_series_is_not_an_image_series(node: Node, demo_case: DemoCase) -> None:
    seg_uid = segmentation_series_uid(demo_case.ct)
    store(node, demo_case.files[seg_uid])
    with pytest.raises(ValueError, match="SEG series, not an image series"):
        load_series_volume(node, demo_case.study.study_instance_uid, seg_uid)


# --- Volumes from hand-made series: order, gaps, inconsistencies, multi-frame ----------------------------

def factory_series(offsets: Sequence[float], *, instance_numbers: Sequence[int] | None = None,
                   per_slice: dict[int, dict[str, Any]] | None = None, rows: int = 12, columns: int = 10,
                   **common: Any) -> tuple[str, str, list[bytes]]:
    """Axial CT slices at the given z offsets; returns (study UID, series UID, files)."""
    study_uid, series_uid, frame_uid = new_uid(), new_uid(), new_uid()
    numbers = list(instance_numbers) if instance_numbers is not None else list(range(1, len(offsets) + 1))
    files = []
    for index, (z, number) in enumerate(zip(offsets, numbers, strict=True)):
        attributes: dict[str, Any] = {"FrameOfReferenceUID": frame_uid,
                                      "ImagePositionPatient": [-5.0, 7.5, float(z)], **common}
        attributes.update((per_slice or {}).get(index, {}))
        files.append(to_bytes(make_dataset(study_uid=study_uid, series_uid=series_uid, instance_number=number,
                                           rows=rows, columns=columns, seed=index, **attributes)))
    return study_uid, series_uid, files


def test_slices_are_ordered_by_position_not_instance_number(node: Node) -> None:
    offsets = [12.0, -3.0, 0.0, 9.0, 3.0, 6.0]
    study_uid, series_uid, files = factory_series(offsets, instance_numbers=[4, 2, 6, 1, 5, 3])
    store(node, files)
    volume = load_series_volume(node, study_uid, series_uid)
    assert volume.slice_offsets == pytest.approx([-3.0, 0.0, 3.0, 6.0, 9.0, 12.0])
    assert volume.spacing == pytest.approx((3.0, 0.8, 0.8)) and volume.warnings == []
    assert volume.origin == pytest.approx((-5.0, 7.5, -3.0))
    for k, z in enumerate(sorted(offsets)):
        expected = read(files[offsets.index(z)])
        assert volume.sop_instance_uids[k] == expected.SOPInstanceUID
        assert np.array_equal(volume.array[k], expected.pixel_array - 1024.0)


def test_missing_slice_and_irregular_spacing_are_reported(node: Node) -> None:
    offsets = [0.0, 2.5, 5.0, 10.0, 12.5, 15.6, 18.1, 20.6]  # one missing at 7.5, one gap of 3.1 mm
    study_uid, series_uid, files = factory_series(offsets)
    store(node, files)
    volume = load_series_volume(node, study_uid, series_uid)
    assert volume.shape[0] == len(offsets) and volume.spacing[0] == pytest.approx(2.5)
    missing = next(w for w in volume.warnings if w.startswith("missing slices"))
    assert "1 missing between slices 2 and 3 (5.00 → 10.00 mm)" in missing
    irregular = next(w for w in volume.warnings if w.startswith("irregular slice spacing"))
    assert "3.100 mm between slices 4 and 5" in irregular
    assert volume.slice_offsets == pytest.approx(offsets)  # the true positions stay available


def test_rounding_jitter_is_not_irregular(node: Node) -> None:
    study_uid, series_uid, files = factory_series([0.0, 0.63, 1.25, 1.88, 2.5, 3.13])  # 0.625 mm to 2 decimals
    store(node, files)
    assert load_series_volume(node, study_uid, series_uid).warnings == []


@pytest.mark.parametrize(("odd", "message"), [
    ({"ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]}, "inconsistent orientation"),
    ({"PixelSpacing": [0.7, 0.8]}, "inconsistent pixel spacing"),
])
def test_inconsistent_geometry_is_an_error(node: Node, odd: dict[str, Any], message: str) -> None:
    study_uid, series_uid, files = factory_series([0.0, 1.0, 2.0, 3.0], per_slice={2: odd})
    store(node, files)
    with pytest.raises(ValueError, match=message):
        load_series_volume(node, study_uid, series_uid)


def test_inconsistent_matrix_is_an_error(node: Node) -> None:
    study_uid, series_uid, files = factory_series([0.0, 1.0, 2.0])
    odd = make_dataset(study_uid=study_uid, series_uid=series_uid, rows=8, columns=10, instance_number=4,
                       ImagePositionPatient=[-5.0, 7.5, 3.0], FrameOfReferenceUID=read(files[0]).FrameOfReferenceUID)
    store(node, [*files, to_bytes(odd)])
    with pytest.raises(ValueError, match=r"inconsistent matrix size"):
        load_series_volume(node, study_uid, series_uid)


def test_duplicate_positions(node: Node) -> None:
    study_uid, series_uid, files = factory_series([0.0, 2.0, 2.0, 4.0], instance_numbers=[1, 3, 2, 4])
    store(node, files)
    with pytest.raises(ValueError, match="duplicate slice positions"):
        load_series_volume(node, study_uid, series_uid)
    volume = load_series_volume(node, study_uid, series_uid, on_duplicate="keep_first")
    assert volume.shape[0] == 3 and volume.spacing[0] == pytest.approx(2.0)
    assert volume.sop_instance_uids[1] == read(files[2]).SOPInstanceUID  # InstanceNumber 2 beats 3
    assert any(w.startswith("duplicate slice positions") for w in volume.warnings)


def enhanced_ct(offsets: Sequence[float], slopes: Sequence[float]) -> Dataset:
    """An Enhanced CT instance: geometry and rescaling in functional groups, frames in the given order."""
    dataset = make_dataset(frames=len(offsets), rows=6, columns=5, FrameOfReferenceUID=new_uid())
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = ENHANCED_CT_IMAGE_STORAGE
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                    "RescaleSlope", "RescaleIntercept", "InstanceNumber"):
        delattr(dataset, keyword)
    dataset.InstanceNumber = 1
    shared = Dataset()
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures.PixelSpacing = [0.5, 0.6]
    measures.SliceThickness = 2.0
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    dataset.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    for z, slope in zip(offsets, slopes, strict=True):
        item, position, transformation = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = [0.0, 0.0, float(z)]
        transformation.RescaleSlope = slope
        transformation.RescaleIntercept = -1024
        transformation.RescaleType = "HU"
        item.PlanePositionSequence = DicomSequence([position])
        item.PixelValueTransformationSequence = DicomSequence([transformation])
        frames.append(item)
    dataset.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    return dataset


def test_enhanced_multi_frame_instance(node: Node) -> None:
    offsets, slopes = [4.0, 0.0, 8.0, 2.0, 6.0], [1.0, 2.0, 1.0, 0.5, 1.0]
    dataset = enhanced_ct(offsets, slopes)
    store(node, [to_bytes(dataset)])
    volume = load_series_volume(node, dataset.StudyInstanceUID, dataset.SeriesInstanceUID)
    assert volume.shape == (5, 6, 5) and volume.spacing == pytest.approx((2.0, 0.5, 0.6))
    assert volume.frame_numbers == [2, 4, 1, 5, 3]
    assert volume.sop_instance_uids == [dataset.SOPInstanceUID] * 5
    pixels = dataset.pixel_array
    for k, frame in enumerate(volume.frame_numbers):
        expected = pixels[frame - 1] * slopes[frame - 1] - 1024.0
        assert np.array_equal(volume.array[k], expected)


def test_multi_frame_without_frame_positions_is_an_error(node: Node) -> None:
    dataset = make_dataset(frames=3, FrameOfReferenceUID=new_uid())
    store(node, [to_bytes(dataset)])
    with pytest.raises(ValueError, match="3 frames but no per-frame functional groups"):
        load_series_volume(node, dataset.StudyInstanceUID, dataset.SeriesInstanceUID)


# --- DICOM-SEG --------------------------------------------------------------------------------------------

def test_demo_segmentation_masks_match_the_lesions(node: Node, demo_case: DemoCase) -> None:
    ct, pet, study_uid = demo_case.ct, demo_case.pet, demo_case.study.study_instance_uid
    for series in (ct, pet):
        store_shuffled(node, demo_case.files[series.series_instance_uid])
        store(node, demo_case.files[segmentation_series_uid(series)])
    for series in (ct, pet):
        volume = load_series_volume(node, study_uid, series.series_instance_uid)
        masks = load_segmentation_masks(node, study_uid, segmentation_series_uid(series), volume)
        assert len(masks) == len(series.lesions)
        for label, mask in masks.items():
            lesion = next(lesion for lesion in series.lesions if label.startswith(lesion.lesion_id + " "))
            assert mask.dtype == np.bool_ and mask.shape == volume.shape
            assert dice(mask, truth_mask(volume, lesion)) > 0.9


def test_segmentation_of_another_series_maps_by_geometry_only_when_allowed(node: Node,
                                                                            demo_case: DemoCase) -> None:
    ct, pet, study_uid = demo_case.ct, demo_case.pet, demo_case.study.study_instance_uid
    store(node, demo_case.files[pet.series_instance_uid])
    store(node, demo_case.files[segmentation_series_uid(ct)])
    pet_volume = load_series_volume(node, study_uid, pet.series_instance_uid)
    with pytest.raises(ValueError, match=r"references series .* not the reference volume's series"):
        load_segmentation_masks(node, study_uid, segmentation_series_uid(ct), pet_volume)
    # The CT's fine grid sampled at the PET's coarse voxel centres: the same lesion on the PET grid.
    masks = load_segmentation_masks(node, study_uid, segmentation_series_uid(ct), pet_volume,
                                    allow_other_series=True)
    label = next(label for label in masks if label.startswith(demo_case.lesion.lesion_id + " "))
    assert dice(masks[label], truth_mask(pet_volume, demo_case.lesion)) > 0.9


def test_segmentation_on_a_coarser_grid_is_resampled(node: Node, demo_case: DemoCase) -> None:
    """A SEG with its own, coarser in-plane grid and no source references: placed by plane positions."""
    ct, study_uid = demo_case.ct, demo_case.study.study_instance_uid
    store(node, demo_case.files[ct.series_instance_uid])
    seg = read(demo_case.files[segmentation_series_uid(ct)][0])
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    coarse = frames[:, ::2, ::2]  # every other pixel: pixel centres stay put, spacing doubles
    seg.Rows, seg.Columns = coarse.shape[1:]
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    measures.PixelSpacing = [2 * float(v) for v in measures.PixelSpacing]
    seg.PixelData = np.packbits(coarse.ravel(), bitorder="little").tobytes()
    for item in seg.PerFrameFunctionalGroupsSequence:
        del item.DerivationImageSequence
    seg.SOPInstanceUID = seg.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    seg.SeriesInstanceUID = generate_uid()
    store(node, [part10(seg)])
    volume = load_series_volume(node, study_uid, ct.series_instance_uid)
    masks = load_segmentation_masks(node, study_uid, seg.SeriesInstanceUID, volume)
    label = next(label for label in masks if label.startswith(demo_case.lesion.lesion_id + " "))
    assert dice(masks[label], truth_mask(volume, demo_case.lesion)) > 0.9


def modified_segmentation(demo_case: DemoCase, change: Any) -> Dataset:
    seg = read(demo_case.files[segmentation_series_uid(demo_case.ct)][0])
    change(seg)
    seg.SOPInstanceUID = seg.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    seg.SeriesInstanceUID = generate_uid()
    return seg


def test_segmentation_errors(node: Node, demo_case: DemoCase) -> None:
    ct, study_uid = demo_case.ct, demo_case.study.study_instance_uid
    store(node, demo_case.files[ct.series_instance_uid])
    volume = load_series_volume(node, study_uid, ct.series_instance_uid)

    other_frame = modified_segmentation(demo_case, lambda seg: setattr(seg, "FrameOfReferenceUID", generate_uid()))

    def add_empty_segment(seg: Dataset) -> None:
        empty = copy.deepcopy(seg.SegmentSequence[0])
        empty.SegmentNumber = len(seg.SegmentSequence) + 1
        empty.SegmentLabel = "nothing here"
        seg.SegmentSequence.append(empty)

    with_empty = modified_segmentation(demo_case, add_empty_segment)
    store(node, [part10(other_frame), part10(with_empty)])
    with pytest.raises(ValueError, match="frame of reference"):
        load_segmentation_masks(node, study_uid, other_frame.SeriesInstanceUID, volume)
    with pytest.raises(ValueError, match="'nothing here' cover no voxel"):
        load_segmentation_masks(node, study_uid, with_empty.SeriesInstanceUID, volume)
    masks = load_segmentation_masks(node, study_uid, with_empty.SeriesInstanceUID, volume, allow_empty=True)
    assert not masks["nothing here"].any() and len(masks) == len(with_empty.SegmentSequence)
    only = load_segmentation_masks(node, study_uid, with_empty.SeriesInstanceUID, volume, labels=["nothing here"],
                                   allow_empty=True)
    assert list(only) == ["nothing here"]
    with pytest.raises(ValueError, match=r"no segment named 'nope'; there are .*'nothing here'"):
        load_segmentation_masks(node, study_uid, with_empty.SeriesInstanceUID, volume, labels=["nope"])
    with pytest.raises(ValueError, match="not a segmentation"):
        load_segmentation_masks(node, study_uid, ct.series_instance_uid, volume)


# --- RTSTRUCT ---------------------------------------------------------------------------------------------

def circle(centre: Sequence[float], radius: float, z: float, points: int = 72,
           clockwise: bool = False) -> list[float]:
    angles = np.linspace(0.0, 2.0 * math.pi, points, endpoint=False)
    if clockwise:
        angles = angles[::-1]
    xs, ys = centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)
    return [round(float(v), 3) for point in zip(xs, ys, [z] * points, strict=True) for v in point]


def rtstruct(image: pydicom.Dataset, rois: dict[str, list[list[float]]], *,
             frame_of_reference: str | None = None, series_uid: str | None = None) -> Dataset:
    """A minimal RT Structure Set with closed planar contours (flat x, y, z lists) per ROI name."""
    dataset = Dataset()
    dataset.file_meta = pydicom.dataset.FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = new_uid()
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName"):
        setattr(dataset, keyword, image.get(keyword))
    dataset.Modality = "RTSTRUCT"
    dataset.SeriesInstanceUID = new_uid()
    dataset.SeriesNumber = 90
    dataset.InstanceNumber = 1
    dataset.StructureSetLabel = "SPHERES"
    dataset.StructureSetDate, dataset.StructureSetTime = "20200115", "120000"
    frame_uid = frame_of_reference or str(image.FrameOfReferenceUID)
    referenced_series = Dataset()
    referenced_series.SeriesInstanceUID = series_uid or str(image.SeriesInstanceUID)
    referenced_study = Dataset()
    referenced_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    referenced_study.ReferencedSOPInstanceUID = image.StudyInstanceUID
    referenced_study.RTReferencedSeriesSequence = DicomSequence([referenced_series])
    referenced_frame = Dataset()
    referenced_frame.FrameOfReferenceUID = frame_uid
    referenced_frame.RTReferencedStudySequence = DicomSequence([referenced_study])
    dataset.ReferencedFrameOfReferenceSequence = DicomSequence([referenced_frame])
    structures, contours, observations = [], [], []
    for number, (name, contour_list) in enumerate(rois.items(), start=1):
        structure = Dataset()
        structure.ROINumber = number
        structure.ReferencedFrameOfReferenceUID = frame_uid
        structure.ROIName = name
        structure.ROIGenerationAlgorithm = "MANUAL"
        structures.append(structure)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = number
        roi_contour.ROIDisplayColor = [255, 0, 0]
        items = []
        for data in contour_list:
            item = Dataset()
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(data) // 3
            item.ContourData = data
            items.append(item)
        roi_contour.ContourSequence = DicomSequence(items)
        contours.append(roi_contour)
        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = "GTV"
        observation.ROIInterpreter = ""
        observations.append(observation)
    dataset.StructureSetROISequence = DicomSequence(structures)
    dataset.ROIContourSequence = DicomSequence(contours)
    dataset.RTROIObservationsSequence = DicomSequence(observations)
    return dataset


SPHERE_CENTRE = (10.3, 25.9, 19.3)  # inside the sphere_volume grid: x -5..26.2, y 7.5..45.1, z 0..38
SPHERE_RADIUS = 11.0


def sphere_contours(offsets: Iterable[float]) -> list[list[float]]:
    contours = []
    for z in offsets:
        dz = z - SPHERE_CENTRE[2]
        if abs(dz) < SPHERE_RADIUS:
            contours.append(circle(SPHERE_CENTRE, math.sqrt(SPHERE_RADIUS**2 - dz**2), z))
    return contours


@pytest.fixture
def sphere_volume(node: Node) -> Volume:
    """A 20-slice series, 2 mm apart, 48 x 40 pixels of 0.8 mm, stored shuffled."""
    offsets = [2.0 * k for k in range(20)]
    study_uid, series_uid, files = factory_series(offsets, instance_numbers=list(range(20, 0, -1)), rows=48,
                                                  columns=40)
    store_shuffled(node, files)
    return load_series_volume(node, study_uid, series_uid)


def sphere_truth(volume: Volume) -> np.ndarray:
    centre = np.asarray(SPHERE_CENTRE)
    return np.stack([np.linalg.norm(volume.slice_points(k) - centre, axis=-1) <= SPHERE_RADIUS
                     for k in range(volume.shape[0])])


def test_rtstruct_sphere_round_trip(node: Node, sphere_volume: Volume) -> None:
    volume = sphere_volume
    image = read(node.retrieve.files.absolute(
        node.retrieve.instances(volume.study_uid, volume.series_uid)[0].file_path).read_bytes())
    offsets = list(volume.slice_offsets)
    ring_z = offsets[10]
    structure_set = rtstruct(image, {
        "sphere on slices": sphere_contours(offsets),
        # Drawn on another series' planes, 0.7 mm off these slices, every 1 mm: nearest planes are taken.
        "sphere between slices": sphere_contours(np.arange(0.7, 40.0, 1.0)),
        # A disc with a hole: the inner contour runs the other way, the even-odd rule needs no hint.
        "ring": [circle(SPHERE_CENTRE, 9.0, ring_z), circle(SPHERE_CENTRE, 4.0, ring_z, clockwise=True)],
    })
    store(node, [part10(structure_set)])
    masks = load_rtstruct_masks(node, volume.study_uid, structure_set.SeriesInstanceUID, volume)
    truth = sphere_truth(volume)
    for name in ("sphere on slices", "sphere between slices"):
        mask = masks[name]
        assert mask.shape == volume.shape and dice(mask, truth) > 0.95, name
        voxel_ml = np.prod(volume.spacing) / 1000.0
        analytic_ml = 4.0 / 3.0 * math.pi * SPHERE_RADIUS**3 / 1000.0
        assert mask.sum() * voxel_ml == pytest.approx(analytic_ml, rel=0.1), name
    ring = masks["ring"]
    k = offsets.index(ring_z)
    assert ring.sum() == ring[k].sum(), "a single contour plane fills a single slice"
    distance = np.linalg.norm(volume.slice_points(k)[..., :2] - np.asarray(SPHERE_CENTRE[:2]), axis=-1)
    assert not ring[k][distance < 3.5].any(), "the hole is filled"
    assert ring[k][(distance > 4.5) & (distance < 8.5)].all()
    assert dice(ring[k], (distance <= 9.0) & (distance > 4.0)) > 0.9
    only = load_rtstruct_masks(node, volume.study_uid, structure_set.SeriesInstanceUID, volume, names={"ring"})
    assert list(only) == ["ring"] and np.array_equal(only["ring"], ring)


def test_rtstruct_errors(node: Node, sphere_volume: Volume) -> None:
    volume = sphere_volume
    image = read(node.retrieve.files.absolute(
        node.retrieve.instances(volume.study_uid, volume.series_uid)[0].file_path).read_bytes())
    contours = {"sphere": sphere_contours(volume.slice_offsets)}
    other_frame = rtstruct(image, contours, frame_of_reference=generate_uid())
    other_series = rtstruct(image, contours, series_uid=generate_uid())
    outside = rtstruct(image, {"far away": [circle((0, 0), 5.0, 500.0)]})
    store(node, [part10(other_frame), part10(other_series), part10(outside)])
    with pytest.raises(ValueError, match="frame of reference"):
        load_rtstruct_masks(node, volume.study_uid, other_frame.SeriesInstanceUID, volume)
    with pytest.raises(ValueError, match="not the reference volume's series"):
        load_rtstruct_masks(node, volume.study_uid, other_series.SeriesInstanceUID, volume)
    allowed = load_rtstruct_masks(node, volume.study_uid, other_series.SeriesInstanceUID, volume,
                                  allow_other_series=True)
    assert dice(allowed["sphere"], sphere_truth(volume)) > 0.95
    with pytest.raises(ValueError, match="'far away' cover no voxel"):
        load_rtstruct_masks(node, volume.study_uid, outside.SeriesInstanceUID, volume)


def test_even_odd_fill_of_a_square_with_a_hole() -> None:
    outer = np.array([[0.5, 0.5], [0.5, 7.5], [7.5, 7.5], [7.5, 0.5]])
    inner = np.array([[2.5, 2.5], [5.5, 2.5], [5.5, 5.5], [2.5, 5.5]])  # opposite winding
    mask = fill_even_odd([outer, inner], 9, 9)
    expected = np.zeros((9, 9), dtype=bool)
    expected[1:8, 1:8] = True
    expected[3:6, 3:6] = False
    assert np.array_equal(mask, expected)
    # Outside the image is clipped, not wrapped.
    assert fill_even_odd([outer - 4.0], 9, 9).sum() == 16


# --- End to end: volume + SEG → features ------------------------------------------------------------------

def test_lesion_volume_from_stored_ct_and_segmentation(node: Node, demo_case: DemoCase) -> None:
    ct, study_uid, lesion = demo_case.ct, demo_case.study.study_instance_uid, demo_case.lesion
    store_shuffled(node, demo_case.files[ct.series_instance_uid])
    store(node, demo_case.files[segmentation_series_uid(ct)])
    volume = load_series_volume(node, study_uid, ct.series_instance_uid)
    masks = load_segmentation_masks(node, study_uid, segmentation_series_uid(ct), volume)
    label = next(label for label in masks if label.startswith(lesion.lesion_id + " "))
    features = {f.key: f.value for f in extract_features(volume.array, masks[label], volume.spacing, bin_width=25)}
    analytic = 4.0 / 3.0 * math.pi * math.prod(lesion.radii_mm)
    assert features["morph_vol"] == pytest.approx(analytic, rel=0.1)
    assert features["morph_approx_vol"] == pytest.approx(analytic, rel=0.1)
    # A soft-tissue tumour (with a necrotic core) in HU, not stored values or air.
    assert -50 < features["stat_mean"] < 150
