"""A cohort: the image series a QIDO-RS-style query selects, each with the segmentations that reference it.

``Modality=CT&StudyDate=20200101-20211231&PatientID=P1`` is parsed and matched by the one matcher QIDO-RS and
C-FIND use (``gateway.services.query``) at the series level; a key the matcher cannot use at that level is an
error here (QIDO-RS returns it unmatched, which would silently widen a cohort). Non-image series (SEG, RTSTRUCT,
SR...) are never cohort members themselves. A series' regions are the segments of every DICOM SEG and the
closed-contour ROIs of every RTSTRUCT of the same study that reference it (ReferencedSeriesSequence, or the
source images of the SEG's frames; the RT Referenced Series of a structure set). A series without any is
reported as skipped with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select

from gateway.compute.regions import roi_labels, segment_labels
from gateway.compute.volumes import NON_IMAGE_MODALITIES
from gateway.services.query import InvalidQuery, parse_query
from gateway.store.models import Instance, Series, Study

if TYPE_CHECKING:
    from gateway.node import Node

SEGMENTATION_MODALITIES = ("SEG", "RTSTRUCT")


@dataclass(frozen=True)
class Region:
    segment_number: int
    label: str  # unique within its segmentation, as gateway.compute.regions keys the masks
    tracking_uid: str = ""
    tracking_id: str = ""
    # (code value, coding scheme designator, code meaning) of the segment's anatomic region, if coded
    anatomic_site: tuple[str, str, str] | None = None
    # (code value, designator, meaning) of the segmented property type (e.g. Neoplasm, primary)
    property_type: tuple[str, str, str] | None = None


@dataclass
class Segmentation:
    modality: str  # SEG or RTSTRUCT
    series_uid: str
    sop_instance_uids: list[str]
    sop_class_uid: str
    paths: list[str]
    regions: list[Region]


@dataclass
class CohortSeries:
    study_uid: str
    series_uid: str
    modality: str
    series_pk: int
    patient_pk: int
    patient_id: str
    body_part_examined: str
    units: str  # PET Units (0054,1001), for the intensity unit; "" for other modalities
    segmentations: list[Segmentation] = field(default_factory=list)

    @property
    def region_count(self) -> int:
        return sum(len(segmentation.regions) for segmentation in self.segmentations)


@dataclass
class Cohort:
    series: list[CohortSeries]
    skipped: list[dict[str, str]]

    @property
    def region_count(self) -> int:
        return sum(series.region_count for series in self.series)


class CohortError(ValueError):
    """The cohort query cannot be used."""


def parse_cohort(text: str) -> list[tuple[str, str]]:
    """The query's key/value pairs, checked against the series-level matcher (raises CohortError)."""
    pairs = parse_qsl(text.strip().lstrip("?"), keep_blank_values=True, strict_parsing=False)
    control = [name for name, _ in pairs if name in ("includefield", "limit", "offset")]
    if control:
        raise CohortError(f"cohort: {', '.join(control)} select no series; give attribute matches only")
    try:
        query = parse_query("series", pairs, max_results=1)
    except InvalidQuery as exc:
        raise CohortError(f"cohort: {exc}") from exc
    if query.warnings:
        raise CohortError("cohort: " + "; ".join(query.warnings))
    return pairs


def _attribute(attributes: dict[str, Any], tag: str) -> str:
    values = attributes.get(tag, {}).get("Value") or []
    return str(values[0]).strip() if values and not isinstance(values[0], dict) else ""


def select_cohort(node: Node, text: str) -> Cohort:
    pairs = parse_cohort(text)
    query = parse_query("series", pairs, max_results=1)
    query.limit = None  # a cohort is every match, not a page
    matches = node.query.search(query, base_url="").matches
    wanted = [(_attribute(m, "0020000D"), _attribute(m, "0020000E"), _attribute(m, "00080060")) for m in matches]
    skipped: list[dict[str, str]] = []
    image_series = [series_uid for _, series_uid, modality in wanted if modality not in NON_IMAGE_MODALITIES]
    rows = _series_rows(node, image_series)
    cohort_series = [CohortSeries(study_uid=row.study_instance_uid, series_uid=row.series_instance_uid,
                                  modality=row.modality, series_pk=row.pk, patient_pk=row.patient_pk,
                                  patient_id=row.patient_id, body_part_examined=row.body_part_examined or "",
                                  units=_pet_units(node, row.pk) if row.modality == "PT" else "")
                     for row in rows]
    segmentations = _segmentations_by_study(node, sorted({series.study_uid for series in cohort_series}))
    kept = []
    for series in cohort_series:
        for segmentation, dataset_references in segmentations.get(series.study_uid, []):
            if _references(node, series, dataset_references):
                series.segmentations.append(segmentation)
        if series.segmentations:
            kept.append(series)
        else:
            skipped.append({"study": series.study_uid, "series": series.series_uid, "modality": series.modality,
                            "reason": "no DICOM SEG or RTSTRUCT in the study references this series"})
    return Cohort(kept, skipped)


def _pet_units(node: Node, series_pk: int) -> str:
    """Units (0054,1001) of a PET series: the index keeps it with the instances' attributes, not the series'."""
    with node.engine.connect() as connection:
        text = connection.execute(select(Instance.metadata_json).where(Instance.series_pk == series_pk)
                                  .order_by(Instance.instance_number, Instance.pk).limit(1)).scalar()
    return _attribute(json.loads(text or "{}"), "00541001")


def _series_rows(node: Node, series_uids: list[str]) -> list[Any]:
    rows: list[Any] = []
    with node.engine.connect() as connection:
        for start in range(0, len(series_uids), 500):
            chunk = series_uids[start:start + 500]
            rows += connection.execute(
                select(Series.pk, Series.series_instance_uid, Series.modality, Series.body_part_examined,
                       Study.study_instance_uid, Study.patient_pk, Study.patient_id)
                .join(Study, Study.pk == Series.study_pk).where(Series.series_instance_uid.in_(chunk))).all()
    order = {uid: index for index, uid in enumerate(series_uids)}
    return sorted(rows, key=lambda row: order[row.series_instance_uid])


@dataclass
class _References:
    series: set[str]
    source_instances: set[str]


def _segmentations_by_study(node: Node, study_uids: list[str]) -> dict[str, list[tuple[Segmentation, _References]]]:
    found: dict[str, list[tuple[Segmentation, _References]]] = {}
    with node.engine.connect() as connection:
        rows = []
        for start in range(0, len(study_uids), 500):
            rows += connection.execute(
                select(Study.study_instance_uid, Series.series_instance_uid, Series.modality)
                .join(Study, Study.pk == Series.study_pk)
                .where(Study.study_instance_uid.in_(study_uids[start:start + 500]),
                       Series.modality.in_(SEGMENTATION_MODALITIES))
                .order_by(Series.series_number, Series.pk)).all()
    for study_uid, series_uid, modality in rows:
        instances = node.retrieve.instances(study_uid, series_uid)
        paths = [str(node.retrieve.path(instance)) for instance in instances]
        headers = [dcmread(path, stop_before_pixels=True) for path in paths]
        regions = _seg_regions(headers) if modality == "SEG" else _rtstruct_regions(headers)
        references = _References(set(), set())
        for header in headers:
            _collect_references(header, modality, references)
        segmentation = Segmentation(modality=modality, series_uid=series_uid,
                                    sop_instance_uids=[instance.sop_uid for instance in instances],
                                    sop_class_uid=instances[0].sop_class_uid, paths=paths, regions=regions)
        if regions:
            found.setdefault(study_uid, []).append((segmentation, references))
    return found


def _code(item: Dataset | None) -> tuple[str, str, str] | None:
    if item is None or "CodeValue" not in item:
        return None
    return str(item.CodeValue), str(item.get("CodingSchemeDesignator", "")), str(item.get("CodeMeaning", ""))


def _first(dataset: Dataset, keyword: str) -> Dataset | None:
    sequence = dataset.get(keyword)
    return sequence[0] if sequence else None


def _seg_regions(headers: list[Dataset]) -> list[Region]:
    """Segments by number, labelled as gateway.compute.regions labels them."""
    regions: dict[int, Region] = {}
    for header in headers:
        labels = segment_labels(header)
        for item in header.get("SegmentSequence", []):
            number = int(item.SegmentNumber)
            regions.setdefault(number, Region(
                segment_number=number, label=labels[number], tracking_uid=str(item.get("TrackingUID", "") or ""),
                tracking_id=str(item.get("TrackingID", "") or ""),
                anatomic_site=_code(_first(item, "AnatomicRegionSequence")),
                property_type=_code(_first(item, "SegmentedPropertyTypeCodeSequence"))))
    return [regions[number] for number in sorted(regions)]


def _rtstruct_regions(headers: list[Dataset]) -> list[Region]:
    """ROIs with closed planar contours (the only ones gateway.compute.regions fills), by ROI number."""
    regions: dict[int, Region] = {}
    for header in headers:
        closed = {int(item.ReferencedROINumber) for item in header.get("ROIContourSequence", [])
                  if any(str(contour.get("ContourGeometricType", "")) == "CLOSED_PLANAR"
                         for contour in item.get("ContourSequence", []))}
        for number, label in roi_labels(header).items():
            if number in closed:
                regions.setdefault(number, Region(segment_number=number, label=label))
    return [regions[number] for number in sorted(regions)]


def _collect_references(header: Dataset, modality: str, references: _References) -> None:
    if modality == "SEG":
        for item in header.get("ReferencedSeriesSequence", []):
            if "SeriesInstanceUID" in item:
                references.series.add(str(item.SeriesInstanceUID))
        for frame in header.get("PerFrameFunctionalGroupsSequence", []):
            for derivation in frame.get("DerivationImageSequence", []):
                for source in derivation.get("SourceImageSequence", []):
                    references.source_instances.add(str(source.ReferencedSOPInstanceUID))
        return
    for frame_of_reference in header.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame_of_reference.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                if "SeriesInstanceUID" in series:
                    references.series.add(str(series.SeriesInstanceUID))


def _references(node: Node, series: CohortSeries, references: _References) -> bool:
    if series.series_uid in references.series:
        return True
    if references.series or not references.source_instances:
        return False
    # No Common Instance Reference module: the frames' source images tell which series it was drawn on.
    with node.engine.connect() as connection:
        members = set(connection.execute(select(Instance.sop_instance_uid)
                                         .where(Instance.series_pk == series.series_pk)).scalars())
    return bool(members & references.source_instances)
