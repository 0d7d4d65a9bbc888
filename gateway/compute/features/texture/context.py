"""One prepared ROI plus the intermediate results that several families share (zones, border distances)."""

from __future__ import annotations

import numpy as np

from gateway.compute.backend import Backend
from gateway.compute.features.texture.roi import PreparedRoi
from gateway.compute.features.texture.zones import Zones, border_distance_map, find_zones


class TextureContext:
    """GLSZM and GLDZM use the same zones; computing them once per ROI halves the labelling work."""

    def __init__(self, roi: PreparedRoi, backend: Backend, *, zone_distances: bool = False) -> None:
        self.roi = roi
        self.backend = backend
        self.zone_distances = zone_distances
        self._zones: dict[bool, Zones] = {}
        self._distances: dict[bool, np.ndarray] = {}

    def border_distance(self, in_plane: bool) -> np.ndarray:
        if in_plane not in self._distances:
            self._distances[in_plane] = border_distance_map(self.roi.morphological_mask, in_plane, self.backend)
        return self._distances[in_plane]

    def zones(self, in_plane: bool, *, with_distance: bool = False) -> Zones:
        cached = self._zones.get(in_plane)
        if cached is None or (with_distance and cached.border_distance is None):
            distance = self.border_distance(in_plane) if (with_distance or self.zone_distances) else None
            cached = find_zones(self.roi.level_index, in_plane, self.backend, distance)
            self._zones[in_plane] = cached
        return cached
