"""Image volumes from stored CT, MR and PET series: the bridge from DICOM files to the (z, y, x) arrays the
feature kernels take.

Slices are ordered by their position along the slice normal (dot(ImagePositionPatient, row × column)), never
by InstanceNumber, which scanners and PACS exports number in either direction or not at all. Geometry that
cannot make one grid (mixed orientations, matrix sizes or pixel spacings, a scout in the series) is an error;
geometry that makes a grid with flaws (missing slices, irregular gaps, sheared stacks) is reported in
``Volume.warnings`` so the caller can decide, because a silently wrong z spacing corrupts every volume and
texture feature computed afterwards.

Enhanced multi-frame instances (Enhanced CT/MR/PET, legacy converted) are read frame by frame from their
functional groups; classic multi-frame instances without per-frame positions cannot be placed and are
refused. Pixel data is decoded by pydicom (compressed transfer syntaxes where a decoder is installed) one
file at a time into a preallocated array.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

if TYPE_CHECKING:
    from gateway.node import Node

# Series of these modalities hold no image stack (or one this module cannot place).
NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "RTDOSE", "SR", "PR", "KO", "REG",
                                  "DOC", "ECG", "AU", "FID", "PLAN"})
# Cosines and pixel spacings are stored as decimal strings; differences below these are rounding.
ORIENTATION_TOLERANCE = 1e-4
PIXEL_SPACING_RELATIVE_TOLERANCE = 1e-4
# Slice gaps may differ from the typical gap by this fraction of it, or by this many mm, before they count
# as irregular: positions written with two decimals jitter by 0.01 mm.
SPACING_RELATIVE_TOLERANCE = 0.01
SPACING_ABSOLUTE_TOLERANCE_MM = 0.02
# Positions closer than this (mm, and at most a tenth of the typical gap) are the same position.
DUPLICATE_TOLERANCE_MM = 0.01
# In-plane drift of the stack beyond this (mm) means slices are not stacked along the normal (gantry tilt).
SHEAR_TOLERANCE_MM = 0.05
MAX_LISTED = 5

DuplicatePolicy = Literal["error", "keep_first"]


@dataclass
class Volume:
    """A series' slices stacked in order along the slice normal, not resampled.

    ``array`` is (z, y, x): z follows the slice normal (ascending position), y the column direction (down
    the rows), x the row direction (along a row). Voxel (k, i, j) is centred at
    ``positions[k] + i * spacing[1] * column + j * spacing[2] * row`` in patient coordinates (mm, LPS).
    ``spacing[0]`` is the typical slice gap; ``positions`` holds every slice's true position, which differs
    from ``origin + k * spacing[0] * normal`` only where ``warnings`` reports missing slices or irregular gaps.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray  # (3, 3): rows are the row cosine (x), the column cosine (y) and the normal (z)
    sop_instance_uids: list[str]
    warnings: list[str] = field(default_factory=list)
    positions: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # (z, 3) ImagePositionPatient
    frame_numbers: list[int] = field(default_factory=list)  # 1-based frame of each slice in its instance
    study_uid: str = ""
    series_uid: str = ""
    frame_of_reference_uid: str | None = None
    modality: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = self.array.shape
        return int(z), int(y), int(x)

    @property
    def row_cosine(self) -> np.ndarray:
        return self.direction[0]

    @property
    def column_cosine(self) -> np.ndarray:
        return self.direction[1]

    @property
    def normal(self) -> np.ndarray:
        return self.direction[2]

    @property
    def slice_offsets(self) -> np.ndarray:
        """Each slice's position along the normal (mm), ascending."""
        return self.positions @ self.normal

    def slice_points(self, index: int) -> np.ndarray:
        """Patient coordinates (rows, columns, 3) of the voxel centres of slice ``index``."""
        _, rows, columns = self.shape
        down = np.arange(rows)[:, None, None] * (self.spacing[1] * self.column_cosine)
        along = np.arange(columns)[None, :, None] * (self.spacing[2] * self.row_cosine)
        return self.positions[index] + down + along

    def in_plane_indices(self, points: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Continuous (row, column) indices of patient points projected onto slice ``index``'s grid."""
        relative = np.asarray(points, dtype=float) - self.positions[index]
        return relative @ self.column_cosine / self.spacing[1], relative @ self.row_cosine / self.spacing[2]


@dataclass(frozen=True)
class _Slice:
    """One image plane of the series as its header describes it: a single-frame instance or one frame."""

    path: Path
    sop_instance_uid: str
    frame: int  # 1-based; 1 for single-frame instances
    multi_frame: bool
    instance_number: int
    position: np.ndarray
    orientation: np.ndarray
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]
    slope: float
    intercept: float


def load_series_volume(node: Node, study_uid: str, series_uid: str, *, dtype: Any = np.float32,
                       on_duplicate: DuplicatePolicy = "error",
                       spacing_tolerance_mm: float | None = None) -> Volume:
    """The stored series as a Volume with rescale slope and intercept applied slice by slice.

    ``dtype`` is float32 (half the memory; exact for CT and ample for PET/MR) or float64.
    ``on_duplicate``: two images at one position (several phases or echoes in one series, or a resent image)
    are an error, or with "keep_first" the image with the lower InstanceNumber is kept and a warning given.
    ``spacing_tolerance_mm`` overrides how far a slice gap may stray from the typical gap before it is
    reported (default: 1 % of the gap, at least 0.02 mm).
    Raises gateway.services.retrieve.NotFound for an unknown series and ValueError for one that is not an
    image series or whose images do not make one grid.
    """
    instances = node.retrieve.instances(study_uid, series_uid)
    return volume_from_files([node.retrieve.path(instance) for instance in instances], dtype=dtype,
                             on_duplicate=on_duplicate, spacing_tolerance_mm=spacing_tolerance_mm)


def volume_from_files(paths: Iterable[Path], *, dtype: Any = np.float32, on_duplicate: DuplicatePolicy = "error",
                      spacing_tolerance_mm: float | None = None) -> Volume:
    """As load_series_volume, for the files of one series."""
    if on_duplicate not in ("error", "keep_first"):
        raise ValueError(f"on_duplicate must be 'error' or 'keep_first', got {on_duplicate!r}")
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    files = [Path(path) for path in paths]
    if not files:
        raise ValueError("the series has no instances")
    # Headers only: large values (the pixel data above all) stay on disk until _read_pixels.
    headers = [dcmread(path, defer_size="1 KB") for path in files]
    identity = _series_identity(headers)
    slices = [plane for path, header in zip(files, headers, strict=True) for plane in _slices_of(path, header)]
    del headers
    _check_one_grid(slices)
    orientation = slices[0].orientation
    row, column = orientation[:3], orientation[3:]
    normal = np.cross(row, column)
    normal /= np.linalg.norm(normal)
    warnings: list[str] = []

    slices.sort(key=lambda s: (float(s.position @ normal), s.instance_number, s.frame))
    slices = _without_duplicates(slices, normal, on_duplicate, warnings)
    offsets = np.array([s.position @ normal for s in slices])
    slice_spacing = _slice_spacing(slices, offsets, spacing_tolerance_mm, warnings)
    _check_shear(slices, offsets, normal, warnings)

    first = slices[0]
    array = np.empty((len(slices), first.rows, first.columns), dtype=dtype)
    _read_pixels(slices, array)
    return Volume(
        array=array,
        spacing=(slice_spacing, first.pixel_spacing[0], first.pixel_spacing[1]),
        origin=(float(first.position[0]), float(first.position[1]), float(first.position[2])),
        direction=np.stack([row, column, normal]),
        sop_instance_uids=[s.sop_instance_uid for s in slices],
        warnings=warnings,
        positions=np.stack([s.position for s in slices]),
        frame_numbers=[s.frame for s in slices],
        **identity,
    )


# --- Headers ---------------------------------------------------------------------------------------------

def _series_identity(headers: list[Dataset]) -> dict[str, Any]:
    first = headers[0]
    modality = str(first.get("Modality", ""))
    if modality in NON_IMAGE_MODALITIES:
        raise ValueError(f"series {first.get('SeriesInstanceUID')} is a {modality} series, not an image series")
    series = {str(h.get("SeriesInstanceUID", "")) for h in headers}
    if len(series) > 1:
        raise ValueError(f"the files belong to {len(series)} series, not one")
    frames_of_reference = {str(h.FrameOfReferenceUID) for h in headers if "FrameOfReferenceUID" in h}
    if len(frames_of_reference) > 1:
        raise ValueError(f"the series' images are in {len(frames_of_reference)} frames of reference")
    return {"study_uid": str(first.get("StudyInstanceUID", "")), "series_uid": series.pop(),
            "frame_of_reference_uid": frames_of_reference.pop() if frames_of_reference else None,
            "modality": modality}


def _slices_of(path: Path, header: Dataset) -> list[_Slice]:
    uid = str(header.get("SOPInstanceUID", path.name))
    missing = [keyword for keyword in ("Rows", "Columns", "PixelData") if keyword not in header]
    if missing:
        raise ValueError(f"instance {uid} is not an image ({', '.join(missing)} missing): the series is not an "
                         f"image series")
    if int(header.get("SamplesPerPixel", 1)) != 1:
        raise ValueError(f"instance {uid} is a colour image ({header.get('PhotometricInterpretation')}); "
                         f"volumes are built from greyscale images only")
    frames = int(header.get("NumberOfFrames", 1) or 1)
    instance_number = int(header.get("InstanceNumber", 0) or 0)
    rows, columns = int(header.Rows), int(header.Columns)
    if "PerFrameFunctionalGroupsSequence" in header or "SharedFunctionalGroupsSequence" in header:
        return [_enhanced_frame(path, header, uid, frame, instance_number, rows, columns)
                for frame in range(1, frames + 1)]
    if frames > 1:
        raise ValueError(f"instance {uid} has {frames} frames but no per-frame functional groups: its frames "
                         f"have no positions and cannot be placed in a volume")
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if keyword not in header:
            raise ValueError(f"instance {uid} has no {keyword}: it cannot be placed in a volume")
    return [_Slice(path=path, sop_instance_uid=uid, frame=1, multi_frame=False, instance_number=instance_number,
                   position=_floats(header.ImagePositionPatient, 3, "ImagePositionPatient", uid),
                   orientation=_orientation(header.ImageOrientationPatient, uid), rows=rows, columns=columns,
                   pixel_spacing=_pixel_spacing(header.PixelSpacing, uid),
                   slope=float(header.get("RescaleSlope", 1) or 1),
                   intercept=float(header.get("RescaleIntercept", 0) or 0))]


def _functional_group(header: Dataset, frame: int, keyword: str) -> Dataset | None:
    """The item of functional group ``keyword`` for a frame: per-frame if present there, else shared."""
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) >= frame:
        sequence = per_frame[frame - 1].get(keyword)
        if sequence:
            return sequence[0]
    shared = header.get("SharedFunctionalGroupsSequence")
    if shared:
        sequence = shared[0].get(keyword)
        if sequence:
            return sequence[0]
    return None


def _enhanced_frame(path: Path, header: Dataset, uid: str, frame: int, instance_number: int, rows: int,
                    columns: int) -> _Slice:
    position = _functional_group(header, frame, "PlanePositionSequence")
    orientation = _functional_group(header, frame, "PlaneOrientationSequence")
    measures = _functional_group(header, frame, "PixelMeasuresSequence")
    if position is None or orientation is None or measures is None or "PixelSpacing" not in measures:
        raise ValueError(f"frame {frame} of instance {uid} lacks a plane position, plane orientation or pixel "
                         f"spacing in its functional groups: it cannot be placed in a volume")
    transformation = _functional_group(header, frame, "PixelValueTransformationSequence")
    slope, intercept = 1.0, 0.0
    if transformation is not None:
        slope = float(transformation.get("RescaleSlope", 1) or 1)
        intercept = float(transformation.get("RescaleIntercept", 0) or 0)
    return _Slice(path=path, sop_instance_uid=uid, frame=frame, multi_frame=True, instance_number=instance_number,
                  position=_floats(position.ImagePositionPatient, 3, "ImagePositionPatient", uid),
                  orientation=_orientation(orientation.ImageOrientationPatient, uid), rows=rows, columns=columns,
                  pixel_spacing=_pixel_spacing(measures.PixelSpacing, uid), slope=slope, intercept=intercept)


def _floats(value: Any, count: int, keyword: str, uid: str) -> np.ndarray:
    try:
        numbers = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"instance {uid} has a malformed {keyword}: {value!r}") from exc
    if numbers.shape != (count,) or not np.isfinite(numbers).all():
        raise ValueError(f"instance {uid} has a malformed {keyword}: {value!r}")
    return numbers


def _orientation(value: Any, uid: str) -> np.ndarray:
    cosines = _floats(value, 6, "ImageOrientationPatient", uid)
    row, column = cosines[:3], cosines[3:]
    row_norm, column_norm = np.linalg.norm(row), np.linalg.norm(column)
    if row_norm < 0.5 or column_norm < 0.5 or abs(row @ column) / (row_norm * column_norm) > 1e-3:
        raise ValueError(f"instance {uid} has an ImageOrientationPatient that is not two orthogonal unit "
                         f"vectors: {list(cosines)}")
    # Normalised so that stored rounding does not scale distances.
    return np.concatenate([row / row_norm, column / column_norm])


def _pixel_spacing(value: Any, uid: str) -> tuple[float, float]:
    spacing = _floats(value, 2, "PixelSpacing", uid)
    if (spacing <= 0).any():
        raise ValueError(f"instance {uid} has a non-positive PixelSpacing: {list(spacing)}")
    return float(spacing[0]), float(spacing[1])


# --- Geometry checks -------------------------------------------------------------------------------------

def _check_one_grid(slices: list[_Slice]) -> None:
    """All planes share orientation, matrix and pixel spacing, or there is no single grid to build."""
    first = slices[0]
    for name, differs in (
        ("orientation (ImageOrientationPatient)",
         lambda s: bool(np.abs(s.orientation - first.orientation).max() > ORIENTATION_TOLERANCE)),
        ("matrix size (Rows, Columns)", lambda s: (s.rows, s.columns) != (first.rows, first.columns)),
        ("pixel spacing (PixelSpacing)",
         lambda s: any(abs(a - b) > PIXEL_SPACING_RELATIVE_TOLERANCE * b
                       for a, b in zip(s.pixel_spacing, first.pixel_spacing, strict=True))),
    ):
        odd = [s for s in slices if differs(s)]
        if odd:
            example = odd[0]
            raise ValueError(
                f"inconsistent {name} across the series: {len(odd)} of {len(slices)} images differ from "
                f"instance {first.sop_instance_uid} (e.g. instance {example.sop_instance_uid}"
                f"{'' if not example.multi_frame else f' frame {example.frame}'}: "
                f"{_describe_geometry(example)} vs {_describe_geometry(first)}); a localiser or a reformat in the "
                f"series? Split the series first")


def _describe_geometry(plane: _Slice) -> str:
    return (f"orientation {[round(float(v), 4) for v in plane.orientation]}, {plane.rows}x{plane.columns}, "
            f"pixel spacing {list(plane.pixel_spacing)}")


def _without_duplicates(slices: list[_Slice], normal: np.ndarray, policy: DuplicatePolicy,
                        warnings: list[str]) -> list[_Slice]:
    offsets = np.array([s.position @ normal for s in slices])
    gaps = np.diff(offsets)
    positive = gaps[gaps > 1e-6]
    tolerance = DUPLICATE_TOLERANCE_MM if not positive.size else min(DUPLICATE_TOLERANCE_MM,
                                                                      0.1 * float(np.median(positive)))
    duplicate = np.flatnonzero(gaps <= tolerance) + 1  # the later of each close pair
    if not duplicate.size:
        return slices
    described = [f"{offsets[i]:.3f} mm ({slices[i - 1].sop_instance_uid} and {slices[i].sop_instance_uid})"
                 for i in duplicate[:MAX_LISTED]]
    summary = f"{duplicate.size} image(s) share a position with another: " + "; ".join(described) + _more(duplicate)
    if policy == "error":
        raise ValueError(f"duplicate slice positions: {summary}. The series may hold several phases or echoes; "
                         f"split it, or pass on_duplicate='keep_first'")
    # Within a run of equal positions the sort put the lowest InstanceNumber first; keep that one.
    warnings.append(f"duplicate slice positions, kept the image with the lowest InstanceNumber: {summary}")
    keep = np.ones(len(slices), dtype=bool)
    keep[duplicate] = False
    return [s for s, kept in zip(slices, keep, strict=True) if kept]


def _slice_spacing(slices: list[_Slice], offsets: np.ndarray, tolerance_mm: float | None,
                   warnings: list[str]) -> float:
    """The typical gap between slices; missing slices and irregular gaps go to ``warnings``."""
    if len(slices) == 1:
        warnings.append("single-slice series: the slice spacing is not defined by positions; 1.0 mm assumed")
        return 1.0
    gaps = np.diff(offsets)
    typical = float(np.median(gaps))
    tolerance = tolerance_mm if tolerance_mm is not None else max(SPACING_RELATIVE_TOLERANCE * typical,
                                                                  SPACING_ABSOLUTE_TOLERANCE_MM)
    missing, irregular = [], []
    for index in np.flatnonzero(np.abs(gaps - typical) > tolerance):
        gap = float(gaps[index])
        multiple = round(gap / typical)
        where = f"between slices {index} and {index + 1} ({offsets[index]:.2f} → {offsets[index + 1]:.2f} mm)"
        if multiple >= 2 and abs(gap - multiple * typical) <= tolerance * multiple:
            missing.append(f"{multiple - 1} missing {where}")
        else:
            irregular.append(f"{gap:.3f} mm {where}")
    if missing:
        warnings.append(f"missing slices (gap a multiple of the typical {typical:.3f} mm; the array has no slice "
                        f"for them, use Volume.positions): " + "; ".join(missing[:MAX_LISTED]) + _more(missing))
    if irregular:
        warnings.append(f"irregular slice spacing (typical {typical:.3f} mm, tolerance {tolerance:.3f} mm): "
                        + "; ".join(irregular[:MAX_LISTED]) + _more(irregular))
    return typical


def _check_shear(slices: list[_Slice], offsets: np.ndarray, normal: np.ndarray, warnings: list[str]) -> None:
    """Positions should move along the normal only; in-plane drift means a tilted gantry or a sheared stack."""
    first = slices[0].position
    drift = np.array([s.position - first for s in slices]) - np.outer(offsets - offsets[0], normal)
    worst = float(np.linalg.norm(drift, axis=1).max())
    if worst > SHEAR_TOLERANCE_MM:
        warnings.append(f"slices are not stacked along the slice normal (in-plane drift up to {worst:.2f} mm, "
                        f"e.g. gantry tilt): the volume's grid assumes they are")


def _more(items: Sequence[Any] | np.ndarray) -> str:
    return f" (and {len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""


# --- Pixels ----------------------------------------------------------------------------------------------

def _read_pixels(slices: list[_Slice], array: np.ndarray) -> None:
    """Decode each file once and scatter its frames to their places in the preallocated array."""
    places: dict[Path, list[tuple[int, _Slice]]] = {}
    for index, plane in enumerate(slices):
        places.setdefault(plane.path, []).append((index, plane))
    for path, planes in places.items():
        dataset = dcmread(path)
        uid = planes[0][1].sop_instance_uid
        try:
            pixels = dataset.pixel_array
        except Exception as exc:  # no decoder for the transfer syntax, or corrupt pixel data
            syntax = dataset.file_meta.get("TransferSyntaxUID", "unknown")
            raise ValueError(f"cannot decode the pixel data of instance {uid} (transfer syntax {syntax}): "
                             f"{exc}") from exc
        multi_frame = planes[0][1].multi_frame
        if multi_frame and pixels.ndim == 2:
            pixels = pixels[np.newaxis]
        for index, plane in planes:
            frame = pixels[plane.frame - 1] if multi_frame else pixels
            if frame.shape != array.shape[1:]:
                raise ValueError(f"instance {uid} decodes to {frame.shape}, expected {array.shape[1:]}")
            if not multi_frame and "ModalityLUTSequence" in dataset:
                array[index] = apply_modality_lut(frame, dataset)
            elif plane.slope == 1.0 and plane.intercept == 0.0:
                array[index] = frame
            else:
                array[index] = frame.astype(np.float64) * plane.slope + plane.intercept
        del dataset, pixels
    if not (math.isfinite(float(array.min())) and math.isfinite(float(array.max()))):
        raise ValueError("the rescaled pixel values are not finite (check RescaleSlope and RescaleIntercept)")
