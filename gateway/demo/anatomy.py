"""The template body of the demo phantom, from the skull to the thighs.

Template coordinates are millimetres for a 1.72 m adult with the origin at the jugular notch (LPS: +x to
the patient's left, +y posterior, +z head-wards). A patient is the template scaled per axis plus a
subcutaneous fat layer of their own; a study shifts it by the table position. Numbers are rough anatomy
on purpose: enough that every organ sits where a radiologist looks for it, at a plausible size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from gateway.demo.model import DemoAnatomy
from gateway.demo.phantom import Cylinder, Ellipsoid, Layer, Periodic, RibCage, Shape, Tube

Key = tuple[float, ...]

# Outer surface of the muscles (the skin is this plus the patient's fat): z, cx, cy, a, b.
WALL_KEYS: tuple[Key, ...] = (
    (320, 0, 5, 10, 12), (310, 0, 5, 45, 56), (290, 0, 5, 62, 78), (255, 0, 5, 72, 90),
    (215, 0, 4, 74, 93), (175, 0, 2, 70, 92), (150, 0, 2, 64, 88), (125, 0, 4, 58, 74),
    (100, 0, 12, 54, 62), (70, 0, 16, 54, 56), (35, 0, 16, 58, 56), (15, 0, 14, 100, 66),
    (-5, 0, 8, 145, 88), (-60, 0, 5, 150, 95), (-160, 0, 5, 148, 97), (-250, 0, 6, 145, 99),
    (-330, 0, 8, 142, 99), (-410, 0, 8, 144, 97), (-480, 0, 10, 152, 94), (-560, 0, 12, 158, 92),
    (-640, 0, 12, 160, 88), (-700, 0, 12, 158, 86), (-780, 0, 12, 156, 84),
)
# How much of the patient's trunk fat covers each level (head and neck carry little, the belly more).
FAT_PROFILE: tuple[tuple[float, float], ...] = (
    (-800, 1.0), (-560, 1.15), (-420, 1.35), (-250, 1.0), (5, 1.0), (40, 0.3), (400, 0.15),
)
# Thoracic, abdominal and pelvic cavity inside the muscle wall.
CAVITY_KEYS: tuple[Key, ...] = (
    (42, 0, 12, 42, 22), (25, 0, 8, 72, 38), (8, 0, 2, 95, 52), (-5, 0, -2, 110, 62),
    (-40, 0, -4, 128, 72), (-120, 0, -6, 132, 75), (-200, 0, -5, 132, 78), (-270, 0, -3, 129, 80),
    (-340, 0, -2, 127, 80), (-420, 0, -5, 129, 78), (-490, 0, -8, 134, 72), (-560, 0, -8, 110, 62),
    (-630, 0, -5, 78, 52), (-675, 0, 0, 45, 35), (-690, 0, 5, 15, 12),
)
RIGHT_LUNG_KEYS: tuple[Key, ...] = (
    (38, -33, 12, 6, 6), (28, -42, 12, 22, 24), (5, -55, 8, 42, 48), (-40, -66, 4, 54, 64),
    (-100, -70, 2, 58, 72), (-160, -70, 4, 60, 74), (-200, -72, 10, 56, 66), (-235, -76, 30, 42, 42),
    (-262, -80, 45, 18, 18),
)
LEFT_LUNG_KEYS: tuple[Key, ...] = (
    (38, 33, 12, 6, 6), (28, 42, 12, 22, 24), (5, 55, 8, 42, 48), (-40, 66, 4, 52, 64),
    (-100, 70, 2, 56, 72), (-160, 70, 4, 58, 74), (-205, 72, 10, 56, 66), (-245, 76, 30, 42, 42),
    (-272, 80, 45, 18, 18),
)
LIVER_KEYS: tuple[Key, ...] = (
    (-168, -48, 5, 15, 15), (-180, -45, 2, 62, 55), (-205, -36, 0, 100, 72), (-245, -30, 2, 110, 76),
    (-285, -42, 6, 95, 70), (-325, -62, 10, 62, 56), (-365, -78, 10, 38, 40), (-388, -82, 10, 12, 14),
)
VERTEBRA_KEYS: tuple[Key, ...] = (
    (135, 0, 18, 8, 8), (100, 0, 26, 9, 8), (40, 0, 30, 10, 9), (5, 0, 36, 12, 11),
    (-30, 0, 46, 14, 13), (-150, 0, 52, 17, 16), (-270, 0, 48, 20, 17), (-350, 0, 43, 22, 18),
    (-420, 0, 38, 24, 19), (-470, 0, 40, 25, 19),
)
SPINE_BOTTOM_Z = -470.0

# Where in the template the scanned ranges of the usual examinations lie (top, bottom).
REGIONS: dict[str, tuple[float, float]] = {
    "neck": (165.0, -30.0),
    "headneck": (205.0, -115.0),
    "chest": (40.0, -270.0),
    "chestabdomen": (40.0, -300.0),
    "breast": (-20.0, -200.0),
    "abdomen": (-160.0, -480.0),
    "abdomenpelvis": (-330.0, -700.0),
    "pelvis": (-520.0, -690.0),
    "prostate": (-615.0, -695.0),
    "liver": (-160.0, -400.0),
}


def _mirror(keys: Sequence[Key]) -> list[Key]:
    """The same structure on the other side: x and in-plane angles change sign."""
    mirrored = []
    for key in keys:
        values = list(key) + [0.0] * (6 - len(key))
        values[1] = -values[1]
        values[5] = -values[5]
        mirrored.append(tuple(values))
    return mirrored


def _inset(keys: Sequence[Key], margin: float) -> list[Key]:
    result = []
    for key in keys:
        values = list(key)
        values[3] = max(values[3] - margin, 0.5)
        values[4] = max(values[4] - margin, 0.5)
        result.append(tuple(values))
    return result


def fat_factor(z: float) -> float:
    zs, factors = zip(*FAT_PROFILE, strict=True)
    return float(np.interp(z, zs, factors))


def _body_keys(fat_mm: float) -> list[Key]:
    return [(z, cx, cy, a + fat_mm * fat_factor(z), b + fat_mm * fat_factor(z)) for z, cx, cy, a, b in WALL_KEYS]


def posterior_skin_y(anatomy: DemoAnatomy) -> float:
    """Template y of the back of the trunk: the table top lies just beyond it."""
    fat = anatomy.fat_mm / anatomy.depth_scale
    return max(cy + b + fat * fat_factor(z) for z, _, cy, _, b in WALL_KEYS if z < 0)


def _bone(layers: list[Layer], outer: Shape, inner: Shape) -> None:
    """Cortical bone with marrow inside: bright rim, fatty centre on T1."""
    layers.append(Layer("bone", outer))
    layers.append(Layer("marrow", inner))


def _bone_tube(layers: list[Layer], keys: Sequence[Key], cortex: float = 2.5) -> None:
    _bone(layers, Tube(keys), Tube(_inset(keys, cortex)))


def _bone_ellipsoid(layers: list[Layer], cx: float, cy: float, cz: float, rx: float, ry: float,
                    rz: float, angle: float = 0.0, cortex: float = 2.5) -> None:
    _bone(layers, Ellipsoid(cx, cy, cz, rx, ry, rz, angle),
          Ellipsoid(cx, cy, cz, rx - cortex, ry - cortex, rz - cortex, angle))


def _random_point_in(shape: Tube, rng: np.random.Generator, z_low: float, z_high: float,
                     depth: tuple[float, float]) -> tuple[float, float, float]:
    z = float(rng.uniform(z_low, z_high))
    section = shape.sections(z)[0]
    rho = float(rng.uniform(*depth))
    phi = float(rng.uniform(0, 2 * math.pi))
    return section.cx + section.a * rho * math.cos(phi), section.cy + section.b * rho * math.sin(phi), z


def _lung_vessels(lung: Tube, hilum: tuple[float, float, float], key: str,
                  rng: np.random.Generator) -> list[Layer]:
    """A three-generation vessel tree from the hilum, so scrolling shows branches that taper and fork."""
    vessels: list[Layer] = []

    def rod(start: tuple[float, ...], end: tuple[float, float, float], r0: float, r1: float) -> None:
        if abs(end[2] - start[2]) < 2.0:
            end = (end[0], end[1], end[2] - 4.0)
        vessels.append(Layer("blood", Cylinder(start, end, r0, r1), within=key))

    def along(start: tuple[float, ...], end: tuple[float, ...], low: float, high: float) -> tuple[float, ...]:
        t = float(rng.uniform(low, high))
        return tuple(s + t * (e - s) for s, e in zip(start, end, strict=True))

    def near(point: tuple[float, ...], spread: float) -> tuple[float, float, float]:
        x, y, z = (p + float(rng.normal(0, spread)) for p in point)
        return x, y, min(max(z, lung.z_min + 5), lung.z_max - 5)

    for _ in range(14):
        start = tuple(h + float(rng.normal(0, 4)) for h in hilum)
        end = _random_point_in(lung, rng, lung.z_min + 15, lung.z_max - 10, (0.4, 0.75))
        radius = float(rng.uniform(3.5, 5.0))
        rod(start, end, radius, radius * 0.55)
        for _ in range(3):
            fork = along(start, end, 0.3, 0.9)
            branch_end = near(end, 35.0)
            rod(fork, branch_end, radius * 0.5, 1.0)
            for _ in range(2):
                twig_start = along(fork, branch_end, 0.4, 0.9)
                rod(twig_start, near(branch_end, 20.0), 1.4, 0.6)
    return vessels


@lru_cache(maxsize=16)
def build_body(anatomy: DemoAnatomy) -> tuple[Layer, ...]:
    """All layers of one patient's body in template coordinates, painted in this order."""
    rng = np.random.default_rng([0xB0D7, anatomy.seed])
    female = anatomy.sex == "F"
    fat = anatomy.fat_mm / anatomy.width_scale
    layers: list[Layer] = []
    add = layers.append

    # The CT couch under the patient: a carbon-fibre shell around foam, with no MR or PET signal.
    table_y = posterior_skin_y(anatomy) + 8.0
    add(Layer("table_shell", Tube([(-1200, 0, table_y, 235, 8), (600, 0, table_y, 235, 8)])))
    add(Layer("table_core", Tube([(-1200, 0, table_y, 230, 5), (600, 0, table_y, 230, 5)])))

    add(Layer("fat", Tube(_body_keys(fat)), key="body"))
    if female and anatomy.breast_scale > 0:
        s = anatomy.breast_scale
        for side, key in ((1, "breast_left"), (-1, "breast_right")):
            add(Layer("fat", Ellipsoid(side * 80, -96, -115, 62 * s, 46 * s, 58 * s)))
            add(Layer("gland", Ellipsoid(side * 82, -92 - 20 * s, -112, 40 * s, 26 * s, 36 * s), key=key))
    add(Layer("muscle", Tube(WALL_KEYS), key="wall"))
    add(Layer("fat", Tube(CAVITY_KEYS), key="cavity", within="wall"))
    # Paraspinal muscles fill the back of the cavity beside the spine (the kidneys lie in front of them).
    paraspinal = [(20, 24, 62, 16, 12), (-20, 30, 78, 22, 14), (-150, 32, 84, 24, 15), (-280, 34, 80, 28, 18),
                  (-380, 36, 76, 30, 22), (-460, 38, 78, 30, 22), (-520, 32, 88, 22, 12), (-540, 28, 92, 12, 8)]
    add(Layer("muscle", Tube(paraspinal)))
    add(Layer("muscle", Tube(_mirror(paraspinal))))

    _head_and_neck(layers)
    _chest(layers, rng)
    _abdomen(layers, anatomy, rng, female)
    _skeleton(layers)
    return tuple(layers)


def _head_and_neck(layers: list[Layer]) -> None:
    add = layers.append
    # Head: skull, a thin rim of CSF around the brain, ventricles, orbits and sinuses.
    _bone_ellipsoid(layers, 0, 4, 228, 72, 90, 88, cortex=3.5)
    add(Layer("csf", Ellipsoid(0, 4, 229, 66, 84, 82)))
    add(Layer("brain", Ellipsoid(0, 4, 229, 64, 82, 80)))
    for side in (-1, 1):
        add(Layer("csf", Ellipsoid(side * 8, 0, 242, 5, 24, 14)))
        add(Layer("fat", Ellipsoid(side * 32, -62, 180, 16, 20, 15)))
        add(Layer("vitreous", Ellipsoid(side * 32, -70, 180, 12, 12, 12)))
        add(Layer("gas", Ellipsoid(side * 27, -38, 156, 14, 18, 16)))
    add(Layer("gas", Tube([(140, 0, -52, 7, 18), (185, 0, -55, 8, 22)])))
    # Neck: fat planes between the muscles make the anatomy readable on CT.
    add(Layer("fat", Tube([(15, 0, 4, 34, 28), (30, 0, 4, 42, 34), (95, 0, 6, 40, 34), (110, 0, 4, 30, 26)])))
    for side in (-1, 1):
        sternocleidomastoid = [(20, 36, -20, 12, 7, -40), (90, 44, 4, 9, 14, -20)]
        add(Layer("muscle", Tube(sternocleidomastoid if side > 0 else _mirror(sternocleidomastoid))))
        add(Layer("fat", Tube([(-10, side * 28, 4, 12, 10), (110, side * 28, 4, 11, 10)])))
        add(Layer("blood", Tube([(-20, side * 22, 6, 4, 4), (125, side * 22, 6, 4, 4)])))
        add(Layer("blood", Tube([(-20, side * 33, 2, 7, 6), (120, side * 33, 2, 7, 6)])))
        add(Layer("salivary", Ellipsoid(side * 32, -20, 100, 12, 11, 10)))
        add(Layer("salivary", Ellipsoid(side * 47, 14, 132, 13, 19, 22)))
        add(Layer("fat", Ellipsoid(side * 25, 2, 115, 7, 10, 15)))
        add(Layer("thyroid", Ellipsoid(side * 17, -8, 38, 9, 9, 18)))
    add(Layer("muscle", Tube([(10, 0, 50, 40, 20), (120, 0, 52, 44, 22)])))
    add(Layer("muscle", Tube([(10, 0, 20, 14, 6), (120, 0, 18, 14, 6)])))
    add(Layer("thyroid", Ellipsoid(0, -19, 33, 12, 4, 6)))
    mandible = [(100, 0, -25, 50, 46), (130, 0, -22, 54, 50)]
    add(Layer("bone", Tube(mandible), anterior_of=8.0))
    add(Layer("muscle", Tube(_inset(mandible, 5)), anterior_of=8.0))
    larynx = [(50, 0, -14, 18, 15), (85, 0, -16, 20, 17)]
    add(Layer("cartilage", Tube(larynx)))
    add(Layer("muscle", Tube(_inset(larynx, 3)), key="larynx"))
    add(Layer("bowel", Tube([(95, 0, 12, 6, 5), (40, 2, 10, 7, 6), (-40, 4, 24, 7, 6), (-150, 8, 34, 8, 7),
                             (-230, 16, 28, 8, 7), (-265, 30, 12, 8, 7)])))
    airway = [(-75, 0, 8, 8, 8), (-40, 0, 0, 9, 9), (0, 0, -8, 9, 9), (40, 0, -12, 8, 8), (60, 0, -14, 4, 7),
              (85, 0, -12, 9, 9), (100, 0, 2, 12, 6), (150, 0, 8, 14, 6), (160, 0, 4, 10, 5)]
    add(Layer("air", Tube(airway)))


def _chest(layers: list[Layer], rng: np.random.Generator) -> None:
    add = layers.append
    scapula = [(-5, 108, 48, 22, 5, -45), (-50, 112, 52, 28, 6, -45), (-120, 106, 56, 18, 5, -40)]
    _bone_tube(layers, scapula, cortex=1.5)
    _bone_tube(layers, _mirror(scapula), cortex=1.5)
    _bone_tube(layers, [(-5, 0, -76, 18, 8), (-60, 0, -78, 14, 7), (-170, 0, -80, 12, 7)], cortex=2.0)
    cage = Tube([k for k in CAVITY_KEYS if -320 <= k[0] <= 30])
    add(Layer("bone", RibCage(cage, first_rib_z=15, rib_pitch=21, drop=75, length=13, thickness=4.5)))
    add(Layer("marrow", RibCage(cage, first_rib_z=15, rib_pitch=21, drop=75, length=11, thickness=2.5)))

    right_lung, left_lung = Tube(RIGHT_LUNG_KEYS), Tube(LEFT_LUNG_KEYS)
    add(Layer("lung", right_lung, key="lung_right", within="cavity"))
    add(Layer("lung", left_lung, key="lung_left", within="cavity"))
    layers.extend(_lung_vessels(right_lung, (-38.0, 6.0, -95.0), "lung_right", rng))
    layers.extend(_lung_vessels(left_lung, (38.0, 2.0, -90.0), "lung_left", rng))
    for side in (-1, 1):
        add(Layer("air", Cylinder((0, 8, -72), (side * 40, 10, -100), 6.5, 4.0)))

    # Heart in its fat, with blood pools that light up after contrast; great vessels.
    add(Layer("fat", Ellipsoid(18, -18, -135, 66, 56, 62), within="cavity"))
    add(Layer("myocardium", Ellipsoid(18, -18, -135, 60, 50, 56)))
    add(Layer("blood", Ellipsoid(34, -12, -142, 26, 24, 32)))
    add(Layer("blood", Ellipsoid(2, -40, -130, 30, 13, 32)))
    add(Layer("blood", Ellipsoid(10, 18, -105, 28, 15, 20)))
    add(Layer("blood", Ellipsoid(-30, -5, -140, 20, 22, 28)))
    add(Layer("blood", Tube([(-115, -8, -10, 14, 14), (-50, -10, -14, 15, 15)])))
    add(Layer("blood", Ellipsoid(8, 10, -40, 44, 13, 11, 58)))
    add(Layer("blood", Cylinder((8, -38, -112), (6, -22, -88), 13, 12)))
    add(Layer("blood", Ellipsoid(-28, 2, -95, 26, 9, 9, 10)))
    add(Layer("blood", Ellipsoid(28, -4, -88, 24, 9, 9, -20)))
    add(Layer("blood", Tube([(-120, -28, -10, 10, 10), (-10, -28, -10, 10, 9)])))
    add(Layer("blood", Tube([(-470, 6, 14, 9, 9), (-330, 12, 12, 11, 11), (-250, 18, 26, 12, 12),
                             (-150, 26, 38, 12, 12), (-30, 28, 36, 12, 12)])))
    for side in (-1, 1):
        add(Layer("blood", Cylinder((6, 14, -472), (side * 48, 22, -560), 6.5, 5.5)))
        add(Layer("blood", Cylinder((-20, 14, -468), (side * 52, 30, -565), 7.5, 6.5)))
    add(Layer("blood", Tube([(-470, -20, 10, 10, 9), (-400, -24, 8, 11, 10), (-260, -22, 12, 12, 10),
                             (-175, -18, 10, 12, 12)])))


def _abdomen(layers: list[Layer], anatomy: DemoAnatomy, rng: np.random.Generator, female: bool) -> None:
    add = layers.append
    add(Layer("liver", Tube(LIVER_KEYS), key="liver", within="cavity"))
    for start, end, r0, r1 in (((-20, 14, -185), (-105, -10, -215), 6.0, 2.5),
                               ((-20, 14, -185), (-55, -50, -222), 5.5, 2.5),
                               ((-20, 14, -185), (10, -40, -212), 5.0, 2.0),
                               ((-8, 4, -300), (-45, 6, -265), 7.0, 6.0),
                               ((-45, 6, -265), (-95, 10, -245), 5.0, 2.0),
                               ((-45, 6, -265), (-10, -40, -240), 4.5, 2.0),
                               ((-45, 6, -265), (-70, -20, -300), 4.0, 2.0)):
        add(Layer("blood", Cylinder(start, end, r0, r1), within="liver"))
    add(Layer("bile", Ellipsoid(-55, -52, -300, 15, 15, 30), within="cavity"))
    add(Layer("spleen", Ellipsoid(95, 42, -240, 30, 50, 55, -30), key="spleen", within="cavity"))
    add(Layer("bowel", Ellipsoid(58, -12, -240, 45, 40, 52), within="cavity"))
    add(Layer("fluid", Ellipsoid(58, -12, -240, 40, 35, 47), within="cavity"))
    add(Layer("gas", Ellipsoid(58, -12, -240, 40, 35, 47), within="cavity", anterior_of=-24.0))
    add(Layer("pancreas", Ellipsoid(8, 0, -300, 72, 12, 14, -12), key="pancreas", within="cavity"))
    for side, key, cz in ((-1, "kidney_right", -350), (1, "kidney_left", -335)):
        add(Layer("kidney", Ellipsoid(side * 70, 48, cz, 24, 34, 55, side * 30), key=key, within="cavity"))
        add(Layer("fat", Ellipsoid(side * 57, 44, cz, 8, 12, 25, side * 30), within=key))
        psoas = [(-320, 26, 40, 7, 7), (-400, 36, 36, 17, 15), (-470, 48, 28, 22, 19), (-540, 62, 12, 22, 20),
                 (-600, 68, 2, 16, 16), (-630, 70, 0, 10, 10)]
        add(Layer("muscle", Tube(psoas if side > 0 else _mirror(psoas))))

    def colon(shape_outer: Shape, shape_inner: Shape) -> None:
        add(Layer("bowel", shape_outer, within="cavity"))
        add(Layer("faeces", shape_inner, within="cavity"))

    colon(Tube([(-385, -98, 8, 21, 21), (-470, -92, 0, 24, 24)]),
          Tube([(-385, -98, 8, 17, 17), (-470, -92, 0, 20, 20)]))
    colon(Tube([(-338, 0, -58, 80, 16), (-362, 0, -60, 82, 17)]),
          Tube([(-338, 0, -58, 76, 12), (-362, 0, -60, 78, 13)]))
    colon(Tube([(-300, 108, 5, 16, 16), (-465, 104, 10, 17, 17)]),
          Tube([(-300, 108, 5, 12, 12), (-465, 104, 10, 13, 13)]))
    for start, end in (((104, 10, -465), (40, -10, -530)), ((40, -10, -530), (2, 40, -548))):
        colon(Cylinder(start, end, 15, 15), Cylinder(start, end, 11, 11))
    for _ in range(22):
        cx, cy = float(rng.uniform(-65, 75)), float(rng.uniform(-65, 0))
        cz, radius = float(rng.uniform(-540, -385)), float(rng.uniform(11, 17))
        add(Layer("bowel", Ellipsoid(cx, cy, cz, radius, radius, radius * 1.2), within="cavity"))
        add(Layer("bowel_content", Ellipsoid(cx, cy, cz, radius - 3.5, radius - 3.5, radius * 1.2 - 3.5),
                  within="cavity"))

    fill = anatomy.bladder_fill
    add(Layer("urine", Ellipsoid(0, -32, -598, 42 * fill, 32 * fill, 32 * fill), within="cavity"))
    if female:
        add(Layer("uterus", Ellipsoid(0, 12, -575, 32, 22, 40), key="uterus", within="cavity"))
    else:
        add(Layer("fluid", Ellipsoid(0, 28, -625, 24, 6, 7)))
        add(Layer("prostate_pz", Ellipsoid(0, 14, -652, 20, 15, 17), key="prostate"))
        add(Layer("prostate_tz", Ellipsoid(0, 8, -648, 13, 9, 13)))
    rectum = [(-545, 0, 48, 16, 16), (-600, 0, 52, 17, 16), (-650, 0, 50, 15, 14), (-675, 0, 45, 10, 10)]
    add(Layer("bowel", Tube(rectum), key="rectum"))
    add(Layer("faeces", Tube(_inset(rectum, 5))))


def _skeleton(layers: list[Layer]) -> None:
    add = layers.append
    # Spine: vertebral bodies with discs, the canal with the cord, the arch and the processes.
    _bone_tube(layers, VERTEBRA_KEYS)
    for top, bottom, period, duty in ((135, 5, 17, 4), (5, -300, 25, 5), (-300, SPINE_BOTTOM_Z, 36, 9)):
        keys = [k for k in VERTEBRA_KEYS if bottom <= k[0] <= top]
        add(Layer("disc", Periodic(Tube(_inset(keys, 0.5)), period, duty, phase=bottom)))
    canal = [(z, 0, cy + b + 8.5, 7.0 if z > -300 else 8.0, 6.5 if z > -300 else 7.5)
             for z, _, cy, _, b in VERTEBRA_KEYS]
    add(Layer("bone", Tube([(z, cx, cy, a + 5.0, b + 4.5) for z, cx, cy, a, b in canal])))
    spinous = [(z, 0, cy + b + (6.0 if z > 10 else 12.0), 3.5, 6.0 if z > 10 else 12.0)
               for z, _, cy, _, b in canal]
    add(Layer("bone", Periodic(Tube(spinous), 25, 15)))
    transverse = [(z, 0, cy - 2, a + (9.0 if z > 10 else 18.0), 4.0) for z, _, cy, a, _ in canal]
    add(Layer("bone", Periodic(Tube(transverse), 25, 8, phase=6)))
    add(Layer("csf", Tube(canal)))
    add(Layer("cord", Tube([(z, cx, cy, 4.5, 4.0) for z, cx, cy, _, _ in canal if z >= -330])))

    _bone_tube(layers, [(-465, 0, 55, 38, 17), (-500, 0, 68, 46, 18), (-540, 0, 78, 42, 17),
                        (-580, 0, 86, 26, 12), (-605, 0, 90, 10, 7)], cortex=3.0)
    ilium = [(-430, 95, 30, 22, 6, -60), (-460, 88, 18, 50, 7, -55), (-500, 82, 14, 60, 8, -53),
             (-540, 78, 25, 48, 10, -45), (-575, 76, 30, 28, 16, -30)]
    pubis = [(-622, 30, -50, 20, 9, 15), (-640, 24, -56, 24, 10, 15), (-655, 22, -55, 18, 9, 15)]
    ischium = [(-635, 52, 28, 14, 18), (-690, 50, 32, 12, 16)]
    femur = [(-640, 118, 18, 15, 15), (-800, 112, 14, 14, 14)]
    for side in (-1, 1):
        def sided(keys: Sequence[Key], side: int = side) -> Sequence[Key]:
            return keys if side > 0 else _mirror(keys)

        _bone_tube(layers, sided(ilium), cortex=2.0)
        _bone_tube(layers, sided(pubis), cortex=2.0)
        _bone_tube(layers, sided(ischium), cortex=2.0)
        _bone_ellipsoid(layers, side * 88, 8, -605, 30, 30, 27, cortex=3.0)
        add(Layer("cartilage", Ellipsoid(side * 90, 8, -612, 25.5, 25.5, 25.5)))
        _bone_ellipsoid(layers, side * 90, 8, -612, 23, 23, 23)
        neck_start, neck_end = (side * 90, 8, -612), (side * 118, 18, -645)
        _bone(layers, Cylinder(neck_start, neck_end, 13, 13), Cylinder(neck_start, neck_end, 10, 10))
        _bone_ellipsoid(layers, side * 122, 22, -640, 18, 20, 22)
        _bone_tube(layers, sided(femur), cortex=5.0)


def organ_shape(anatomy: DemoAnatomy, key: str) -> Shape:
    """The shape of the layer named `key` (lesions are placed inside it)."""
    for layer in build_body(anatomy):
        if layer.key == key:
            return layer.shape
    raise KeyError(key)


def point_in_organ(anatomy: DemoAnatomy, key: str, rng: np.random.Generator, radius_mm: float,
                   z_range: tuple[float, float] | None = None, x_max: float = math.inf
                   ) -> tuple[float, float, float]:
    """A template point deep enough inside an organ that a lesion of this radius stays mostly inside.

    `x_max` keeps the point on the patient's right of a sagittal plane (the right lobe of the liver).
    """
    shape = organ_shape(anatomy, key)
    z_low, z_high = shape.z_min, shape.z_max
    if z_range is not None:
        z_low, z_high = max(z_low, z_range[0]), min(z_high, z_range[1])
    margin = min(radius_mm * 0.6, (z_high - z_low) / 2.0 - 1.0)
    z_low, z_high = z_low + margin, z_high - margin
    for _ in range(100):
        z = float(rng.uniform(z_low, z_high))
        found = shape.sections(z)
        if not found:
            continue
        e = found[0]
        depth = 1.0 - radius_mm * 0.8 / max(min(e.a, e.b), 1e-3)
        if depth <= 0.05:
            continue
        rho = math.sqrt(float(rng.uniform(0, 1))) * depth * 0.9
        phi = float(rng.uniform(0, 2 * math.pi))
        u, v = e.a * rho * math.cos(phi), e.b * rho * math.sin(phi)
        cos_a, sin_a = math.cos(e.angle), math.sin(e.angle)
        x = e.cx + u * cos_a - v * sin_a
        if x <= x_max:
            return x, e.cy + u * sin_a + v * cos_a, z
    section = shape.sections((shape.z_min + shape.z_max) / 2.0)[0]
    return section.cx, section.cy, (shape.z_min + shape.z_max) / 2.0
