"""Codes and UCUM units of stored features, read from ``mappings/features/codes.toml``."""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CODES_FILE = Path(__file__).resolve().parents[2] / "mappings" / "features" / "codes.toml"
INTENSITY = "<I>"


@dataclass(frozen=True)
class FeatureCodes:
    systems: dict[str, str]
    aggregation: dict[str, str]
    intensity_units: dict[str, Any]
    feature_units: dict[str, str]

    @property
    def ibsi_system(self) -> str:
        return self.systems["ibsi"]

    def aggregation_code(self, aggregation: str | None) -> str:
        return self.aggregation.get(aggregation or "", "")

    def intensity_unit(self, modality: str, units: str = "") -> str:
        entry = self.intensity_units.get(modality)
        if isinstance(entry, dict):
            return str(entry.get(units.strip().upper(), entry.get("default", self.intensity_units["default"])))
        if isinstance(entry, str):
            return entry
        return str(self.intensity_units["default"])

    def unit(self, key: str, intensity_unit: str) -> str:
        """The UCUM unit of feature ``key`` for a series whose intensities are in ``intensity_unit``."""
        best, best_length = self.feature_units.get("*", "1"), -1
        for pattern, unit in self.feature_units.items():
            if pattern == key:
                best = unit
                break
            if pattern.endswith("*") and key.startswith(pattern[:-1]) and len(pattern) > best_length:
                best, best_length = unit, len(pattern)
        return best.replace(INTENSITY, intensity_unit)


@functools.cache
def feature_codes(path: Path = CODES_FILE) -> FeatureCodes:
    with open(path, "rb") as handle:
        data = tomllib.load(handle)
    return FeatureCodes(systems=dict(data["systems"]), aggregation=dict(data["aggregation"]),
                        intensity_units=dict(data["intensity_units"]), feature_units=dict(data["feature_units"]))
