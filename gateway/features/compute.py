"""Features of one image series' regions: the unit of work a pool process or a Dask worker runs.

A worker reads the series' files and its segmentation's files and computes; it never touches the database
(the job's own process stores what comes back), so a Dask worker on another machine needs only the shared
file store. Masks are loaded a few regions at a time because each is a full volume (a whole-body SEG has a
hundred segments), and every failure is reported per region or per series rather than raised, so one bad
series does not stop a cohort.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from gateway.compute.backend import resolve_backend
from gateway.compute.regions import rtstruct_masks_from_files, segmentation_masks_from_files
from gateway.compute.volumes import volume_from_files
from gateway.features.params import FIRST_ORDER_FAMILIES

if TYPE_CHECKING:
    from gateway.compute.features.base import FeatureValue

# Regions whose masks are held at once (each mask is a boolean copy of the whole volume).
MASK_BATCH = 8


@dataclass(frozen=True)
class RegionSpec:
    segment_number: int  # SegmentNumber of a SEG, ROINumber of an RTSTRUCT
    label: str  # the key gateway.compute.regions gives its mask (segment label / ROI name)


@dataclass(frozen=True)
class SeriesTask:
    study_uid: str
    series_uid: str
    image_paths: tuple[str, ...]
    segmentation_modality: str  # "SEG" or "RTSTRUCT"
    segmentation_series_uid: str
    segmentation_paths: tuple[str, ...]
    regions: tuple[RegionSpec, ...]
    settings: dict[str, Any]
    backend: str | None = None


# (family, name, IBSI code, key, aggregation, value): plain tuples travel cheaply between processes.
FeatureRow = tuple[str, str, str, str, str | None, float]


@dataclass
class RegionOutcome:
    segment_number: int
    features: list[FeatureRow] = field(default_factory=list)
    voxel_count: int = 0
    error: str | None = None


@dataclass
class SeriesOutcome:
    series_uid: str
    segmentation_series_uid: str
    backend: str
    regions: list[RegionOutcome] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


def region_features(image: np.ndarray, mask: np.ndarray, spacing: Sequence[float], settings: dict[str, Any],
                    backend: str | None = None) -> list[FeatureValue]:
    """The features ``settings`` ask for, by the same steps as gateway.compute's extract_features.

    The steps are called one by one (rather than extract_features) for the options extract_features does not
    take: image and mask interpolation, the partial-volume threshold and the choice of families.
    """
    # Imported here, in the extraction workers, not when the plug-in loads: they compile or load the Numba
    # kernels, which every `gateway` command would otherwise wait for.
    from gateway.compute.features.pipeline import discretise_region, prepare_region, region_first_order_features
    from gateway.compute.features.texture import FAMILIES as TEXTURE_FAMILIES
    from gateway.compute.features.texture import texture_features

    resampling, resegmentation = settings["resampling"], settings["resegmentation"]
    lower, upper = resegmentation["lower"], resegmentation["upper"]
    families = settings["features"]["families"]
    region = prepare_region(
        image, mask, spacing,
        new_spacing=resampling["spacing"],
        image_interpolation=resampling["interpolation"],
        mask_interpolation=resampling["mask_interpolation"],
        partial_volume_threshold=resampling["partial_volume_threshold"],
        round_intensities=resampling["round_intensities"],
        resegment_range=None if lower is None and upper is None else (lower, upper),
        outlier_sigma=resegmentation["outlier_sigma"],
        backend=backend,
    )
    bins = settings["discretisation"]
    discretisation = None
    if bins["bin_width"] is not None or bins["bin_number"] is not None:
        discretisation = discretise_region(region, bin_number=bins["bin_number"], bin_width=bins["bin_width"],
                                           backend=backend)
    features: list[FeatureValue] = []
    wanted = {FIRST_ORDER_FAMILIES[family] for family in families if family in FIRST_ORDER_FAMILIES}
    if wanted:
        first_order = region_first_order_features(
            region,
            discretisation=discretisation if "intensity_histogram" in families else None,
            ivh_bin_width=settings["ivh"]["bin_width"],
            ivh_bin_number=settings["ivh"]["bin_number"],
            backend=backend,
        )
        features += [feature for feature in first_order if feature.family in wanted]
    texture = [family for family in families if family in TEXTURE_FAMILIES]
    if texture and discretisation is not None and settings["features"]["aggregations"]:
        features += texture_features(discretisation.levels, region.intensity_mask, discretisation.n_levels,
                                     morphological_mask=region.morphological_mask,
                                     aggregations=settings["features"]["aggregations"], families=texture,
                                     backend=backend)
    return features


def _masks(task: SeriesTask, volume: Any, labels: list[str]) -> dict[str, np.ndarray]:
    if task.segmentation_modality == "RTSTRUCT":
        return rtstruct_masks_from_files(task.segmentation_paths, volume, names=labels, allow_empty=True)
    return segmentation_masks_from_files(task.segmentation_paths, volume, labels=labels, allow_empty=True)


def compute_series(task: SeriesTask) -> SeriesOutcome:
    """Every region of ``task``; errors end up in the outcome, not raised."""
    started = time.monotonic()
    backend = resolve_backend(task.backend)
    outcome = SeriesOutcome(task.series_uid, task.segmentation_series_uid, backend)
    try:
        volume = volume_from_files(task.image_paths)
    except (ValueError, OSError) as exc:
        outcome.error = f"the image series cannot be read as a volume: {exc}"
        return outcome
    if volume.warnings:
        # Missing slices, irregular gaps or a sheared stack: the uniform spacing the features assume is false.
        outcome.error = "the image series is not a regular grid: " + "; ".join(volume.warnings)
        return outcome
    for start in range(0, len(task.regions), MASK_BATCH):
        batch = task.regions[start:start + MASK_BATCH]
        try:
            masks = _masks(task, volume, [region.label for region in batch])
        except (ValueError, OSError) as exc:
            outcome.regions += [RegionOutcome(region.segment_number, error=f"mask: {exc}") for region in batch]
            continue
        for region in batch:
            mask = masks.get(region.label)
            voxels = int(np.count_nonzero(mask)) if mask is not None else 0
            if voxels == 0:
                outcome.regions.append(RegionOutcome(region.segment_number,
                                                     error="the region has no voxel on the image grid"))
                continue
            try:
                values = region_features(volume.array, mask, volume.spacing, task.settings, backend)
            except ValueError as exc:
                outcome.regions.append(RegionOutcome(region.segment_number, voxel_count=voxels, error=str(exc)))
                continue
            outcome.regions.append(RegionOutcome(
                region.segment_number, voxel_count=voxels,
                features=[(f.family, f.name, f.ibsi_code, f.key, f.aggregation, float(f.value)) for f in values]))
        del masks
    outcome.seconds = time.monotonic() - started
    return outcome


def init_worker(numba_threads: int) -> None:
    """Pool initializer: share the cores between the pool's processes instead of each taking them all."""
    os.environ["NUMBA_NUM_THREADS"] = str(numba_threads)
    try:
        import numba

        numba.set_num_threads(min(numba_threads, numba.config.NUMBA_NUM_THREADS))
    except (ImportError, ValueError):
        pass
