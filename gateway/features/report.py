"""DICOM SR TID 1500 measurement reports of stored features (highdicom), stored like any other instance.

One Comprehensive 3D SR per (image series, segmentation, parameter hash, algorithm version), with one
measurement group per region: its tracking identifier, the referenced segment (TID 1411; an RTSTRUCT ROI has
no segment to reference, so its group is a TID 1501 group naming the ROI), the finding type and site where
the segmentation codes them, the algorithm with the parameter hash, and every defined feature as a
measurement coded by its IBSI identifier (private designator 99IBSI) with its UCUM unit; texture features
carry their aggregation method as the measurement method. Values IBSI leaves undefined (NaN) are left out.

The report's UIDs derive from what it reports on, so rebuilding it yields the same SOP Instance UID and a
present report is not made again.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

import highdicom as hd
from pydicom import dcmread
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

from gateway import __version__
from gateway.features.codes import feature_codes
from gateway.services.retrieve import NotFound

if TYPE_CHECKING:
    from gateway.features.cohort import CohortSeries, Segmentation
    from gateway.features.service import Plan
    from gateway.node import Node

log = logging.getLogger(__name__)

SR_SALT = "eucaim-gateway-features-sr-v1"
SERIES_NUMBER = 9100  # high, to sort after acquired and derived image series in viewers
MANUFACTURER = "EUCAIM"
IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")


def report_uids(series_uid: str, segmentation_uid: str, digest: str) -> tuple[str, str]:
    """(series UID, SOP Instance UID) of the report; a function of what it reports on."""
    parts = [SR_SALT, series_uid, segmentation_uid, digest, __version__]
    return (generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=[*parts, "series"]),
            generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=[*parts, "instance"]))


def _stored(node: Node, study_uid: str, series_uid: str, sop_uid: str) -> bool:
    try:
        node.retrieve.instances(study_uid, series_uid, sop_uid)
    except NotFound:
        return False
    return True


def is_stored(node: Node, series: CohortSeries, segmentation: Segmentation, digest: str) -> bool:
    series_uid, sop_uid = report_uids(series.series_uid, segmentation.series_uid, digest)
    return _stored(node, series.study_uid, series_uid, sop_uid)


def store_report(node: Node, series: CohortSeries, segmentation: Segmentation, regions: list[dict[str, Any]],
                 plan: Plan) -> str:
    """Build and store the report; returns its SOP Instance UID."""
    series_uid, sop_uid = report_uids(series.series_uid, segmentation.series_uid, plan.parameter_hash)
    dataset = build_report(node, series, segmentation, regions, plan, series_uid, sop_uid)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    result = node.ingest.store_bytes(buffer.getvalue())
    if not result.ok:
        raise RuntimeError(f"the SR was not stored: {result.message}")
    return sop_uid


def _coded(code: tuple[str, str, str] | None) -> hd.sr.CodedConcept | None:
    if code is None:
        return None
    value, designator, meaning = code
    return hd.sr.CodedConcept(value, designator, meaning[:64] or value)


def _site(text: str | None) -> list[hd.sr.FindingSite]:
    if not text:
        return []
    designator, code, meaning = [*text.split("|"), "", ""][:3]
    if not designator or not code:
        return []
    return [hd.sr.FindingSite(anatomic_location=hd.sr.CodedConcept(code, designator, meaning[:64] or code))]


def build_report(node: Node, series: CohortSeries, segmentation: Segmentation, regions: list[dict[str, Any]],
                 plan: Plan, series_uid: str, sop_uid: str) -> hd.sr.Comprehensive3DSR:
    codes_table = feature_codes()
    designator = codes_table.systems["dicom_ibsi_designator"]
    image_headers = [dcmread(node.retrieve.path(instance), stop_before_pixels=True)
                     for instance in node.retrieve.instances(series.study_uid, series.series_uid)]
    segmentation_headers = [dcmread(path, stop_before_pixels=True) for path in segmentation.paths]
    by_number = {region.segment_number: region for region in segmentation.regions}
    algorithm = hd.sr.AlgorithmIdentification(
        name="eucaim-gateway IBSI-1 radiomics", version=__version__,
        parameters=[f"parameter set sha256 {plan.parameter_hash}", str(plan.settings.get("name") or "inline")[:64]])
    groups = []
    for stored in sorted(regions, key=lambda r: r["segment_number"]):
        region = by_number[stored["segment_number"]]
        tracking = hd.sr.TrackingIdentifier(
            uid=region.tracking_uid or generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=[
                SR_SALT, segmentation.series_uid, str(region.segment_number)]),
            identifier=(region.tracking_id or region.label or f"region {region.segment_number}")[:64])
        # An IBSI code repeats within a region (V10 and V90 share BC2M): the meaning then names the key.
        repeated = Counter((f["ibsi_code"], f["aggregation"]) for f in stored["features"])
        measurements = []
        for feature in stored["features"]:
            if feature["value"] is None:
                continue
            meaning = feature["name"]
            if repeated[(feature["ibsi_code"], feature["aggregation"])] > 1:
                meaning = f"{meaning} ({feature['key'].split(' ')[0]})"
            method = None
            if feature["aggregation"]:
                method = hd.sr.CodedConcept(codes_table.aggregation_code(feature["aggregation"]) or "UNKNOWN",
                                            designator, feature["aggregation"])
            measurements.append(hd.sr.Measurement(
                name=hd.sr.CodedConcept(feature["ibsi_code"], designator, meaning[:64]),
                value=float(feature["value"]),
                unit=hd.sr.CodedConcept(feature["unit"], "UCUM", feature["unit"]),
                method=method))
        common: dict[str, Any] = {"tracking_identifier": tracking, "algorithm_id": algorithm,
                                  "finding_sites": _site(stored["anatomic_site"]) or None,
                                  "finding_type": _coded(region.property_type), "measurements": measurements}
        if segmentation.modality == "SEG":
            seg_header = next(header for header in segmentation_headers
                              if any(int(item.SegmentNumber) == region.segment_number
                                     for item in header.get("SegmentSequence", [])))
            # By source series rather than ReferencedSegment.from_segmentation, which needs the segment's
            # identification per frame and misses it when the SEG shares it across frames.
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=str(seg_header.SOPClassUID), sop_instance_uid=str(seg_header.SOPInstanceUID),
                    segment_number=region.segment_number,
                    source_series=hd.sr.SourceSeriesForSegmentation(series.series_uid)),
                **common))
        else:
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(**common))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=[SR_SALT, "device"]), name="eucaim-gateway",
            manufacturer_name=MANUFACTURER, model_name="gateway radiomics", serial_number=__version__))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=IMAGING_PROCEDURE, imaging_measurements=groups)
    logger = logging.getLogger("highdicom")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))  # highdicom logs each copied module at INFO
    try:
        return hd.sr.Comprehensive3DSR(
            evidence=[*image_headers, *segmentation_headers], content=report, series_instance_uid=series_uid,
            series_number=SERIES_NUMBER, sop_instance_uid=sop_uid, instance_number=1, manufacturer=MANUFACTURER,
            is_complete=True, series_description=f"Radiomics {plan.parameter_hash[:12]}"[:64])
    finally:
        logger.setLevel(level)
