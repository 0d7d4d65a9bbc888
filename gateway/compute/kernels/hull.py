"""Convex hull of a 3-D point set (volume, area, vertices) by Quickhull in Numba, in place of Qhull.

The morphology family needs the hull of a region's mesh vertices for the convex-hull volume and area densities
and its vertices for the maximum 3-D diameter. scipy.spatial (Qhull) did this, but importing it costs about
0.1 s per process and each hull about 1.5 ms of set-up for a few hundred vertices; this kernel does the same
work without either.

Quickhull (Barber, Dobkin & Huhdanpaa 1996): start from a tetrahedron of extreme points; each remaining point
is assigned to one face it lies outside of; repeatedly take the farthest outside point of a face, remove every
face it sees, and close the hole with a cone of new faces from the point to the horizon (the edges of the
removed region). Points no farther than ``eps`` outside every face count as inside; for marching-cubes
vertices, which are full of coplanar and collinear points, this is what keeps the surface consistent. Such
points are not vertices, as in Qhull; the volume and area change by at most ``eps`` times the area.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gateway.compute.kernels.arrays import jit_kernel

# Points within this fraction of the point cloud's size from a face's plane count as on it: roundoff in a
# plane distance is ~1e-15 of the coordinates, and a coplanar point treated as outside only adds a sliver.
_RELATIVE_EPS = 1e-11


@dataclass(frozen=True, slots=True)
class Hull:
    volume: float
    area: float
    vertices: np.ndarray  # sorted indices into the points
    simplices: np.ndarray  # (n, 3) vertex indices of the triangles, counter-clockwise seen from outside


def convex_hull(points: np.ndarray) -> Hull:
    """The convex hull of ``points`` (n, 3); ValueError when they do not span three dimensions."""
    data = np.ascontiguousarray(points, dtype=np.float64)
    if data.ndim != 2 or data.shape[1] != 3:
        raise ValueError(f"points must be an (n, 3) array, got shape {data.shape}")
    if data.shape[0] < 4 or not np.isfinite(data).all():
        raise ValueError("a 3-D convex hull needs at least four finite points")
    # Centred coordinates keep plane offsets small, so distances lose no digits to a far-away origin.
    centred = data - data.mean(axis=0)
    scale = float(np.abs(centred).max())
    faces, volume, area = _quickhull(centred, _RELATIVE_EPS * scale)
    if faces.shape[0] == 0:
        raise ValueError("the points are coplanar or collinear: their convex hull has no volume")
    return Hull(volume=volume, area=area, vertices=np.unique(faces), simplices=faces)


@jit_kernel()
def _plane(points: np.ndarray, a: int, b: int, c: int) -> tuple[float, float, float, float, float]:
    """Unit normal, offset and twice the area of triangle (a, b, c)."""
    ux, uy, uz = points[b, 0] - points[a, 0], points[b, 1] - points[a, 1], points[b, 2] - points[a, 2]
    vx, vy, vz = points[c, 0] - points[a, 0], points[c, 1] - points[a, 1], points[c, 2] - points[a, 2]
    nx, ny, nz = uy * vz - uz * vy, uz * vx - ux * vz, ux * vy - uy * vx
    length = math.sqrt(nx * nx + ny * ny + nz * nz)
    if length > 0.0:
        nx, ny, nz = nx / length, ny / length, nz / length
    offset = nx * points[a, 0] + ny * points[a, 1] + nz * points[a, 2]
    return nx, ny, nz, offset, length


@jit_kernel()
def _distance(points: np.ndarray, i: int, planes: np.ndarray, f: int) -> float:
    return planes[f, 0] * points[i, 0] + planes[f, 1] * points[i, 1] + planes[f, 2] * points[i, 2] - planes[f, 3]


@jit_kernel()
def _grow(faces: np.ndarray, planes: np.ndarray, alive: np.ndarray, head: np.ndarray,
          needed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    capacity = max(2 * faces.shape[0], needed)
    new_faces = np.empty((capacity, 3), dtype=np.int64)
    new_planes = np.empty((capacity, 4))
    new_alive = np.zeros(capacity, dtype=np.bool_)
    new_head = np.full(capacity, -1, dtype=np.int64)
    count = faces.shape[0]
    new_faces[:count] = faces
    new_planes[:count] = planes
    new_alive[:count] = alive
    new_head[:count] = head
    return new_faces, new_planes, new_alive, new_head


@jit_kernel()
def _initial_simplex(points: np.ndarray, eps: float) -> np.ndarray:
    """Four extreme points spanning a tetrahedron, or an empty array when the points are flat."""
    n = points.shape[0]
    extremes = np.empty(6, dtype=np.int64)
    for axis in range(3):
        extremes[2 * axis] = np.argmin(points[:, axis])
        extremes[2 * axis + 1] = np.argmax(points[:, axis])
    best = -1.0
    p0 = p1 = 0
    for s in range(6):
        for t in range(s + 1, 6):
            d = 0.0
            for axis in range(3):
                d += (points[extremes[s], axis] - points[extremes[t], axis]) ** 2
            if d > best:
                best, p0, p1 = d, extremes[s], extremes[t]
    if math.sqrt(best) <= eps:
        return np.empty(0, dtype=np.int64)
    # Farthest from the line p0-p1: the largest cross product with its direction.
    ux, uy, uz = points[p1, 0] - points[p0, 0], points[p1, 1] - points[p0, 1], points[p1, 2] - points[p0, 2]
    length = math.sqrt(ux * ux + uy * uy + uz * uz)
    best, p2 = -1.0, 0
    for i in range(n):
        vx, vy, vz = points[i, 0] - points[p0, 0], points[i, 1] - points[p0, 1], points[i, 2] - points[p0, 2]
        cx, cy, cz = uy * vz - uz * vy, uz * vx - ux * vz, ux * vy - uy * vx
        d = math.sqrt(cx * cx + cy * cy + cz * cz) / length
        if d > best:
            best, p2 = d, i
    if best <= eps:
        return np.empty(0, dtype=np.int64)
    nx, ny, nz, offset, _ = _plane(points, p0, p1, p2)
    best, p3 = -1.0, 0
    for i in range(n):
        d = abs(nx * points[i, 0] + ny * points[i, 1] + nz * points[i, 2] - offset)
        if d > best:
            best, p3 = d, i
    if best <= eps:
        return np.empty(0, dtype=np.int64)
    return np.array([p0, p1, p2, p3], dtype=np.int64)


@jit_kernel()
def _quickhull(points: np.ndarray, eps: float) -> tuple[np.ndarray, float, float]:
    n = points.shape[0]
    simplex = _initial_simplex(points, eps)
    if simplex.size == 0:
        return np.empty((0, 3), dtype=np.int64), 0.0, 0.0
    centre = np.zeros(3)
    for k in range(4):
        centre += points[simplex[k]] / 4.0

    capacity = 64
    faces = np.empty((capacity, 3), dtype=np.int64)
    planes = np.empty((capacity, 4))
    alive = np.zeros(capacity, dtype=np.bool_)
    head = np.full(capacity, -1, dtype=np.int64)  # first outside point of each face, linked through following
    following = np.full(n, -1, dtype=np.int64)
    count = 0
    for a, b, c in ((0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3)):
        i, j, k = simplex[a], simplex[b], simplex[c]
        nx, ny, nz, offset, _ = _plane(points, i, j, k)
        if nx * centre[0] + ny * centre[1] + nz * centre[2] - offset > 0.0:
            j, k = k, j  # the centre must lie below every face: outward normals
            nx, ny, nz, offset = -nx, -ny, -nz, -offset
        faces[count, 0], faces[count, 1], faces[count, 2] = i, j, k
        planes[count, 0], planes[count, 1], planes[count, 2], planes[count, 3] = nx, ny, nz, offset
        alive[count] = True
        count += 1

    in_simplex = np.zeros(n, dtype=np.bool_)
    in_simplex[simplex] = True
    for i in range(n):
        if in_simplex[i]:
            continue
        for f in range(4):
            if _distance(points, i, planes, f) > eps:
                following[i] = head[f]
                head[f] = i
                break

    pending = np.empty(n, dtype=np.int64)
    while True:
        face = -1
        for f in range(count):
            if alive[f] and head[f] >= 0:
                face = f
                break
        if face < 0:
            break
        apex, farthest = -1, -1.0
        i = head[face]
        while i >= 0:
            d = _distance(points, i, planes, face)
            if d > farthest:
                apex, farthest = i, d
            i = following[i]

        # Every face the apex sees goes; its outside points wait to be assigned to the new faces.
        visible = np.empty(count, dtype=np.int64)
        n_visible = 0
        for f in range(count):
            if alive[f] and _distance(points, apex, planes, f) > eps:
                visible[n_visible] = f
                n_visible += 1
        n_pending = 0
        edges = np.empty(3 * n_visible, dtype=np.int64)
        for v in range(n_visible):
            f = visible[v]
            alive[f] = False
            for k in range(3):
                edges[3 * v + k] = faces[f, k] * n + faces[f, (k + 1) % 3]
            i = head[f]
            while i >= 0:
                if i != apex:
                    pending[n_pending] = i
                    n_pending += 1
                i = following[i]
            head[f] = -1
        # The horizon: edges of the removed region whose reverse edge was not removed with it.
        ordered = np.sort(edges)
        first_new = count
        for e in range(edges.size):
            a, b = edges[e] // n, edges[e] % n
            reverse = b * n + a
            at = np.searchsorted(ordered, reverse)
            if at < ordered.size and ordered[at] == reverse:
                continue
            if count == faces.shape[0]:
                faces, planes, alive, head = _grow(faces, planes, alive, head, count + 1)
            nx, ny, nz, offset, _ = _plane(points, a, b, apex)
            faces[count, 0], faces[count, 1], faces[count, 2] = a, b, apex
            planes[count, 0], planes[count, 1], planes[count, 2], planes[count, 3] = nx, ny, nz, offset
            alive[count] = True
            head[count] = -1
            count += 1
        for p in range(n_pending):
            i = pending[p]
            following[i] = -1
            for f in range(first_new, count):
                if _distance(points, i, planes, f) > eps:
                    following[i] = head[f]
                    head[f] = i
                    break

    n_alive = 0
    for f in range(count):
        if alive[f]:
            n_alive += 1
    result = np.empty((n_alive, 3), dtype=np.int64)
    volume = area = 0.0
    r = 0
    for f in range(count):
        if not alive[f]:
            continue
        a, b, c = faces[f, 0], faces[f, 1], faces[f, 2]
        result[r, 0], result[r, 1], result[r, 2] = a, b, c
        r += 1
        _, _, _, _, twice_area = _plane(points, a, b, c)
        area += 0.5 * twice_area
        # Signed volume of the tetrahedron from the interior centre: positive for outward faces.
        ax, ay, az = points[a, 0] - centre[0], points[a, 1] - centre[1], points[a, 2] - centre[2]
        bx, by, bz = points[b, 0] - centre[0], points[b, 1] - centre[1], points[b, 2] - centre[2]
        cx, cy, cz = points[c, 0] - centre[0], points[c, 1] - centre[1], points[c, 2] - centre[2]
        volume += (ax * (by * cz - bz * cy) - ay * (bx * cz - bz * cx) + az * (bx * cy - by * cx)) / 6.0
    return result, volume, area
