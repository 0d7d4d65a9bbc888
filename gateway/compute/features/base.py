"""What every feature family returns: values labelled with IBSI family, name and code."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FeatureValue:
    """One feature value.

    ``family`` and ``name`` are the IBSI 1 reference manual's headings (e.g. ``"Grey level co-occurrence based
    features"``, ``"Joint maximum"``), ``ibsi_code`` its four-letter identifier (e.g. ``"GYBY"``), ``key`` a
    stable snake_case identifier for storage (e.g. ``"cm_joint_max"``, following the manual's math ids such as
    ``cm.joint.max``), and ``aggregation`` the texture aggregation method (``"3D merged"``, ``"3D averaged"``,
    ``"2D averaged"``, ``"2D slice-merged"``, ``"2.5D direction-merged"``, ``"2.5D merged"``) or None for
    families without one.
    """

    family: str
    name: str
    ibsi_code: str
    key: str
    value: float
    aggregation: str | None = None
