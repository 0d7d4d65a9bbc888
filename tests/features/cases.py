"""Small synthetic image series with segmentations for the feature-extraction tests, and the demo data set."""

from __future__ import annotations

import dataclasses
import io
import logging

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from gateway.demo.synth import iter_demo_instances, plan_demo
from gateway.node import Node
from tests.dicom_factory import make_dataset, new_uid, to_bytes

SLICES, ROWS, COLUMNS = 12, 28, 28


@dataclasses.dataclass
class SyntheticStudy:
    study_uid: str
    ct_uid: str
    seg_uid: str
    mr_uid: str  # an MR series nobody segmented: skipped
    images: list[Dataset]
    segmentation: Dataset
    masks: np.ndarray  # (slices, rows, columns, segments) in InstanceNumber order
    labels: list[str]


def _images(study_uid: str, series_uid: str, modality: str, frame_uid: str, seed: int,
            patient_id: str, **attributes: object) -> list[Dataset]:
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:SLICES, 0:ROWS, 0:COLUMNS]
    # A smooth blob plus noise: texture that depends on the region, so wrong masks give wrong values.
    volume = 1000 + 80 * np.exp(-((z - 6) ** 2 + (y - 12) ** 2 + (x - 14) ** 2) / 40.0) + rng.normal(0, 15, z.shape)
    images = []
    for index in range(SLICES):
        ds = make_dataset(study_uid=study_uid, series_uid=series_uid, modality=modality, rows=ROWS, columns=COLUMNS,
                          instance_number=index + 1, series_number=2 if modality == "MR" else 1,
                          patient_id=patient_id, FrameOfReferenceUID=frame_uid, **attributes)
        ds.ImagePositionPatient = [-10.0, -12.0, 2.0 * index]
        ds.SliceThickness = 2.0
        ds.PixelSpacing = [0.8, 0.8]
        ds.PixelData = np.clip(volume[index], 0, 4095).astype(np.uint16).tobytes()
        images.append(ds)
    return images


def synthetic_study(seed: int = 0, patient_id: str = "FEAT001", modality: str = "CT",
                    **attributes: object) -> SyntheticStudy:
    """A ``modality`` series with a two-segment SEG and an MR series without one, in one study."""
    study_uid, frame_uid = new_uid(), new_uid()
    images = _images(study_uid, new_uid(), modality, frame_uid, seed, patient_id, **attributes)
    mr = _images(study_uid, new_uid(), "MR", frame_uid, seed + 1, patient_id)
    z, y, x = np.mgrid[0:SLICES, 0:ROWS, 0:COLUMNS]
    sphere = (z - 6) ** 2 / 9.0 + ((y - 12) ** 2 + (x - 14) ** 2) / 36.0 <= 1.0
    box = (z >= 2) & (z < 9) & (y >= 18) & (y < 25) & (x >= 3) & (x < 11)
    masks = np.stack([sphere, box], axis=-1)
    labels = ["tumour", "node"]
    descriptions = [hd.seg.SegmentDescription(
        segment_number=number, segment_label=label,
        segmented_property_category=codes.cid7150.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.cid7151.NeoplasmPrimary,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        anatomic_regions=[codes.SCT.Lung] if number == 1 else None,
        tracking_uid=hd.UID(), tracking_id=f"lesion {number}") for number, label in enumerate(labels, start=1)]
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    segmentation = hd.seg.Segmentation(
        source_images=images, pixel_array=masks, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=new_uid(), series_number=100,
        sop_instance_uid=new_uid(), instance_number=1, manufacturer="test", manufacturer_model_name="test",
        software_versions="1", device_serial_number="1")
    return SyntheticStudy(study_uid, str(images[0].SeriesInstanceUID), str(segmentation.SeriesInstanceUID),
                          str(mr[0].SeriesInstanceUID), images + mr, segmentation, masks, labels)


def store_synthetic(node: Node, study: SyntheticStudy) -> None:
    for data in [to_bytes(image) for image in study.images] + [part10(study.segmentation)]:
        result = node.ingest.store_bytes(data)
        assert result.ok, result.message


def part10(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


_DEMO: list[bytes] = []


def demo_files() -> list[bytes]:
    """The one-patient demo data set (CT series with lesion SEGs) as Part 10 files, rendered once."""
    if not _DEMO:
        _DEMO.extend(part10(dataset) for dataset in iter_demo_instances(plan_demo(seed=0, patients=1)))
    return _DEMO


def store_demo(node: Node) -> None:
    results = node.ingest.store_uploads([node.files.upload_from_bytes(data) for data in demo_files()])
    assert all(result.ok for result in results), [r.message for r in results if not r.ok]
