"""Regions of interest from stored DICOM-SEG and RTSTRUCT series, as boolean masks on a Volume's grid.

DICOM-SEG frames are placed on the reference volume's slices through the source image they reference when
the segmentation shares the volume's pixel grid (the common case: a SEG made on that series); otherwise
every voxel of the volume takes the value of the segmentation pixel nearest to it, found through the frames'
plane positions (a SEG made on another series of the same frame of reference, or on a coarser grid).

RTSTRUCT contours (closed planar polygons in patient coordinates) are filled on the reference slices with an
even-odd rule over all contours of a plane, so a contour inside another is a hole. A slice takes the contour
plane nearest to it when that plane lies within half the contour-plane spacing (contours drawn between the
slices land on the nearest slice; slices between contour planes take the nearer plane).

Masks are keyed by segment label / ROI name. A region that references another series, lives in another frame
of reference or ends up empty is an error unless the caller allows it: a feature computed from the wrong
region is worse than none.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from gateway.compute.volumes import Volume

if TYPE_CHECKING:
    from gateway.node import Node

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
ORIENTATION_TOLERANCE = 1e-4
# A frame matches a slice when their positions differ by less than this (mm).
POSITION_TOLERANCE_MM = 0.05
# Contour coordinates are decimal strings; planes closer than this (mm) are one plane.
PLANE_MERGE_TOLERANCE_MM = 0.01


# --- DICOM-SEG -------------------------------------------------------------------------------------------

def load_segmentation_masks(node: Node, study_uid: str, seg_series_uid: str, reference: Volume, *,
                            labels: Collection[str] | None = None, allow_other_series: bool = False,
                            allow_empty: bool = False) -> dict[str, np.ndarray]:
    """Segment label → boolean (z, y, x) mask on ``reference``'s grid, from a stored DICOM-SEG series.

    ``labels``: only these segments (each mask is a full volume; a whole-body SEG has a hundred segments).
    ``allow_other_series``: map a SEG made on another series of the same frame of reference by geometry
    (nearest neighbour) instead of refusing it. ``allow_empty``: return empty masks instead of refusing a
    segment that has no voxel on the reference grid.
    Raises ValueError when the series is not a segmentation, references another series or frame of
    reference, or a segment is empty.
    """
    instances = node.retrieve.instances(study_uid, seg_series_uid)
    return segmentation_masks_from_files([node.retrieve.path(instance) for instance in instances], reference,
                                         labels=labels, allow_other_series=allow_other_series,
                                         allow_empty=allow_empty)


def segmentation_masks_from_files(paths: Iterable[Path], reference: Volume, *, labels: Collection[str] | None = None,
                                  allow_other_series: bool = False, allow_empty: bool = False
                                  ) -> dict[str, np.ndarray]:
    """As load_segmentation_masks, for the files of a SEG series (several instances are merged by label)."""
    masks: dict[str, np.ndarray] = {}
    available: set[str] = set()
    read_any = False
    for path in paths:
        read_any = True
        dataset = dcmread(path)
        found = _segmentation_masks(dataset, reference, labels, allow_other_series)
        available |= set(_segment_labels(dataset).values())
        for label, mask in found.items():
            if label in masks:
                masks[label] |= mask
            else:
                masks[label] = mask
    if not read_any:
        raise ValueError("the segmentation series has no instances")
    _check_wanted(labels, available, "segment")
    _check_not_empty(masks, allow_empty, "segment")
    return masks


@dataclass(frozen=True)
class _SegFrame:
    index: int  # 0-based frame index in the pixel data
    segments: tuple[int, ...]  # segment numbers it holds (one, except for label maps)
    references: tuple[tuple[str, int], ...]  # (ReferencedSOPInstanceUID, 1-based frame) of its source images
    position: np.ndarray | None


@dataclass(frozen=True)
class _SegGrid:
    orientation: np.ndarray  # 6 cosines
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    rows: int
    columns: int
    plane_spacing: float | None  # SpacingBetweenSlices, if given


def _segmentation_masks(dataset: Dataset, reference: Volume, wanted: Collection[str] | None,
                        allow_other_series: bool) -> dict[str, np.ndarray]:
    uid = str(dataset.get("SOPInstanceUID", "?"))
    sop_class = str(dataset.get("SOPClassUID", ""))
    if sop_class not in (SEGMENTATION_STORAGE, LABEL_MAP_SEGMENTATION_STORAGE):
        raise ValueError(f"instance {uid} is not a segmentation (SOP class {sop_class}, modality "
                         f"{dataset.get('Modality')})")
    _check_frame_of_reference(dataset.get("FrameOfReferenceUID"), reference, f"segmentation {uid}")
    segment_type = str(dataset.get("SegmentationType", "BINARY"))
    labels = _segment_labels(dataset)
    label_map = sop_class == LABEL_MAP_SEGMENTATION_STORAGE or segment_type == "LABELMAP"
    frames = _seg_frames(dataset, labels, label_map)
    same_series = _references_reference_series(dataset, frames, reference)
    if not same_series and not allow_other_series:
        raise ValueError(f"segmentation {uid} references series {_referenced_series(dataset) or '(unknown)'}, "
                         f"not the reference volume's series {reference.series_uid}; pass allow_other_series=True "
                         f"to map it by geometry within the same frame of reference")
    if not same_series and (reference.frame_of_reference_uid is None or "FrameOfReferenceUID" not in dataset):
        raise ValueError(f"segmentation {uid} references another series and the frame of reference of one of them "
                         f"is unknown: it cannot be mapped by geometry")
    grid = _seg_grid(dataset)
    pixels = dataset.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    if segment_type == "FRACTIONAL":
        # A pixel belongs to the segment when more than half of it does.
        pixels = pixels > int(dataset.get("MaximumFractionalValue", 255)) / 2.0

    def plane_of(frame: _SegFrame, segment: int) -> np.ndarray:
        # Label maps hold segment numbers; binary and fractional frames hold one segment each.
        return pixels[frame.index] == segment if label_map else pixels[frame.index].astype(bool)

    masks = {label: np.zeros(reference.shape, dtype=bool) for label in labels.values()
             if wanted is None or label in wanted}
    slice_of = _direct_slices(frames, grid, reference) if same_series else {}
    geometric: dict[int, list[_SegFrame]] = {}
    for frame in frames:
        for segment in frame.segments:
            if labels[segment] not in masks:
                continue
            if frame.index in slice_of:
                masks[labels[segment]][slice_of[frame.index]] |= plane_of(frame, segment)
            else:
                geometric.setdefault(segment, []).append(frame)
    plane_spacing = _plane_spacing(frames, grid)
    for segment, segment_frames in geometric.items():
        if any(frame.position is None for frame in segment_frames):
            raise ValueError(f"segmentation {uid}: frames of segment {segment} neither reference a slice of the "
                             f"volume nor carry a plane position")
        planes = np.stack([plane_of(frame, segment) for frame in segment_frames])
        positions = np.stack([frame.position for frame in segment_frames if frame.position is not None])
        masks[labels[segment]] |= _resample_planes(planes, positions, grid, plane_spacing, reference)
    return masks


def _unique_labels(numbered: Iterable[tuple[int, str]], unnamed: str) -> dict[int, str]:
    """Labels by number; an empty one is named after its number, a repeated one gets its number added (labels
    need not be unique in a SEG or a structure set; keys must be)."""
    labels: dict[int, str] = {}
    seen: set[str] = set()
    for number, text in numbered:
        label = text or f"{unnamed} {number}"
        if label in seen:
            label = f"{label} ({number})"
        seen.add(label)
        labels[number] = label
    return labels


def segment_labels(dataset: Dataset) -> dict[int, str]:
    """The label each segment of a SEG is known by here (as the masks of segmentation_masks_from_files are)."""
    return _unique_labels(((int(item.SegmentNumber), str(item.get("SegmentLabel", "") or ""))
                           for item in dataset.get("SegmentSequence", [])), "segment")


def roi_labels(dataset: Dataset) -> dict[int, str]:
    """The name each ROI of a structure set is known by here (as the masks of rtstruct_masks_from_files are)."""
    return _unique_labels(((int(item.ROINumber), str(item.get("ROIName", "") or ""))
                           for item in dataset.get("StructureSetROISequence", [])), "ROI")


def _segment_labels(dataset: Dataset) -> dict[int, str]:
    labels = segment_labels(dataset)
    if not labels:
        raise ValueError(f"segmentation {dataset.get('SOPInstanceUID')} describes no segments")
    return labels


def _functional_item(dataset: Dataset, frame_item: Dataset | None, keyword: str) -> Dataset | None:
    """The first item of functional group ``keyword``: the frame's own if present, else the shared one."""
    if frame_item is not None and frame_item.get(keyword):
        return frame_item.get(keyword)[0]
    shared = dataset.get("SharedFunctionalGroupsSequence")
    if shared and shared[0].get(keyword):
        return shared[0].get(keyword)[0]
    return None


def _seg_frames(dataset: Dataset, labels: dict[int, str], label_map: bool) -> list[_SegFrame]:
    count = int(dataset.get("NumberOfFrames", 1) or 1)
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or []
    frames = []
    for index in range(count):
        item = per_frame[index] if index < len(per_frame) else None
        if label_map:
            segments = tuple(labels)
        else:
            identification = _functional_item(dataset, item, "SegmentIdentificationSequence")
            if identification is None:
                raise ValueError(f"frame {index + 1} of segmentation {dataset.get('SOPInstanceUID')} names no segment")
            segments = (int(identification.ReferencedSegmentNumber),)
        unknown = [s for s in segments if s not in labels]
        if unknown:
            raise ValueError(f"frame {index + 1} refers to segment {unknown[0]}, which the SegmentSequence lacks")
        references = []
        for derivation in (item.get("DerivationImageSequence", []) if item is not None else []):
            for source in derivation.get("SourceImageSequence", []):
                numbers = source.get("ReferencedFrameNumber")
                if numbers is None or numbers == "":
                    numbers = [1]
                elif not isinstance(numbers, MultiValue | list | tuple):
                    numbers = [numbers]
                references += [(str(source.ReferencedSOPInstanceUID), int(n)) for n in numbers]
        position_item = _functional_item(dataset, item, "PlanePositionSequence")
        position = None
        if position_item is not None and "ImagePositionPatient" in position_item:
            position = np.array([float(v) for v in position_item.ImagePositionPatient], dtype=float)
        frames.append(_SegFrame(index=index, segments=segments, references=tuple(references), position=position))
    return frames


def _seg_grid(dataset: Dataset) -> _SegGrid:
    uid = dataset.get("SOPInstanceUID")
    per_frame = list(dataset.get("PerFrameFunctionalGroupsSequence") or [None])
    orientations = {tuple(float(v) for v in item.ImageOrientationPatient)
                    for item in (_functional_item(dataset, frame, "PlaneOrientationSequence") for frame in per_frame)
                    if item is not None}
    measures = _functional_item(dataset, per_frame[0], "PixelMeasuresSequence")
    if not orientations or measures is None or "PixelSpacing" not in measures:
        raise ValueError(f"segmentation {uid} has no plane orientation or pixel spacing")
    cosines = np.array(orientations.pop(), dtype=float)
    if any(np.abs(np.array(other) - cosines).max() > ORIENTATION_TOLERANCE for other in orientations):
        raise ValueError(f"segmentation {uid} has frames in several orientations; one is supported")
    cosines[:3] /= np.linalg.norm(cosines[:3])
    cosines[3:] /= np.linalg.norm(cosines[3:])
    spacing_between = measures.get("SpacingBetweenSlices")
    return _SegGrid(orientation=cosines,
                    pixel_spacing=(float(measures.PixelSpacing[0]), float(measures.PixelSpacing[1])),
                    rows=int(dataset.Rows), columns=int(dataset.Columns),
                    plane_spacing=float(spacing_between) if spacing_between not in (None, "") else None)


def _referenced_series(dataset: Dataset) -> list[str]:
    return [str(item.SeriesInstanceUID) for item in dataset.get("ReferencedSeriesSequence", [])
            if "SeriesInstanceUID" in item]


def _references_reference_series(dataset: Dataset, frames: list[_SegFrame], reference: Volume) -> bool:
    series = _referenced_series(dataset)
    if series:
        return reference.series_uid in series
    # Without a Common Instance Reference module the frames' source images tell.
    referenced = {uid for frame in frames for uid, _ in frame.references}
    return bool(referenced) and bool(referenced & set(reference.sop_instance_uids))


def _same_in_plane_grid(grid: _SegGrid, reference: Volume) -> bool:
    _, rows, columns = reference.shape
    return (grid.rows == rows and grid.columns == columns
            and bool(np.abs(grid.orientation - reference.direction[:2].ravel()).max() <= ORIENTATION_TOLERANCE)
            and all(abs(a - b) <= 1e-4 * b for a, b in zip(grid.pixel_spacing, reference.spacing[1:], strict=True)))


def _direct_slices(frames: list[_SegFrame], grid: _SegGrid, reference: Volume) -> dict[int, int]:
    """Frame index → slice index for frames that lie exactly on a slice of the reference grid."""
    if not _same_in_plane_grid(grid, reference):
        return {}
    slice_of_source = {(uid, frame): index for index, (uid, frame)
                       in enumerate(zip(reference.sop_instance_uids, reference.frame_numbers, strict=True))}
    placed = {}
    for frame in frames:
        index = next((slice_of_source[ref] for ref in frame.references if ref in slice_of_source), None)
        if index is None and frame.position is not None:
            offsets = np.linalg.norm(reference.positions - frame.position, axis=1)
            nearest = int(np.argmin(offsets))
            index = nearest if offsets[nearest] <= POSITION_TOLERANCE_MM else None
        if index is None:
            continue
        # A referenced slice whose position disagrees with the frame's is not the frame's plane.
        if frame.position is not None and np.linalg.norm(reference.positions[index] - frame.position) \
                > POSITION_TOLERANCE_MM:
            continue
        placed[frame.index] = index
    return placed


def _plane_spacing(frames: list[_SegFrame], grid: _SegGrid) -> float | None:
    """The segmentation's distance between planes: stated, or the smallest gap between its frames' planes."""
    if grid.plane_spacing:
        return grid.plane_spacing
    normal = np.cross(grid.orientation[:3], grid.orientation[3:])
    offsets = np.unique(np.round([f.position @ normal for f in frames if f.position is not None], 3))
    gaps = np.diff(offsets)
    gaps = gaps[gaps > PLANE_MERGE_TOLERANCE_MM]
    return float(gaps.min()) if gaps.size else None


def _resample_planes(planes: np.ndarray, positions: np.ndarray, grid: _SegGrid, plane_spacing: float | None,
                     reference: Volume) -> np.ndarray:
    """Nearest-neighbour sampling of segmentation planes at every voxel centre of the reference grid.

    A voxel takes the pixel of the nearest plane when that plane lies within half the plane spacing of it
    (a single plane counts as thick as a reference slice); frames of one plane are merged.
    """
    row, column = grid.orientation[:3], grid.orientation[3:]
    normal = np.cross(row, column)
    offsets = positions @ normal
    order = np.argsort(offsets, kind="stable")
    offsets, positions, planes = offsets[order], positions[order], planes[order]
    # Merge frames of the same plane (a segment split over instances, or repeated frames).
    unique_offsets, first = [], []
    for i, offset in enumerate(offsets):
        if unique_offsets and offset - unique_offsets[-1] <= PLANE_MERGE_TOLERANCE_MM:
            planes[first[-1]] |= planes[i]
        else:
            unique_offsets.append(offset)
            first.append(i)
    offsets, positions, planes = np.asarray(unique_offsets), positions[first], planes[first]
    half = (plane_spacing if plane_spacing else reference.spacing[0]) / 2.0 + 1e-6

    mask = np.zeros(reference.shape, dtype=bool)
    _, rows, columns = reference.shape
    corners = [(0, 0), (rows - 1, 0), (0, columns - 1), (rows - 1, columns - 1)]
    for k in range(reference.shape[0]):
        corner_points = np.array([reference.positions[k] + i * reference.spacing[1] * reference.column_cosine
                                  + j * reference.spacing[2] * reference.row_cosine for i, j in corners])
        along = corner_points @ normal
        if along.max() < offsets[0] - half or along.min() > offsets[-1] + half:
            continue
        points = reference.slice_points(k)
        along_points = points @ normal
        upper = np.clip(np.searchsorted(offsets, along_points), 1, max(len(offsets) - 1, 1))
        lower = upper - 1
        nearest = np.where(np.abs(along_points - offsets[lower]) <= np.abs(along_points - offsets[upper]),
                           lower, upper) if len(offsets) > 1 else np.zeros(along_points.shape, dtype=int)
        valid = np.abs(along_points - offsets[nearest]) <= half
        relative = points - positions[nearest]
        i = np.rint(relative @ column / grid.pixel_spacing[0]).astype(np.int64)
        j = np.rint(relative @ row / grid.pixel_spacing[1]).astype(np.int64)
        valid &= (i >= 0) & (i < grid.rows) & (j >= 0) & (j < grid.columns)
        if valid.any():
            slice_mask = np.zeros((rows, columns), dtype=bool)
            slice_mask[valid] = planes[nearest[valid], i[valid], j[valid]]
            mask[k] = slice_mask
    return mask


# --- RTSTRUCT --------------------------------------------------------------------------------------------

def load_rtstruct_masks(node: Node, study_uid: str, rtstruct_series_uid: str, reference: Volume, *,
                        names: Collection[str] | None = None, allow_other_series: bool = False,
                        allow_empty: bool = False) -> dict[str, np.ndarray]:
    """ROI name → boolean (z, y, x) mask on ``reference``'s grid, from a stored RTSTRUCT series.

    Closed planar contours are filled (even-odd rule, so inner contours are holes) on the slice nearest to
    their plane. ``names``: only these ROIs; ``allow_other_series`` and ``allow_empty`` as for
    load_segmentation_masks. ROIs without closed contours (points, open polylines) are left out.
    """
    instances = node.retrieve.instances(study_uid, rtstruct_series_uid)
    return rtstruct_masks_from_files([node.retrieve.path(instance) for instance in instances], reference,
                                     names=names, allow_other_series=allow_other_series, allow_empty=allow_empty)


def rtstruct_masks_from_files(paths: Iterable[Path], reference: Volume, *, names: Collection[str] | None = None,
                              allow_other_series: bool = False, allow_empty: bool = False) -> dict[str, np.ndarray]:
    """As load_rtstruct_masks, for the files of an RTSTRUCT series (several instances are merged by name)."""
    masks: dict[str, np.ndarray] = {}
    available: set[str] = set()
    read_any = False
    for path in paths:
        read_any = True
        found = _rtstruct_masks(dcmread(path), reference, names, allow_other_series)
        available |= set(found)
        for name, mask in found.items():
            if mask is None:
                continue
            if name in masks:
                masks[name] |= mask
            else:
                masks[name] = mask
    if not read_any:
        raise ValueError("the structure set series has no instances")
    _check_wanted(names, available, "ROI")
    _check_not_empty(masks, allow_empty, "ROI")
    return masks


def _rtstruct_masks(dataset: Dataset, reference: Volume, wanted: Collection[str] | None,
                    allow_other_series: bool) -> dict[str, np.ndarray | None]:
    """ROI name → mask; None for the ROIs not wanted (so the caller knows they exist)."""
    uid = str(dataset.get("SOPInstanceUID", "?"))
    if str(dataset.get("SOPClassUID", "")) != RT_STRUCTURE_SET_STORAGE:
        raise ValueError(f"instance {uid} is not an RT structure set (SOP class {dataset.get('SOPClassUID')}, "
                         f"modality {dataset.get('Modality')})")
    series = [str(series_item.SeriesInstanceUID)
              for frame_item in dataset.get("ReferencedFrameOfReferenceSequence", [])
              for study_item in frame_item.get("RTReferencedStudySequence", [])
              for series_item in study_item.get("RTReferencedSeriesSequence", [])]
    if series and reference.series_uid not in series and not allow_other_series:
        raise ValueError(f"structure set {uid} references series {', '.join(series)}, not the reference volume's "
                         f"series {reference.series_uid}; pass allow_other_series=True to map it by geometry "
                         f"within the same frame of reference")
    rois = roi_labels(dataset)
    for item in dataset.get("StructureSetROISequence", []):
        _check_frame_of_reference(item.get("ReferencedFrameOfReferenceUID"), reference,
                                  f"ROI {rois[int(item.ROINumber)]!r} of {uid}")
    contours_of: dict[int, list[np.ndarray]] = {number: [] for number in rois}
    without_area: set[int] = set()
    for item in dataset.get("ROIContourSequence", []):
        number = int(item.ReferencedROINumber)
        if number not in rois:
            raise ValueError(f"structure set {uid} has contours for ROI {number}, which StructureSetROISequence "
                             f"lacks")
        for contour in item.get("ContourSequence", []):
            if str(contour.get("ContourGeometricType", "")).upper() == "CLOSED_PLANAR":
                contours_of[number].append(_contour_points(contour, rois[number]))
            else:
                without_area.add(number)
    # Point and polyline ROIs enclose nothing; ROIs declared but never contoured stay, as empty regions.
    return {rois[number]: rasterise_contours(contours, reference, rois[number])
            if wanted is None or rois[number] in wanted else None
            for number, contours in contours_of.items() if contours or number not in without_area}


def _contour_points(contour: Dataset, name: str) -> np.ndarray:
    values = np.array([float(v) for v in contour.get("ContourData", [])], dtype=float)
    if values.size % 3 or values.size < 9:
        raise ValueError(f"a contour of ROI {name!r} has {values.size} coordinates: not a polygon of (x, y, z) "
                         f"points")
    return values.reshape(-1, 3)


def rasterise_contours(contours: list[np.ndarray], reference: Volume, name: str = "ROI") -> np.ndarray:
    """Fill closed planar contours ((n, 3) patient-coordinate points each) on the reference grid.

    Contours are grouped by plane; each slice takes the plane nearest to it if that plane lies within half
    the spacing between the ROI's planes (a single plane: half the slice spacing), and fills the plane's
    contours with the even-odd rule, so nested contours make holes.
    """
    mask = np.zeros(reference.shape, dtype=bool)
    if not contours:
        return mask
    normal = reference.normal
    slice_offsets = reference.slice_offsets
    planes: dict[float, list[np.ndarray]] = {}
    for points in contours:
        along = points @ normal
        if np.ptp(along) > reference.spacing[0] / 2.0:
            raise ValueError(f"a contour of ROI {name!r} spans {np.ptp(along):.2f} mm along the slice normal: it "
                             f"does not lie in a plane parallel to the image slices")
        offset = float(np.mean(along))
        key = next((k for k in planes if abs(k - offset) <= PLANE_MERGE_TOLERANCE_MM), offset)
        planes.setdefault(key, []).append(points)
    plane_offsets = np.array(sorted(planes))
    gaps = np.diff(plane_offsets)
    half = (float(np.median(gaps)) if gaps.size else reference.spacing[0]) / 2.0 + 1e-6
    _, rows, columns = reference.shape
    for k, slice_offset in enumerate(slice_offsets):
        nearest = int(np.argmin(np.abs(plane_offsets - slice_offset)))
        if abs(plane_offsets[nearest] - slice_offset) > half:
            continue
        polygons = []
        for points in planes[float(plane_offsets[nearest])]:
            row_index, column_index = reference.in_plane_indices(points, k)
            polygons.append(np.column_stack([row_index, column_index]))
        mask[k] = fill_even_odd(polygons, rows, columns)
    return mask


def fill_even_odd(polygons: list[np.ndarray], rows: int, columns: int) -> np.ndarray:
    """Pixels (rows, columns) whose centres lie inside the polygons by the even-odd rule.

    Each polygon is (n, 2) continuous (row, column) indices, closed implicitly. A pixel centre is inside when
    a ray from it towards increasing columns crosses the edges an odd number of times; every edge toggles
    the pixels from its crossing to the end of the row, all polygons together, so holes come out by
    themselves. Edges count their lower end and not their upper one, so a vertex on a row is crossed once.
    """
    toggles = np.zeros((rows, columns + 1), dtype=np.int32)
    for polygon in polygons:
        start = np.asarray(polygon, dtype=float)
        end = np.roll(start, -1, axis=0)
        y0, x0, y1, x1 = start[:, 0], start[:, 1], end[:, 0], end[:, 1]
        low, high = np.minimum(y0, y1), np.maximum(y0, y1)
        first_row = np.clip(np.ceil(low), 0, rows).astype(np.int64)
        stop_row = np.clip(np.ceil(high), 0, rows).astype(np.int64)  # exclusive: the upper end is not counted
        counts = np.maximum(stop_row - first_row, 0)
        total = int(counts.sum())
        if not total:
            continue
        edge = np.repeat(np.arange(len(start)), counts)
        row = first_row[edge] + (np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts))
        # Crossing of the edge with the row through the pixel centres (horizontal edges have no rows).
        fraction = (row - y0[edge]) / (y1[edge] - y0[edge])
        crossing = x0[edge] + fraction * (x1[edge] - x0[edge])
        column = np.clip(np.ceil(crossing), 0, columns).astype(np.int64)
        np.add.at(toggles, (row, column), 1)
    return (np.cumsum(toggles[:, :columns], axis=1) & 1).astype(bool)


# --- Shared checks ---------------------------------------------------------------------------------------

def _check_frame_of_reference(frame_of_reference: object, reference: Volume, what: str) -> None:
    if frame_of_reference and reference.frame_of_reference_uid and \
            str(frame_of_reference) != reference.frame_of_reference_uid:
        raise ValueError(f"{what} is in frame of reference {frame_of_reference}, the reference volume in "
                         f"{reference.frame_of_reference_uid}: their coordinates are not comparable")


def _check_wanted(wanted: Collection[str] | None, available: set[str], kind: str) -> None:
    missing = sorted(set(wanted or ()) - available)
    if missing:
        raise ValueError(f"no {kind} named {', '.join(repr(name) for name in missing)}; there are "
                         f"{', '.join(repr(name) for name in sorted(available)) or 'none'}")


def _check_not_empty(masks: dict[str, np.ndarray], allow_empty: bool, kind: str) -> None:
    empty = [label for label, mask in masks.items() if not mask.any()]
    if empty and not allow_empty:
        raise ValueError(f"{kind}(s) {', '.join(repr(label) for label in empty)} cover no voxel of the reference "
                         f"volume (empty, or outside it); pass allow_empty=True to accept empty masks")
