"""Loading the IBSI 1 digital phantom and its reference values (copied from ../shared, CC BY 4.0)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent.parent / "data" / "ibsi1"


@dataclass(frozen=True)
class Reference:
    family: str
    feature: str
    ibsi_code: str
    math_id: str
    table_caption: str
    data: str
    aggregation: str
    value: float | None
    tolerance: float


def load_reference(data: str = "dig. phantom") -> list[Reference]:
    rows = []
    with open(DATA / "ibsi1_reference_values.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["data"] != data:
                continue
            rows.append(Reference(
                family=row["family"], feature=row["feature"], ibsi_code=row["ibsi_code"],
                math_id=row["math_id"], table_caption=row["table_caption"], data=row["data"],
                aggregation=row["aggregation"], value=float(row["value"]) if row["value"] else None,
                tolerance=float(row["tolerance"]) if row["tolerance"] else 0.0,
            ))
    return rows


def load_digital_phantom() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Image and mask as (z, y, x) arrays and the voxel spacing (z, y, x) in mm."""
    import nibabel as nib

    image = nib.load(str(DATA / "digital_phantom" / "image.nii.gz"))
    mask = nib.load(str(DATA / "digital_phantom" / "mask.nii.gz"))
    # NIfTI stores (x, y, z); the kernels work in (z, y, x) like a stack of DICOM slices.
    img = np.asarray(image.dataobj).astype(np.float64).transpose(2, 1, 0)
    msk = np.asarray(mask.dataobj).astype(bool).transpose(2, 1, 0)
    sx, sy, sz = (float(v) for v in image.header.get_zooms()[:3])
    return img, msk, (sz, sy, sx)


def within_tolerance(value: float, ref: Reference) -> bool:
    """IBSI digital-phantom values are printed to 3 significant digits; allow that rounding."""
    assert ref.value is not None
    allowed = max(ref.tolerance, abs(ref.value) * 5e-3, 5e-4 if ref.value == 0 else 0.0)
    return abs(value - ref.value) <= allowed
