"""Analytical 3-D phantom for the demo data set: tissues, shapes, the slice renderer and scanner effects.

A body is an ordered list of layers (later layers cover earlier ones), each a tissue and a shape whose
axial cross-sections are ellipses. Volumes are rendered slice by slice straight onto the image grid with
a one-pixel soft edge (the partial-volume effect), so no high-resolution label volume is ever built and a
series costs a few hundred milliseconds. Coordinates are millimetres in the DICOM patient system (LPS:
+x towards the patient's left, +y posterior, +z head-wards); the anatomy itself is described in a
"template" frame that the caller scales and shifts per patient and per study.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

# Rendering contrasts: what a pixel means for each kind of series.
CONTRASTS: tuple[str, ...] = (
    "ct_native",    # HU, no contrast medium
    "ct_arterial",  # HU, late arterial phase (~35 s)
    "ct_venous",    # HU, portal-venous phase (~70 s)
    "mr_t1",        # T1-weighted spin echo / gradient echo, arbitrary units
    "mr_t1c",       # T1-weighted fat-saturated after gadolinium, arbitrary units
    "mr_t2",        # T2-weighted turbo spin echo, arbitrary units
    "mr_dwi",       # diffusion-weighted trace image b=800 s/mm², fat-saturated, arbitrary units
    "mr_adc",       # apparent diffusion coefficient, 1e-6 mm²/s
    "pet_suv",      # FDG standardised uptake value (body weight)
)
CT_CONTRASTS = frozenset({"ct_native", "ct_arterial", "ct_venous"})


@dataclass(frozen=True)
class Tissue:
    """Signal of one tissue in each contrast, plus how heterogeneous it looks."""

    ct_hu: float
    arterial_gain_hu: float  # enhancement over ct_hu in the arterial phase
    venous_gain_hu: float    # enhancement over ct_hu in the portal-venous phase
    t1: float
    t1c: float
    t2: float
    dwi: float
    adc: float
    suv: float
    texture_hu: float   # standard deviation of the smooth texture on CT (HU)
    texture_rel: float  # relative standard deviation of the texture on MR and PET

    def signal(self, contrast: str) -> float:
        return {
            "ct_native": self.ct_hu,
            "ct_arterial": self.ct_hu + self.arterial_gain_hu,
            "ct_venous": self.ct_hu + self.venous_gain_hu,
            "mr_t1": self.t1,
            "mr_t1c": self.t1c,
            "mr_t2": self.t2,
            "mr_dwi": self.dwi,
            "mr_adc": self.adc,
            "pet_suv": self.suv,
        }[contrast]


# Values are textbook orders of magnitude (HU, relative MR signal, ADC in 1e-6 mm²/s, FDG SUV), chosen so
# that a radiologist sees the expected contrasts: fat bright on T1 and dark after fat saturation, fluid
# bright on T2, tumour bright on DWI and dark on ADC, urine hot on FDG PET, HCC washing out, and so on.
TISSUES: dict[str, Tissue] = {
    #                     HU   art  ven    T1   T1c    T2  DWI   ADC   SUV  texHU texRel
    "air": Tissue(-1000, 0, 0, 0, 0, 0, 0, 0, 0.0, 4, 0.0),
    "gas": Tissue(-960, 0, 0, 0, 0, 0, 0, 0, 0.0, 15, 0.0),
    "lung": Tissue(-855, 0, 0, 14, 14, 10, 6, 0, 0.45, 22, 0.25),
    "fat": Tissue(-105, 0, 0, 900, 90, 720, 22, 160, 0.35, 7, 0.05),
    "muscle": Tissue(50, 8, 15, 420, 460, 230, 95, 1450, 0.75, 7, 0.06),
    "bone": Tissue(1150, 0, 0, 35, 35, 30, 6, 300, 0.6, 70, 0.1),
    "marrow": Tissue(230, 10, 20, 640, 210, 430, 80, 520, 1.3, 45, 0.12),
    "rib": Tissue(480, 0, 0, 300, 120, 220, 40, 500, 1.0, 60, 0.1),
    "disc": Tissue(85, 0, 5, 330, 340, 780, 150, 1800, 0.6, 8, 0.06),
    "cartilage": Tissue(160, 0, 10, 300, 300, 260, 60, 1200, 0.8, 25, 0.08),
    "blood": Tissue(45, 260, 140, 180, 620, 140, 30, 2200, 1.8, 4, 0.04),
    "myocardium": Tissue(50, 70, 80, 420, 620, 240, 150, 1300, 3.0, 6, 0.08),
    "liver": Tissue(58, 15, 52, 560, 800, 190, 260, 1100, 2.3, 6, 0.06),
    "spleen": Tissue(48, 60, 70, 420, 700, 460, 420, 800, 1.9, 6, 0.06),
    "kidney": Tissue(32, 130, 150, 400, 900, 600, 320, 2000, 3.5, 10, 0.08),
    "urine": Tissue(8, 0, 0, 110, 110, 1500, 80, 2800, 18.0, 3, 0.03),
    "bile": Tissue(10, 0, 0, 150, 150, 1400, 60, 2800, 0.4, 3, 0.03),
    "fluid": Tissue(12, 0, 3, 150, 160, 1300, 70, 2700, 1.0, 4, 0.04),
    "csf": Tissue(8, 0, 0, 150, 150, 1600, 30, 3000, 0.2, 3, 0.03),
    "brain": Tissue(34, 4, 6, 600, 600, 460, 320, 800, 8.0, 4, 0.05),
    "cord": Tissue(34, 4, 6, 520, 520, 420, 280, 900, 1.5, 4, 0.05),
    "vitreous": Tissue(10, 0, 0, 140, 140, 1500, 40, 2900, 0.3, 3, 0.03),
    "bowel": Tissue(35, 35, 30, 320, 560, 420, 260, 1500, 1.6, 10, 0.12),
    "bowel_content": Tissue(18, 0, 0, 220, 220, 1100, 90, 2400, 1.1, 12, 0.15),
    "faeces": Tissue(-260, 0, 0, 250, 250, 300, 60, 1200, 1.2, 150, 0.4),
    "pancreas": Tissue(42, 65, 55, 620, 700, 340, 300, 1300, 1.6, 9, 0.08),
    "thyroid": Tissue(105, 60, 40, 560, 660, 420, 210, 1400, 1.6, 9, 0.07),
    "salivary": Tissue(-15, 25, 30, 560, 520, 500, 220, 1300, 1.8, 20, 0.12),
    "gland": Tissue(32, 6, 14, 300, 360, 520, 210, 1600, 0.9, 28, 0.22),
    "prostate_pz": Tissue(38, 20, 30, 400, 600, 820, 200, 1750, 2.0, 7, 0.08),
    "prostate_tz": Tissue(42, 25, 35, 400, 650, 430, 250, 1300, 2.1, 12, 0.14),
    "uterus": Tissue(46, 40, 80, 420, 900, 620, 260, 1450, 2.4, 8, 0.08),
    "table_shell": Tissue(260, 0, 0, 0, 0, 0, 0, 0, 0.0, 10, 0.0),
    "table_core": Tissue(-880, 0, 0, 0, 0, 0, 0, 0, 0.0, 10, 0.0),
    # Lesions.
    "tumour": Tissue(40, 55, 62, 380, 860, 640, 720, 750, 9.0, 16, 0.16),
    # Prostate cancer is dark on T2 against the bright peripheral zone, unlike most tumours.
    "prostate_tumour": Tissue(40, 35, 40, 380, 700, 330, 820, 700, 4.0, 8, 0.1),
    "necrosis": Tissue(20, 0, 4, 250, 260, 1100, 150, 2300, 1.0, 8, 0.1),
    "hcc": Tissue(42, 72, 36, 360, 820, 600, 650, 800, 5.0, 12, 0.14),
    "liver_metastasis": Tissue(36, 14, 32, 350, 480, 700, 620, 900, 8.0, 12, 0.14),
    "sclerotic_metastasis": Tissue(760, 0, 0, 80, 90, 80, 40, 600, 8.0, 80, 0.15),
}


@dataclass(frozen=True)
class Ellipse:
    """One axial cross-section: centre, semi-axes (a along `angle`, b across it), angle in radians."""

    cx: float
    cy: float
    a: float
    b: float
    angle: float = 0.0


class Shape(ABC):
    """A 3-D region given by its axial cross-sections."""

    z_min: float
    z_max: float

    @abstractmethod
    def sections(self, z: float) -> Sequence[Ellipse]:
        """The cross-sections of the shape in the axial plane at height ``z`` (mm)."""

    def sections_at(self, zs: Sequence[float]) -> list[Sequence[Ellipse]]:
        """Cross-sections for many planes at once (a volume's slices)."""
        return [self.sections(z) if self.z_min <= z <= self.z_max else () for z in zs]


class Tube(Shape):
    """Elliptical cross-section interpolated linearly between key planes (z, cx, cy, a, b[, angle°])."""

    def __init__(self, keys: Sequence[Sequence[float]]) -> None:
        rows = sorted((tuple(k) + (0.0,) * (6 - len(k)) for k in keys), key=lambda k: k[0])
        table = np.asarray(rows, dtype=float)
        table[:, 5] = np.radians(table[:, 5])
        self._z = table[:, 0]
        self._params = table[:, 1:]
        self.z_min = float(self._z[0])
        self.z_max = float(self._z[-1])

    def sections(self, z: float) -> Sequence[Ellipse]:
        return self.sections_at([z])[0]

    def sections_at(self, zs: Sequence[float]) -> list[Sequence[Ellipse]]:
        z = np.asarray(zs, dtype=float)
        params = np.stack([np.interp(z, self._z, self._params[:, i]) for i in range(5)], axis=1)
        inside = (z >= self.z_min) & (z <= self.z_max) & (params[:, 2] > 0) & (params[:, 3] > 0)
        return [(Ellipse(*row),) if ok else () for row, ok in zip(params.tolist(), inside.tolist(), strict=True)]

    def centre_at(self, z: float) -> tuple[float, float, float, float] | None:
        found = self.sections(z)
        if not found:
            return None
        e = found[0]
        return e.cx, e.cy, e.a, e.b


class Ellipsoid(Shape):
    def __init__(self, cx: float, cy: float, cz: float, rx: float, ry: float, rz: float,
                 angle_deg: float = 0.0) -> None:
        self.cx, self.cy, self.cz = cx, cy, cz
        self.rx, self.ry, self.rz = rx, ry, rz
        self.angle = math.radians(angle_deg)
        self.z_min = cz - rz
        self.z_max = cz + rz

    def sections(self, z: float) -> Sequence[Ellipse]:
        t = (z - self.cz) / self.rz
        if abs(t) >= 1.0:
            return ()
        f = math.sqrt(1.0 - t * t)
        return (Ellipse(self.cx, self.cy, self.rx * f, self.ry * f, self.angle),)


class Cylinder(Shape):
    """A tapered oblique rod from p0 to p1 (vessels, bronchi, femoral necks)."""

    def __init__(self, p0: Sequence[float], p1: Sequence[float], r0: float, r1: float) -> None:
        if abs(p1[2] - p0[2]) < 1.0:
            raise ValueError("a Cylinder must run at least 1 mm along z")
        self.p0 = np.asarray(p0, dtype=float)
        self.p1 = np.asarray(p1, dtype=float)
        self.r0, self.r1 = r0, r1
        direction = self.p1 - self.p0
        # An oblique rod cuts the axial plane in an ellipse stretched along its in-plane direction.
        self.stretch = min(float(np.linalg.norm(direction)) / abs(float(direction[2])), 5.0)
        self.angle = math.atan2(float(direction[1]), float(direction[0]))
        self.z_min = float(min(p0[2], p1[2]))
        self.z_max = float(max(p0[2], p1[2]))

    def sections(self, z: float) -> Sequence[Ellipse]:
        if not self.z_min <= z <= self.z_max:
            return ()
        t = (z - self.p0[2]) / (self.p1[2] - self.p0[2])
        x, y = self.p0[:2] + t * (self.p1[:2] - self.p0[:2])
        r = self.r0 + t * (self.r1 - self.r0)
        return (Ellipse(float(x), float(y), r * self.stretch, r, self.angle),)


class Periodic(Shape):
    """Keep another shape only in bands along z (intervertebral discs, spinous processes)."""

    def __init__(self, inner: Shape, period: float, duty: float, phase: float = 0.0) -> None:
        self.inner, self.period, self.duty, self.phase = inner, period, duty, phase
        self.z_min, self.z_max = inner.z_min, inner.z_max

    def sections(self, z: float) -> Sequence[Ellipse]:
        if (z - self.phase) % self.period >= self.duty:
            return ()
        return self.inner.sections(z)


class RibCage(Shape):
    """Twelve pairs of ribs sloping down from the spine towards the front, cut obliquely by each slice."""

    FIRST_ANGLE = math.radians(20.0)  # rib angles are measured from the posterior midline

    def __init__(self, cage: Tube, first_rib_z: float, rib_pitch: float, drop: float,
                 outset: float = 5.0, length: float = 13.0, thickness: float = 4.0) -> None:
        self.cage, self.drop, self.outset = cage, drop, outset
        self.length, self.thickness = length, thickness
        self.ribs = []
        for index in range(12):
            end_angle = 150.0 if index < 7 else (125.0 if index < 10 else 95.0)
            self.ribs.append((first_rib_z - index * rib_pitch, math.radians(end_angle)))
        self.z_max = first_rib_z
        self.z_min = self.ribs[-1][0] - drop

    def sections(self, z: float) -> Sequence[Ellipse]:
        found: list[Ellipse] = []
        span = math.pi * 150.0 / 180.0 - self.FIRST_ANGLE
        for posterior_z, end_angle in self.ribs:
            theta = self.FIRST_ANGLE + (posterior_z - z) / self.drop * span
            if not self.FIRST_ANGLE <= theta <= end_angle:
                continue
            ring = self.cage.centre_at(z)
            if ring is None:
                continue
            cx, cy, a, b = ring
            a += self.outset
            b += self.outset
            for side in (-1.0, 1.0):
                x = cx + side * a * math.sin(theta)
                y = cy + b * math.cos(theta)
                tangent = math.atan2(-b * math.sin(theta), side * a * math.cos(theta))
                found.append(Ellipse(x, y, self.length, self.thickness, tangent))
        return found


@dataclass(frozen=True)
class Layer:
    """A tissue painted over what is already there, within `shape`.

    `key` names the layer so later layers can be clipped to it (`within`) and so lesions can be placed in
    it; `anterior_of` keeps only the part in front of a coronal plane (gas floats up in a supine patient);
    `overrides` replaces single contrast values (a lesion's own SUV).
    """

    tissue: str
    shape: Shape
    key: str | None = None
    within: str | None = None
    anterior_of: float | None = None
    overrides: tuple[tuple[str, float], ...] = ()

    def signal(self, contrast: str) -> float:
        for name, value in self.overrides:
            if name == contrast:
                return value
        return TISSUES[self.tissue].signal(contrast)


@dataclass(frozen=True)
class SliceGrid:
    """Where the pixels of a series are, expressed in the template frame of the anatomy."""

    x: np.ndarray  # template x of each column (ascending)
    y: np.ndarray  # template y of each row (ascending)
    z: np.ndarray  # template z of each slice
    edge: float    # width of the soft edge in template mm (one pixel)


@dataclass
class RenderedVolumes:
    """Noise-free signal per contrast plus the per-voxel texture amplitudes, all (slices, rows, columns)."""

    signal: dict[str, np.ndarray]
    texture_hu: np.ndarray
    texture_rel: np.ndarray


@dataclass(frozen=True)
class _Axis:
    """A uniform pixel axis: coordinate of index i is start + i * step."""

    start: float
    step: float
    count: int
    coords: np.ndarray  # float32

    @classmethod
    def of(cls, coords: np.ndarray) -> _Axis:
        step = float(coords[1] - coords[0]) if len(coords) > 1 else 1.0
        return cls(float(coords[0]), step, len(coords), coords.astype(np.float32))

    def index_range(self, low: float, high: float) -> tuple[int, int]:
        first = max(math.ceil((low - self.start) / self.step), 0)
        last = min(math.floor((high - self.start) / self.step) + 1, self.count)
        return first, last


def _rasterise(e: Ellipse, x_axis: _Axis, y_axis: _Axis, edge: float
               ) -> tuple[slice, slice, np.ndarray] | None:
    reach = max(e.a, e.b) + edge
    c0, c1 = x_axis.index_range(e.cx - reach, e.cx + reach)
    r0, r1 = y_axis.index_range(e.cy - reach, e.cy + reach)
    if c0 >= c1 or r0 >= r1:
        return None
    dx = (x_axis.coords[c0:c1] - np.float32(e.cx))[None, :]
    dy = (y_axis.coords[r0:r1] - np.float32(e.cy))[:, None]
    if e.angle:
        cos_a, sin_a = np.float32(math.cos(e.angle)), np.float32(math.sin(e.angle))
        u = dx * cos_a + dy * sin_a
        v = dy * cos_a - dx * sin_a
    else:
        u, v = dx, dy
    u = u * np.float32(1.0 / e.a)
    v = v * np.float32(1.0 / e.b)
    rho = np.sqrt(u * u + v * v)
    # (1 - rho) * min(a, b) approximates the distance to the outline, so the edge is about a pixel wide.
    membership = (np.float32(1.0) - rho) * np.float32(min(e.a, e.b) / edge) + np.float32(0.5)
    np.clip(membership, 0.0, 1.0, out=membership)
    return slice(r0, r1), slice(c0, c1), membership


def render(layers: Sequence[Layer], grid: SliceGrid, contrasts: Sequence[str]) -> RenderedVolumes:
    """Paint the layers slice by slice; returns noise-free volumes for every requested contrast.

    The texture amplitudes are composited as extra channels next to the contrasts, so each layer costs
    one array operation per slice; only the texture kind the contrasts need is computed.
    """
    nz, ny, nx = len(grid.z), len(grid.y), len(grid.x)
    x_axis, y_axis = _Axis.of(grid.x), _Axis.of(grid.y)
    wants_hu = any(c in CT_CONTRASTS for c in contrasts)
    wants_rel = any(c not in CT_CONTRASTS for c in contrasts)
    texture_kinds = (["hu"] if wants_hu else []) + (["rel"] if wants_rel else [])

    def channel_values(tissue: Tissue, layer: Layer | None) -> list[float]:
        signals = [layer.signal(c) if layer else tissue.signal(c) for c in contrasts]
        textures = [tissue.texture_hu if kind == "hu" else tissue.texture_rel for kind in texture_kinds]
        return signals + textures

    values = np.array([channel_values(TISSUES[layer.tissue], layer) for layer in layers], dtype=np.float32)
    background = np.array(channel_values(TISSUES["air"], None), dtype=np.float32)
    stack = np.empty((len(background), nz, ny, nx), dtype=np.float32)
    clipping_keys = {layer.within for layer in layers if layer.within is not None}
    z_list = grid.z.tolist()
    z_low, z_high = min(z_list), max(z_list)
    active = [(index, layer, layer.shape.sections_at(z_list)) for index, layer in enumerate(layers)
              if layer.shape.z_max >= z_low and layer.shape.z_min <= z_high]
    for iz in range(nz):
        plane = stack[:, iz]
        plane[:] = background[:, None, None]
        named: dict[str, np.ndarray] = {}
        for index, layer, sections in active:
            if not sections[iz] or (layer.within is not None and layer.within not in named):
                continue
            for ellipse in sections[iz]:
                found = _rasterise(ellipse, x_axis, y_axis, grid.edge)
                if found is None:
                    continue
                rows, cols, weight = found
                if layer.within is not None:
                    weight *= named[layer.within][rows, cols]
                if layer.anterior_of is not None:
                    front = np.clip((layer.anterior_of - y_axis.coords[rows]) / grid.edge + 0.5, 0.0, 1.0)
                    weight *= front[:, None]
                if layer.key in clipping_keys:
                    mask = named.setdefault(layer.key, np.zeros((ny, nx), dtype=np.float32))
                    np.maximum(mask[rows, cols], weight, out=mask[rows, cols])
                region = plane[:, rows, cols]
                change = values[index][:, None, None] - region
                change *= weight
                region += change
    k = len(contrasts)
    textures = {kind: stack[k + offset] for offset, kind in enumerate(texture_kinds)}
    unused = np.zeros((nz, ny, nx), dtype=np.float32) if len(textures) < 2 else None
    return RenderedVolumes({c: stack[i] for i, c in enumerate(contrasts)},
                           textures.get("hu", unused), textures.get("rel", unused))  # type: ignore[arg-type]


BANK_SHAPE = (64, 256, 256)


class NoiseBank:
    """Pre-computed unit noise fields from which each series draws a randomly shifted, flipped window.

    Drawing fresh 3-D Gaussian noise (and filtering it) for every series costs more than rendering the
    anatomy; windows into a few fixed fields give independent-looking noise at the cost of a copy.
    """

    def __init__(self, seed: int = 0x5EED) -> None:
        rng = np.random.default_rng(seed)
        self.white = rng.standard_normal(BANK_SHAPE, dtype=np.float32)
        # CT noise of a soft kernel is correlated over about a pixel.
        # Filtering wraps around so that windows which wrap around the bank show no seam.
        soft = ndimage.gaussian_filter(rng.standard_normal(BANK_SHAPE, dtype=np.float32), sigma=(0, 0.7, 0.7),
                                       mode="wrap")
        self.ct_soft = soft / soft.std()
        # Tissue texture: blobs of a few pixels in plane, loosely correlated from one slice to the next.
        texture = ndimage.gaussian_filter(rng.standard_normal(BANK_SHAPE, dtype=np.float32), sigma=(0.6, 1.8, 1.8),
                                          mode="wrap")
        self.texture = texture / texture.std()

    def draw(self, field: np.ndarray, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        if any(n > m for n, m in zip(shape, field.shape, strict=True)):
            raise ValueError(f"noise bank {field.shape} is smaller than the volume {shape}")
        indices = []
        for n, m in zip(shape, field.shape, strict=True):
            start, step = int(rng.integers(m)), (1 if rng.random() < 0.5 else -1)
            indices.append((start + step * np.arange(n)) % m)
        window = field[np.ix_(*indices)]
        return -window if rng.random() < 0.5 else window


@lru_cache(maxsize=1)
def noise_bank() -> NoiseBank:
    return NoiseBank()


def ct_hounsfield(clean_hu: np.ndarray, texture: np.ndarray, texture_hu: np.ndarray,
                  rng: np.random.Generator, noise_hu: float, sharp: bool) -> np.ndarray:
    """Add tissue texture, the reconstruction kernel's edge response and quantum noise; returns HU."""
    hu = clean_hu + texture_hu * texture
    bank = noise_bank()
    if sharp:
        # A sharp (lung/bone) kernel overshoots at edges and passes more high-frequency noise.
        hu += 0.9 * (hu - ndimage.gaussian_filter(hu, sigma=(0, 1.2, 1.2)))
        hu += noise_hu * bank.draw(bank.white, rng, hu.shape)
    else:
        hu += noise_hu * bank.draw(bank.ct_soft, rng, hu.shape)
    return hu


def coil_shading(rng: np.random.Generator, shape: tuple[int, int, int], strength: float = 0.15) -> np.ndarray:
    """Smooth receive-coil sensitivity: a random low-order polynomial around 1 (brighter near the coils)."""
    nz, ny, nx = shape
    z = np.linspace(-1, 1, nz, dtype=np.float32)[:, None, None]
    y = np.linspace(-1, 1, ny, dtype=np.float32)[None, :, None]
    x = np.linspace(-1, 1, nx, dtype=np.float32)[None, None, :]
    c = rng.uniform(-1, 1, size=6).astype(np.float32) * np.float32(strength)
    # Anterior and posterior coil arrays: signal rises towards the front and back of the body.
    return (1.0 + c[0] * x + c[1] * y + c[2] * z + abs(c[3]) * y * y + c[4] * x * y - abs(c[5]) * z * z
            ).astype(np.float32)


def mr_signal(clean: np.ndarray, texture: np.ndarray, texture_rel: np.ndarray,
              rng: np.random.Generator, gain: float, noise_sd: float, magnitude: bool = True) -> np.ndarray:
    """Texture, receive-coil shading and Rician noise of a magnitude image, or noise of a parametric map."""
    signal = clean * (1.0 + texture_rel * texture)
    bank = noise_bank()
    if magnitude:
        signal *= coil_shading(rng, clean.shape) * np.float32(gain)  # type: ignore[arg-type]
        real = signal + noise_sd * bank.draw(bank.white, rng, signal.shape)
        imaginary = noise_sd * bank.draw(bank.white, rng, signal.shape)
        return np.sqrt(real * real + imaginary * imaginary)
    # A parametric map (ADC) is a ratio, free of coil shading, and zero outside the body where the fit
    # has no signal to work with.
    noisy = signal + noise_sd * bank.draw(bank.white, rng, signal.shape)
    return np.where(clean > 1.0, np.maximum(noisy, 0.0), 0.0)


def pet_suv(clean_suv: np.ndarray, texture: np.ndarray, texture_rel: np.ndarray,
            rng: np.random.Generator, spacing_mm: tuple[float, float, float],
            resolution_fwhm_mm: float = 6.5, noise_level: float = 0.16) -> np.ndarray:
    """Limited resolution (partial volume of small lesions) and count-dependent, blobby noise; SUV."""
    suv = clean_suv * (1.0 + texture_rel * texture)
    sigma = tuple(resolution_fwhm_mm / 2.3548 / s for s in spacing_mm)
    suv = ndimage.gaussian_filter(suv, sigma=sigma)
    bank = noise_bank()
    noise = ndimage.gaussian_filter(bank.draw(bank.white, rng, suv.shape), sigma=0.8)
    noise /= max(float(noise.std()), 1e-6)
    suv += noise_level * np.sqrt(np.maximum(suv, 0.0)) * noise
    return np.maximum(suv, 0.0)


def window_from_percentiles(values: np.ndarray, low: float = 1.0, high: float = 99.5
                            ) -> tuple[float, float]:
    """A display window (centre, width) that shows the body without clipping most of it."""
    values = values[:, ::2, ::2]  # a quarter of the pixels gives the same percentiles, four times faster
    body = values[values > np.percentile(values, 20)]
    if body.size == 0:
        body = values.ravel()
    lo, hi = np.percentile(body, (low, high))
    width = max(float(hi - lo), 1.0)
    return float(lo + width / 2), width
