"""The synthetic demo data set: determinism, DICOM validity, geometry, plausible pixel values."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, SegmentationStorage

from gateway.demo.segmentations import (
    iter_demo_segmentations,
    lesion_masks,
    lesion_tracking_uid,
    segmentation_series_uid,
    series_has_segmentation,
)
from gateway.demo.synth import (
    DemoLesion,
    DemoPatient,
    DemoSeries,
    DemoStudy,
    ground_truth,
    iter_demo_instances,
    plan_demo,
    write_demo_files,
)

PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
REQUIRED = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "AccessionNumber", "StudyDescription", "ReferringPhysicianName", "StudyID",
    "InstitutionName", "Manufacturer", "ManufacturerModelName", "SeriesDescription", "SeriesNumber",
    "BodyPartExamined", "ProtocolName", "Modality", "InstanceNumber", "ImagePositionPatient",
    "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "SpacingBetweenSlices", "SliceLocation",
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "PhotometricInterpretation", "SamplesPerPixel", "SpecificCharacterSet", "PixelData",
)
SEG_REQUIRED = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber",
    "ReferringPhysicianName", "StudyID", "InstitutionName", "Manufacturer", "ManufacturerModelName",
    "SeriesDescription", "SeriesNumber", "BodyPartExamined", "Modality", "InstanceNumber", "ContentLabel",
    "SegmentSequence", "ReferencedSeriesSequence", "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence", "NumberOfFrames", "Rows", "Columns", "PixelData",
)
BODY_PARTS = {"CHEST", "ABDOMEN", "PELVIS", "BREAST", "HEAD", "NECK", "HEADNECK", "CHESTABDOMEN",
              "ABDOMENPELVIS", "PROSTATE"}


def _series_of(paths: list[Path]) -> dict[str, list[pydicom.Dataset]]:
    series: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    for path in paths:
        dataset = pydicom.dcmread(path)
        series[dataset.SeriesInstanceUID].append(dataset)
    for images in series.values():
        images.sort(key=lambda ds: int(ds.InstanceNumber))
    return series


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_demo_files(tmp_path_factory.mktemp("demo"), seed=0, patients=2)


@pytest.fixture(scope="module")
def demo_series(demo_files: list[Path]) -> dict[str, list[pydicom.Dataset]]:
    return _series_of(demo_files)


def _first_patient_with(site: str, exams: set[str]) -> DemoPatient:
    """The first planned patient with this cancer and these examinations (planning is cheap)."""
    for seed in range(50):
        for patient in plan_demo(seed, 8):
            if patient.diagnosis.site == site and {s.exam_key for s in patient.studies} >= exams:
                return patient
    raise LookupError(f"no {site} patient with {exams}")


@pytest.fixture(scope="module")
def lung_patient() -> DemoPatient:
    return _first_patient_with("lung", {"ct_chest", "petct_chest"})


@pytest.fixture(scope="module")
def lung_series(lung_patient: DemoPatient) -> dict[str, list[pydicom.Dataset]]:
    series: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    for dataset in iter_demo_instances([lung_patient]):
        series[dataset.SeriesInstanceUID].append(dataset)
    return series


def _volume(images: list[pydicom.Dataset]) -> np.ndarray:
    """Rescaled pixel values (slices, rows, columns) in InstanceNumber order."""
    return np.stack([ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
                     for ds in images])


def _voxel(series: DemoSeries, point: tuple[float, float, float]) -> tuple[int, int, int]:
    """Indices (slice, row, column) of the voxel nearest a patient-coordinate point."""
    x, y, z = point
    column = round((x - series.origin_xy_mm[0]) / series.pixel_spacing_mm[1])
    row = round((y - series.origin_xy_mm[1]) / series.pixel_spacing_mm[0])
    index = int(np.argmin(np.abs(np.asarray(series.slice_z_mm) - z)))
    return index, row, column


def _lesion_core(volume: np.ndarray, series: DemoSeries, lesion: DemoLesion) -> np.ndarray:
    """Values inside the inner part of the lesion (outside any necrotic core) on the nearest slice."""
    index = _voxel(series, lesion.centre_mm)[0]
    rows = series.origin_xy_mm[1] + series.pixel_spacing_mm[0] * np.arange(series.rows)
    columns = series.origin_xy_mm[0] + series.pixel_spacing_mm[1] * np.arange(series.columns)
    y, x = np.meshgrid(rows, columns, indexing="ij")
    z = np.full_like(x, series.slice_z_mm[index])
    points = np.stack([x, y, z], axis=-1)
    shrunk = dataclasses.replace(lesion, radii_mm=tuple(r * 0.8 for r in lesion.radii_mm))
    inside = shrunk.contains(points)
    if lesion.necrotic:
        core = dataclasses.replace(lesion, radii_mm=tuple(r * 0.6 for r in lesion.radii_mm))
        inside &= ~core.contains(points)
    return volume[index][inside]


# --- Plan --------------------------------------------------------------------------------------------

def test_plan_is_cheap_deterministic_and_seed_dependent() -> None:
    first, again = plan_demo(seed=3, patients=8), plan_demo(seed=3, patients=8)
    assert first == again
    other = plan_demo(seed=4, patients=8)
    assert {p.patient_id for p in first}.isdisjoint({p.patient_id for p in other})
    assert [p.name for p in first] != [p.name for p in other]
    assert plan_demo(seed=3, patients=0) == []


def test_plan_patients_are_plausible() -> None:
    plan = plan_demo(seed=1, patients=14)
    assert len({p.patient_id for p in plan}) == len(plan)
    assert {p.diagnosis.site for p in plan} >= {"lung", "breast", "prostate", "colorectal", "head_and_neck",
                                                "liver", "kidney"}
    for patient in plan:
        family, given = patient.name.split("^")
        assert family and given
        assert patient.sex in ("F", "M")
        if patient.diagnosis.site == "breast":
            assert patient.sex == "F"
        if patient.diagnosis.site == "prostate":
            assert patient.sex == "M"
        assert patient.diagnosis.icd10_code.startswith("C")
        assert patient.diagnosis.icdo3_morphology.endswith("/3")
        assert patient.diagnosis.clinical_tnm.startswith("cT")
        assert 1 <= len(patient.studies) <= 3
        dates = [dt.date.fromisoformat(f"{s.study_date[:4]}-{s.study_date[4:6]}-{s.study_date[6:]}")
                 for s in patient.studies]
        assert dates == sorted(dates)
        assert all(dt.date(2015, 1, 1) <= d <= dt.date(2025, 12, 31) for d in dates)
        birth = dt.datetime.strptime(patient.birth_date, "%Y%m%d").date()
        assert 30 <= (dates[0] - birth).days / 365.25 <= 95
        for study in patient.studies:
            assert 2 <= len(study.series) <= 4
            assert any(lesion.kind == "primary tumour" for lesion in study.lesions)


def test_ground_truth_is_json_ready_and_lesions_in_patient_frame() -> None:
    plan = plan_demo(seed=0, patients=4)
    document = json.loads(json.dumps(ground_truth(plan)))
    assert document[0]["patient_id"] == plan[0].patient_id
    study: DemoStudy = plan[0].studies[0]
    lesion = study.lesions[0]
    assert lesion.contains(np.array(lesion.centre_mm))
    assert not lesion.contains(np.array(lesion.centre_mm) + np.array([0, 0, lesion.radii_mm[2] * 1.01]))
    assert lesion.volume_ml > 0 and lesion.diameter_mm >= 2 * lesion.radius_mm * 0.8


# --- Files -------------------------------------------------------------------------------------------

def test_same_seed_gives_identical_files(demo_files: list[Path], tmp_path: Path) -> None:
    again = write_demo_files(tmp_path, seed=0, patients=1)
    root = demo_files[0].parents[3]
    assert again
    for path in again:
        assert path.read_bytes() == (root / path.relative_to(tmp_path)).read_bytes()


def test_written_files_equal_pydicom_encoding(demo_files: list[Path]) -> None:
    """The fast writer produces exactly what pydicom writes for the yielded datasets."""
    root = demo_files[0].parents[3]
    plan = plan_demo(seed=0, patients=2)
    by_uid = {}
    for path in demo_files:
        by_uid[pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID] = path
    checked = 0
    for dataset in iter_demo_instances(plan[1:]):
        if int(dataset.InstanceNumber) in (1, 7):
            buffer = io.BytesIO()
            dataset.save_as(buffer, enforce_file_format=True)
            assert buffer.getvalue() == by_uid[dataset.SOPInstanceUID].read_bytes()
            checked += 1
    assert checked > 0 and root.exists()


def test_every_file_is_valid_part10_with_required_attributes(demo_files: list[Path]) -> None:
    modalities = set()
    segmentations = 0
    for path in demo_files:
        raw = path.read_bytes()
        assert raw[128:132] == b"DICM"
        dataset = pydicom.dcmread(path)
        assert dataset.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert dataset.file_meta.MediaStorageSOPClassUID == dataset.SOPClassUID
        assert dataset.file_meta.MediaStorageSOPInstanceUID == dataset.SOPInstanceUID
        assert dataset.file_meta.ImplementationClassUID
        if dataset.Modality == "SEG":
            for keyword in SEG_REQUIRED:
                assert keyword in dataset, f"{path}: {keyword} missing"
            assert dataset.SOPClassUID == SegmentationStorage and dataset.SegmentationType == "BINARY"
            assert dataset.BitsAllocated == 1 and path.parent.name.endswith("_SEG")
            segmentations += 1
            continue
        for keyword in REQUIRED:
            assert keyword in dataset, f"{path}: {keyword} missing"
        assert dataset.SpecificCharacterSet in ("ISO_IR 100", "ISO_IR 192")
        assert dataset.BodyPartExamined in BODY_PARTS
        assert dataset.PhotometricInterpretation == "MONOCHROME2" and dataset.SamplesPerPixel == 1
        assert dataset.BitsAllocated == 16 and dataset.HighBit == dataset.BitsStored - 1
        assert dataset.pixel_array.shape == (dataset.Rows, dataset.Columns)
        modalities.add(dataset.Modality)
        expected_class = {"CT": CTImageStorage, "MR": MRImageStorage, "PT": PET_IMAGE_STORAGE}[dataset.Modality]
        assert dataset.SOPClassUID == expected_class
        if dataset.Modality == "CT":
            assert dataset.PixelRepresentation == 1 and float(dataset.RescaleIntercept) == -1024
            assert float(dataset.RescaleSlope) == 1 and "WindowCenter" in dataset
    assert modalities == {"CT", "MR"}
    assert segmentations > 0


def test_pet_and_its_ct_are_quantitative_and_aligned(lung_series: dict[str, list[pydicom.Dataset]]) -> None:
    pet = [images for images in lung_series.values() if images[0].Modality == "PT"]
    assert pet
    for images in pet:
        first = images[0]
        assert first.SOPClassUID == PET_IMAGE_STORAGE
        assert first.Units == "BQML" and first.DecayCorrection == "START" and first.PixelRepresentation == 0
        assert list(first.CorrectedImage)[:2] == ["DECY", "ATTN"]
        injection = first.RadiopharmaceuticalInformationSequence[0]
        assert injection.RadiopharmaceuticalCodeSequence[0].CodeValue == "35321007"
        assert injection.RadionuclideCodeSequence[0].CodeValue == "77004003"
        assert 1e8 < float(injection.RadionuclideTotalDose) < 6e8
        assert injection.RadiopharmaceuticalStartDateTime[:8] == first.SeriesDate
        assert injection.RadiopharmaceuticalStartTime < first.SeriesTime
        assert float(first.PatientWeight) > 30 and int(first.NumberOfSlices) == len(images)
        assert [int(ds.ImageIndex) for ds in images] == list(range(1, len(images) + 1))
        assert all(float(ds.RescaleSlope) > 0 for ds in images)
        ct = [other for other in lung_series.values()
              if other[0].Modality == "CT" and other[0].StudyInstanceUID == first.StudyInstanceUID]
        assert len(ct) == 1 and ct[0][0].FrameOfReferenceUID == first.FrameOfReferenceUID
        assert [float(ds.SliceLocation) for ds in ct[0]] == [float(ds.SliceLocation) for ds in images]


def test_files_are_valid_under_strict_pydicom_validation(demo_series: dict[str, list[pydicom.Dataset]]) -> None:
    mode = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.writing_validation_mode = pydicom_config.RAISE
    try:
        for images in demo_series.values():
            buffer = io.BytesIO()
            images[0].save_as(buffer, enforce_file_format=True)
    finally:
        pydicom_config.settings.writing_validation_mode = mode


def test_uids_are_valid_and_unique(demo_series: dict[str, list[pydicom.Dataset]]) -> None:
    instances: set[str] = set()
    series_of_study: dict[str, set[str]] = defaultdict(set)
    frame_of_study: dict[str, set[str]] = defaultdict(set)
    for series_uid, images in demo_series.items():
        for dataset in images:
            for uid in (dataset.SOPInstanceUID, dataset.SeriesInstanceUID, dataset.StudyInstanceUID,
                        dataset.FrameOfReferenceUID):
                assert UID(uid).is_valid, uid
            assert dataset.SOPInstanceUID not in instances
            instances.add(dataset.SOPInstanceUID)
            series_of_study[dataset.StudyInstanceUID].add(series_uid)
            frame_of_study[dataset.StudyInstanceUID].add(dataset.FrameOfReferenceUID)
    all_uids = set(demo_series) | set(series_of_study) | instances
    assert len(all_uids) == len(demo_series) + len(series_of_study) + len(instances)
    # Series acquired in one sitting (a PET and its CT included) share the frame of reference.
    assert all(len(frames) == 1 for frames in frame_of_study.values())
    assert len({next(iter(f)) for f in frame_of_study.values()}) == len(frame_of_study)


def test_dates_times_and_study_attributes(demo_series: dict[str, list[pydicom.Dataset]]) -> None:
    for images in demo_series.values():
        dataset = images[0]
        study_day = dt.datetime.strptime(dataset.StudyDate, "%Y%m%d").date()
        assert dt.date(2015, 1, 1) <= study_day <= dt.date(2025, 12, 31)
        assert dataset.SeriesDate == dataset.StudyDate
        dt.datetime.strptime(dataset.StudyTime, "%H%M%S")
        assert dataset.SeriesTime >= dataset.StudyTime
        assert dt.datetime.strptime(dataset.PatientBirthDate, "%Y%m%d").date() < study_day
        assert dataset.PatientAge.endswith("Y") and 30 <= int(dataset.PatientAge[:3]) <= 95
        assert "^" in str(dataset.PatientName)
        assert len({ds.StudyDescription for ds in images}) == 1


def test_geometry_is_consistent(demo_series: dict[str, list[pydicom.Dataset]],
                                lung_series: dict[str, list[pydicom.Dataset]]) -> None:
    for images in [*demo_series.values(), *lung_series.values()]:
        first = images[0]
        if first.Modality == "SEG":
            continue
        orientation = np.array(first.ImageOrientationPatient, dtype=float)
        assert np.allclose(orientation, [1, 0, 0, 0, 1, 0])
        normal = np.cross(orientation[:3], orientation[3:])
        positions = np.array([ds.ImagePositionPatient for ds in images], dtype=float)
        along = positions @ normal
        steps = np.diff(along)
        assert len(images) >= 24
        assert np.allclose(steps, steps[0], atol=1e-3), "slices are not evenly spaced"
        assert abs(abs(steps[0]) - float(first.SpacingBetweenSlices)) < 1e-3
        assert np.allclose(positions[:, :2], positions[0, :2])
        assert [int(ds.InstanceNumber) for ds in images] == list(range(1, len(images) + 1))
        assert np.allclose([float(ds.SliceLocation) for ds in images], along)
        assert float(first.SliceThickness) <= float(first.SpacingBetweenSlices) + 1e-6
        for ds in images:
            assert ds.Rows == first.Rows and ds.Columns == first.Columns
            assert list(ds.PixelSpacing) == list(first.PixelSpacing)


def test_ct_values_are_plausible(demo_series: dict[str, list[pydicom.Dataset]]) -> None:
    checked = 0
    for images in demo_series.values():
        if images[0].Modality != "CT":
            continue
        hu = _volume(images)
        assert hu.min() >= -1024 and hu.max() <= 3071
        corner = hu[:, :8, :8]
        assert abs(float(np.median(corner)) + 1000) < 60, "air should be around -1000 HU"
        assert (hu > 500).any(), "bone missing"
        body = hu[hu > -300]
        assert -150 < float(np.median(body)) < 120, "soft tissue should dominate the body"
        checked += 1
    assert checked


def test_lung_ct_and_pet_show_the_lesions(lung_patient: DemoPatient,
                                          lung_series: dict[str, list[pydicom.Dataset]]) -> None:
    for study in lung_patient.studies:
        for series in study.series:
            images = lung_series[series.series_instance_uid]
            assert len(images) == series.instance_count
            volume = _volume(images)
            lesions = [lesion for lesion in series.lesions if min(lesion.radii_mm) >= 6]
            if series.modality == "CT":
                assert _lung_median_hu(lung_patient, study, series, volume) == pytest.approx(-855, abs=45)
                for lesion in lesions:
                    inside = _lesion_core(volume, series, lesion)
                    assert inside.size and float(np.median(inside)) > -100, (series.description, lesion)
            if series.modality == "PT":
                bqml_per_suv = _bqml_per_suv(images[0])
                suv = volume / bqml_per_suv
                body_suv = float(np.median(suv[suv > 0.2]))
                assert 0.3 < body_suv < 2.0
                for lesion in lesions:
                    inside = _lesion_core(suv, series, lesion)
                    assert float(inside.max()) > 2.5 * body_suv, lesion


def _lung_median_hu(patient: DemoPatient, study: DemoStudy, series: DemoSeries, hu: np.ndarray) -> float:
    """Median HU in a 12 mm disc in the middle of a lower lobe (the one further from any lesion)."""
    anatomy, (dx, dy, dz) = patient.anatomy, study.table_offset_mm
    medians = []
    for template_x in (-70.0, 70.0):
        centre = (anatomy.width_scale * template_x + dx, anatomy.depth_scale * 10.0 + dy,
                  anatomy.height_scale * -160.0 + dz)
        index, row, column = _voxel(series, centre)
        radius = round(12.0 / series.pixel_spacing_mm[0])
        disc = hu[index, row - radius:row + radius + 1, column - radius:column + radius + 1]
        medians.append(float(np.median(disc)))
    return min(medians, key=lambda m: abs(m + 855))


def _bqml_per_suv(dataset: pydicom.Dataset) -> float:
    injection = dataset.RadiopharmaceuticalInformationSequence[0]
    injected = dt.datetime.strptime(injection.RadiopharmaceuticalStartDateTime, "%Y%m%d%H%M%S")
    scan = dt.datetime.strptime(dataset.SeriesDate + dataset.SeriesTime, "%Y%m%d%H%M%S")
    decay = 0.5 ** ((scan - injected).total_seconds() / float(injection.RadionuclideHalfLife))
    return float(injection.RadionuclideTotalDose) * decay / (float(dataset.PatientWeight) * 1000.0)


def test_mr_lesions_bright_on_dwi_and_dark_on_adc(demo_series: dict[str, list[pydicom.Dataset]]) -> None:
    plan = plan_demo(seed=0, patients=2)
    checked = 0
    for patient in plan:
        for study in patient.studies:
            by_contrast = {s.contrast: s for s in study.series}
            if "mr_dwi" not in by_contrast or "mr_adc" not in by_contrast:
                continue
            dwi, adc = by_contrast["mr_dwi"], by_contrast["mr_adc"]
            dwi_volume = _volume(demo_series[dwi.series_instance_uid])
            adc_volume = _volume(demo_series[adc.series_instance_uid])
            for lesion in dwi.lesions:
                if min(lesion.radii_mm) < 6:
                    continue
                dwi_inside = _lesion_core(dwi_volume, dwi, lesion)
                adc_inside = _lesion_core(adc_volume, adc, lesion)
                assert float(np.median(dwi_inside)) > 3 * float(np.median(dwi_volume[dwi_volume > 0]))
                # Restricted diffusion: below the ~1.0e-3 mm²/s radiologists use, unlike muscle or fluid.
                assert float(np.median(adc_inside)) < 1000
                checked += 1
    assert checked


def test_series_ground_truth_matches_study(demo_series: dict[str, list[pydicom.Dataset]]) -> None:
    for patient in plan_demo(seed=0, patients=2):
        for study in patient.studies:
            for series in study.series:
                images = demo_series[series.series_instance_uid]
                assert [ds.SOPInstanceUID for ds in images] == list(series.sop_instance_uids)
                assert tuple(float(v) for v in images[0].ImagePositionPatient) == series.image_position(0)
                assert images[0].FrameOfReferenceUID == study.frame_of_reference_uid
                assert images[0].PatientID == patient.patient_id
                assert images[0].IssuerOfPatientID == patient.issuer
                assert set(series.lesions) <= set(study.lesions)


# --- Lesion segmentations ----------------------------------------------------------------------------

def test_segmentations_follow_their_series_and_match_the_ground_truth(
        lung_patient: DemoPatient, lung_series: dict[str, list[pydicom.Dataset]]) -> None:
    order = list(lung_series)
    checked = 0
    for study in lung_patient.studies:
        for series in study.series:
            if not series.lesions:
                continue
            seg_uid = segmentation_series_uid(series)
            assert order.index(seg_uid) == order.index(series.series_instance_uid) + 1, "SEG after its series"
            (seg,) = lung_series[seg_uid]
            assert seg.Modality == "SEG" and seg.FrameOfReferenceUID == study.frame_of_reference_uid
            assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_instance_uid
            assert str(seg.SeriesDate) == series.series_date and str(seg.SeriesTime) >= series.series_time
            expected = lesion_masks(series)
            frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns).astype(bool)
            index_of = {uid: i for i, uid in enumerate(series.sop_instance_uids)}
            decoded = np.zeros_like(expected)
            for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
                source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
                # A single segment is identified once, in the shared functional groups.
                identification = item.get("SegmentIdentificationSequence") or \
                    seg.SharedFunctionalGroupsSequence[0].SegmentIdentificationSequence
                segment = int(identification[0].ReferencedSegmentNumber)
                decoded[index_of[source], :, :, segment - 1] = frame
            kept = [i for i in range(len(series.lesions)) if expected[..., i].any()]
            assert np.array_equal(decoded[..., :len(kept)], expected[..., kept])
            for segment, index in zip(seg.SegmentSequence, kept, strict=True):
                lesion = series.lesions[index]
                assert segment.SegmentLabel.startswith(lesion.lesion_id + " ")
                assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
                primary = lesion.kind == "primary tumour"
                assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == (
                    "372087000" if primary else "14799000")
                assert segment.SegmentAlgorithmType == "SEMIAUTOMATIC" and segment.TrackingID == lesion.lesion_id
                # The same lesion keeps its tracking UID from study to study.
                assert segment.TrackingUID == lesion_tracking_uid(lung_patient.patient_id, lesion)
            checked += 1
    assert checked >= 2


def test_segmentations_alone_equal_those_after_their_series(
        lung_patient: DemoPatient, lung_series: dict[str, list[pydicom.Dataset]]) -> None:
    first = next(iter_demo_segmentations([lung_patient]))
    (expected,) = lung_series[first.SeriesInstanceUID]
    buffer, expected_buffer = io.BytesIO(), io.BytesIO()
    first.save_as(buffer, enforce_file_format=True)
    expected.save_as(expected_buffer, enforce_file_format=True)
    # The file meta differ (highdicom's own vs the demo's); the data sets must not.
    assert pydicom.dcmread(io.BytesIO(buffer.getvalue())) == pydicom.dcmread(io.BytesIO(expected_buffer.getvalue()))
    with_segmentation = {segmentation_series_uid(series) for study in lung_patient.studies for series in study.series
                         if series_has_segmentation(series)}
    assert with_segmentation == {uid for uid, images in lung_series.items() if images[0].Modality == "SEG"}
