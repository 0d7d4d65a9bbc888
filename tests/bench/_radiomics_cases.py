"""Synthetic CT cases and the per-lesion extraction loops of the radiomics benchmark (``bench_radiomics.py``).

The extraction loops are used both in-process and as whole processes, so that both timings cover exactly the
same work. As a script this module is the whole-process worker; it imports only the tool it runs:

    python tests/bench/_radiomics_cases.py {gateway,pyradiomics} VOLUME.npy LABELS.npy --spacing Z Y X \\
        --bin-width 25 [--new-spacing Z Y X] --out RESULTS.json

It loads the volume and the label map, extracts every lesion, writes ``{label: {feature: value}}`` as JSON to
``--out`` and prints one JSON line to stdout: its stage times (import, load, extract, write) and the wall-clock
times (``time.time()``) at which it started its own work and finished writing, so that the parent can tell
interpreter start-up (with NumPy and SciPy) and interpreter exit apart.

pyradiomics gets each lesion cropped to its bounding box plus the small margin its fast path needs (one
``find_objects`` pass over the label map) and only the binary mask of the lesion, so neighbouring lesions in
the box do not count. The gateway gets the whole label map in one ``extract_label_map_features`` call, which
does the same internally (each lesion's box plus the margin its IBSI local intensity peak needs: the 1 cm³
sphere around ROI voxels reaches outside the ROI).

After writing its output the worker freezes the garbage collector (see ``run_worker``), for both tools.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# scipy.ndimage is imported inside the functions that use it: the gateway's worker process never needs it,
# and importing it would add about a tenth of a second to the gateway's measured start-up.

Triple = tuple[float, float, float]
LesionFeatures = dict[int, dict[str, float]]

PYRADIOMICS_FEATURE_CLASSES = ("firstorder", "shape", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
PYRADIOMICS_MARGIN_VOXELS = 2
AIR_HU = -1000


# --------------------------------------------------------------------------------------------------------------
# Synthetic CT volume and lesions


@dataclass(frozen=True, slots=True)
class Lesion:
    label: int
    centre: tuple[int, int, int]  # (z, y, x) voxel indices
    radius: int  # voxels (a sphere in index space)


@dataclass(frozen=True, slots=True)
class BodyGeometry:
    shape: tuple[int, int, int]
    centre_y: float
    centre_x: float
    semi_axis_y: float
    semi_axis_x: float

    def holds_sphere(self, centre: Sequence[int], radius: int) -> bool:
        """Whether a sphere of ``radius`` voxels lies inside the volume and (in-plane) well inside the body."""
        _, y, x = centre
        if not all(radius <= c < n - radius for c, n in zip(centre, self.shape, strict=True)):
            return False
        shrink_y = max(self.semi_axis_y - radius - 8, 1.0)
        shrink_x = max(self.semi_axis_x - radius - 8, 1.0)
        return ((y - self.centre_y) / shrink_y) ** 2 + ((x - self.centre_x) / shrink_x) ** 2 <= 1.0


def body_geometry(shape: tuple[int, int, int]) -> BodyGeometry:
    _, n_y, n_x = shape
    return BodyGeometry(shape=shape, centre_y=n_y * 0.5, centre_x=n_x * 0.5, semi_axis_y=n_y * 0.32,
                        semi_axis_x=n_x * 0.46)


def ct_body_volume(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """An int16 HU volume shaped like a chest CT: air, a soft-tissue ellipse with a fat rim, two lungs, a spine.

    Every tissue has Gaussian noise (sd 12–40 HU), so discretised textures are not trivially uniform.
    """
    n_z, n_y, n_x = shape
    body = body_geometry(shape)
    y, x = np.ogrid[0:n_y, 0:n_x]
    radial = ((y - body.centre_y) / body.semi_axis_y) ** 2 + ((x - body.centre_x) / body.semi_axis_x) ** 2
    in_body = radial <= 1.0
    in_soft_tissue = radial <= 0.82  # the rest of the body is a subcutaneous fat rim

    volume = np.empty(shape, dtype=np.float32)
    volume[...] = AIR_HU
    slice_template = np.where(in_soft_tissue, 40.0, -100.0).astype(np.float32)
    slice_template[~in_body] = AIR_HU
    volume[:] = slice_template

    lung_y, lung_semi_y, lung_semi_x, lung_semi_z = body.centre_y - 0.05 * n_y, 0.19 * n_y, 0.15 * n_x, 0.45 * n_z
    for side in (-1, 1):
        lung_x = body.centre_x + side * 0.21 * n_x
        lung_section = ((y - lung_y) / lung_semi_y) ** 2 + ((x - lung_x) / lung_semi_x) ** 2
        for z in range(n_z):
            reach = 1.0 - ((z - n_z * 0.5) / lung_semi_z) ** 2  # ellipsoid: the cross-section shrinks away from z/2
            if reach > 0:
                volume[z][lung_section <= reach] = -850.0
    spine_y, spine_x, spine_radius = body.centre_y + 0.22 * n_y, body.centre_x, 0.05 * n_x
    spine_distance = np.hypot(y - spine_y, x - spine_x)
    volume[:, spine_distance <= spine_radius] = 700.0  # cortical bone
    volume[:, spine_distance <= 0.6 * spine_radius] = 250.0  # marrow

    noise = rng.standard_normal(shape, dtype=np.float32)
    noise_sd = np.where(volume <= -800, 40.0, np.where(volume >= 200, 30.0, 12.0)).astype(np.float32)
    noise *= noise_sd
    volume += noise
    volume[:, ~in_body] = AIR_HU + 5.0 * noise[:, ~in_body] / noise_sd[:, ~in_body]
    return np.rint(volume).astype(np.int16)


def place_lesions(shape: tuple[int, int, int], radii: Sequence[int], rng: np.random.Generator,
                  first_label: int = 1) -> list[Lesion]:
    """Non-overlapping spheres (at least 2 voxels apart) inside the body; the largest are placed first."""
    body = body_geometry(shape)
    placed: list[Lesion] = []
    order = sorted(range(len(radii)), key=lambda index: -radii[index])
    by_index: dict[int, Lesion] = {}
    for index in order:
        radius = int(radii[index])
        for _ in range(100_000):
            centre = tuple(int(rng.integers(radius, n - radius)) for n in shape)
            if not body.holds_sphere(centre, radius):
                continue
            if all(math.dist(centre, other.centre) >= radius + other.radius + 3 for other in placed):
                lesion = Lesion(label=first_label + index, centre=centre, radius=radius)  # type: ignore[arg-type]
                placed.append(lesion)
                by_index[index] = lesion
                break
        else:
            raise RuntimeError(f"no room for a lesion of radius {radius} voxels in a volume of shape {shape}")
    return [by_index[index] for index in range(len(radii))]


def paint_lesions(volume: np.ndarray, lesions: Sequence[Lesion], rng: np.random.Generator) -> np.ndarray:
    """Write textured lesions into ``volume`` (in place) and return their uint8 label map.

    Each lesion is 20–80 HU with smooth texture and noise, clipped below at a multiple of 25 HU that one voxel
    takes exactly: pyradiomics starts its fixed-width bins at a multiple of the bin width below the ROI
    minimum, IBSI at the ROI minimum itself, so this makes both discretisations (and texture features) equal.
    """
    from scipy import ndimage

    if len(lesions) > 255:
        raise ValueError("at most 255 lesions fit a uint8 label map")
    labels = np.zeros(volume.shape, dtype=np.uint8)
    for lesion in lesions:
        radius = lesion.radius
        box = tuple(slice(c - radius, c + radius + 1) for c in lesion.centre)
        offsets = np.ogrid[-radius:radius + 1, -radius:radius + 1, -radius:radius + 1]
        sphere = sum(offset * offset for offset in offsets) <= radius * radius
        base = rng.uniform(20.0, 80.0)
        texture = ndimage.gaussian_filter(rng.standard_normal(sphere.shape), sigma=1.5)
        texture *= 35.0 / max(float(texture.std()), 1e-6)
        values = base + texture + rng.normal(0.0, 15.0, sphere.shape)
        floor = 25.0 * math.floor((base - 50.0) / 25.0)
        values = np.maximum(np.rint(values), floor)
        values[radius, radius, radius] = floor
        volume[box][sphere] = values[sphere].astype(volume.dtype)
        labels[box][sphere] = lesion.label
    return labels


# --------------------------------------------------------------------------------------------------------------
# Per-lesion crops


def lesion_crops(volume: np.ndarray, labels: np.ndarray, margin: Sequence[int]
                 ) -> Iterator[tuple[int, np.ndarray, np.ndarray, tuple[int, int, int]]]:
    """(label, image view, uint8 0/1 mask, crop offset) per lesion: bounding box plus ``margin`` voxels."""
    from scipy import ndimage

    for index, box in enumerate(ndimage.find_objects(labels)):
        if box is None:
            continue
        label = index + 1
        crop = tuple(slice(max(s.start - m, 0), min(s.stop + m, n))
                     for s, m, n in zip(box, margin, labels.shape, strict=True))
        mask = (labels[crop] == label).view(np.uint8)
        yield label, volume[crop], mask, (crop[0].start, crop[1].start, crop[2].start)


# --------------------------------------------------------------------------------------------------------------
# Extraction loops


@dataclass(frozen=True, slots=True)
class Settings:
    spacing: Triple  # (z, y, x) mm
    bin_width: float
    new_spacing: Triple | None = None  # (z, y, x) mm, or no resampling


def gateway_extract_all(volume: np.ndarray, labels: np.ndarray, settings: Settings) -> LesionFeatures:
    """All default IBSI 1 families ("3D averaged" and "3D merged" textures) of every lesion, with the gateway's
    label-map API: one call for the whole label map (it crops each lesion with the margin the local intensity
    peak needs, and batches the lesions through its Numba kernels)."""
    from gateway.compute.features.label_map import extract_label_map_features

    table = extract_label_map_features(volume, labels, settings.spacing, bin_width=settings.bin_width,
                                       new_spacing=settings.new_spacing,
                                       round_intensities=settings.new_spacing is not None)
    return table.as_dicts()


def pyradiomics_extractor(settings: Settings) -> Any:
    """pyradiomics the fast way: no additional info, 3-D, the default feature classes, same bin width."""
    import logging

    from radiomics.featureextractor import RadiomicsFeatureExtractor

    logging.getLogger("radiomics").setLevel(logging.ERROR)
    options: dict[str, Any] = {"binWidth": settings.bin_width, "additionalInfo": False, "force2D": False}
    if settings.new_spacing is not None:
        z, y, x = settings.new_spacing
        options.update(resampledPixelSpacing=[x, y, z], interpolator="sitkLinear")
    extractor = RadiomicsFeatureExtractor(**options)
    extractor.disableAllFeatures()
    for feature_class in PYRADIOMICS_FEATURE_CLASSES:
        extractor.enableFeatureClassByName(feature_class)
    return extractor


def pyradiomics_extract_all(volume: np.ndarray, labels: np.ndarray, settings: Settings) -> LesionFeatures:
    import SimpleITK as sitk

    extractor = pyradiomics_extractor(settings)
    spacing_xyz = tuple(reversed(settings.spacing))
    results: LesionFeatures = {}
    for label, image, mask, offset in lesion_crops(volume, labels, (PYRADIOMICS_MARGIN_VOXELS,) * 3):
        origin_xyz = tuple(float(o * s) for o, s in zip(reversed(offset), spacing_xyz, strict=True))
        image_node = sitk.GetImageFromArray(np.ascontiguousarray(image))
        mask_node = sitk.GetImageFromArray(mask)
        for node in (image_node, mask_node):
            node.SetSpacing(spacing_xyz)
            node.SetOrigin(origin_xyz)
        values = extractor.execute(image_node, mask_node, label=1)
        results[label] = {name: float(np.real(value)) for name, value in values.items()}
    return results


EXTRACTORS: dict[str, Callable[[np.ndarray, np.ndarray, Settings], LesionFeatures]] = {
    "gateway": gateway_extract_all,
    "pyradiomics": pyradiomics_extract_all,
}


# --------------------------------------------------------------------------------------------------------------
# Whole-process worker


def run_worker(argv: Sequence[str] | None = None) -> int:
    started_at = time.time()
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description="Extract every lesion of a label map with one tool.")
    parser.add_argument("tool", choices=sorted(EXTRACTORS))
    parser.add_argument("volume", type=Path)
    parser.add_argument("labels", type=Path)
    parser.add_argument("--spacing", type=float, nargs=3, required=True, metavar=("Z", "Y", "X"))
    parser.add_argument("--bin-width", type=float, required=True)
    parser.add_argument("--new-spacing", type=float, nargs=3, metavar=("Z", "Y", "X"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    settings = Settings(spacing=tuple(args.spacing), bin_width=args.bin_width,  # type: ignore[arg-type]
                        new_spacing=tuple(args.new_spacing) if args.new_spacing else None)  # type: ignore[arg-type]

    if args.tool == "gateway":
        import gateway.compute.features.label_map  # noqa: F401
    else:
        import radiomics.featureextractor  # noqa: F401
    imported = time.perf_counter()
    volume = np.load(args.volume)
    labels = np.load(args.labels)
    loaded = time.perf_counter()
    results = EXTRACTORS[args.tool](volume, labels, settings)
    extracted = time.perf_counter()
    args.out.write_text(json.dumps({str(label): values for label, values in results.items()}), encoding="utf-8")
    written = time.perf_counter()
    stages = {"import": imported - started, "load": loaded - imported, "extract": extracted - loaded,
              "write": written - extracted}
    print(json.dumps({"stages": stages, "started_at": started_at, "finished_at": time.time()}), flush=True)
    # Interpreter finalisation garbage-collects every object still alive; after Numba's compiler has been
    # loaded that is hundreds of thousands and takes ~0.25 s, for memory the OS reclaims anyway. The output is
    # written and closed, so freezing the collector (moving all objects out of its reach) loses nothing; done
    # for both tools alike.
    gc.freeze()
    return 0


if __name__ == "__main__":
    sys.exit(run_worker())
