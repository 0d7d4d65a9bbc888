"""IBSI extraction settings: parsed from TOML or YAML, validated, canonicalised and hashed.

A settings file names every choice of the IBSI 1 processing chain that changes a value (resampling,
re-segmentation, discretisation, IVH binning, feature families, texture aggregation). After validation the
settings are one plain dictionary with every key present (defaults filled in), so two files that mean the
same thing have the same canonical JSON and therefore the same parameter hash; the hash is what results are
filed under, so reruns recognise work already done.

Presets live in ``mappings/features/*.toml`` (data, not code) and are chosen by file name without the
extension (``ct_default``).
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from pathlib import Path
from typing import Any

from gateway.compute.features.texture import ALL_AGGREGATIONS, DEFAULT_AGGREGATIONS
from gateway.compute.features.texture import FAMILIES as TEXTURE_FAMILIES

PRESET_DIR = Path(__file__).resolve().parents[2] / "mappings" / "features"
NOT_PRESETS = frozenset({"codes"})  # codes.toml beside the presets holds codes and units

# Short family names of the settings → the FeatureValue.family headings of the compute engine.
FIRST_ORDER_FAMILIES: dict[str, str] = {
    "morphology": "Morphological features",
    "local_intensity": "Local intensity features",
    "statistics": "Intensity-based statistical features",
    "intensity_histogram": "Intensity histogram features",
    "ivh": "Intensity-volume histogram features",
}
ALL_FAMILIES: tuple[str, ...] = (*FIRST_ORDER_FAMILIES, *TEXTURE_FAMILIES)
# Families that need a discretisation (bin width or number).
DISCRETISED_FAMILIES = frozenset({"intensity_histogram", *TEXTURE_FAMILIES})

_SECTIONS: dict[str, set[str]] = {
    "": {"name", "description", "resampling", "resegmentation", "discretisation", "ivh", "features"},
    "resampling": {"spacing", "interpolation", "mask_interpolation", "partial_volume_threshold",
                   "round_intensities"},
    "resegmentation": {"lower", "upper", "outlier_sigma"},
    "discretisation": {"bin_width", "bin_number"},
    "ivh": {"bin_width", "bin_number"},
    "features": {"families", "aggregations"},
}


class ParamsError(ValueError):
    """The settings cannot be used; the message names the file and key."""


def preset_names() -> list[str]:
    return sorted(path.stem for path in PRESET_DIR.glob("*.toml") if path.stem not in NOT_PRESETS)


def load_params(reference: str | Path | dict[str, Any]) -> dict[str, Any]:
    """Validated settings from a preset name, a TOML/YAML file path, or an inline mapping."""
    if isinstance(reference, dict):
        return validate_params(reference, "the inline settings")
    text = str(reference)
    path = Path(text)
    if not path.exists() and "/" not in text and "\\" not in text and not path.suffix:
        preset = PRESET_DIR / f"{text}.toml"
        if not preset.exists() or text in NOT_PRESETS:
            raise ParamsError(f"{text!r} is neither a settings file nor a preset (presets: "
                              f"{', '.join(preset_names()) or 'none'})")
        path = preset
    return validate_params(read_settings_file(path), str(path))


def read_settings_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ParamsError(f"settings file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ParamsError(f"{path}: YAML settings need PyYAML (pip install pyyaml); or use TOML") from None
            with open(path, encoding="utf-8") as handle:
                data = yaml.safe_load(handle)
        else:
            raise ParamsError(f"{path}: settings files are .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ParamsError(f"{path}: not valid TOML: {exc}") from exc
    except ParamsError:
        raise
    except Exception as exc:  # yaml.YAMLError and friends
        raise ParamsError(f"{path}: cannot be read: {exc}") from exc
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: the settings must be a table of keys")
    if "name" not in data:
        data = {**data, "name": path.stem}
    return data


def _where(source: str, section: str, key: str | None = None) -> str:
    dotted = ".".join(part for part in (section, key) if part)
    return f"{source}: {dotted}" if dotted else source


def _table(data: dict[str, Any], section: str, source: str) -> dict[str, Any]:
    value = data.get(section, {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ParamsError(f"{_where(source, section)} must be a table")
    unknown = sorted(set(value) - _SECTIONS[section])
    if unknown:
        raise ParamsError(f"{_where(source, section)}: unknown key(s) {', '.join(unknown)} (known: "
                          f"{', '.join(sorted(_SECTIONS[section]))})")
    return value


def _number(value: Any, where: str, *, positive: bool = False, integer: bool = False) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ParamsError(f"{where} must be a finite number, not {value!r}")
    if integer:
        if value != int(value):
            raise ParamsError(f"{where} must be a whole number, not {value!r}")
        value = int(value)
    if positive and value <= 0:
        raise ParamsError(f"{where} must be positive, not {value!r}")
    return value if integer else float(value)


def _binning(table: dict[str, Any], where: str, required: bool) -> dict[str, Any]:
    width, number = table.get("bin_width"), table.get("bin_number")
    if width is not None and number is not None:
        raise ParamsError(f"{where}: give bin_width (fixed bin size) or bin_number (fixed bin number), not both")
    if required and width is None and number is None:
        raise ParamsError(f"{where}: the chosen families need bin_width (fixed bin size, e.g. 25 HU) or bin_number "
                          f"(fixed bin number, e.g. 32)")
    return {"bin_width": None if width is None else _number(width, f"{where}.bin_width", positive=True),
            "bin_number": None if number is None else _number(number, f"{where}.bin_number", positive=True,
                                                              integer=True)}


def validate_params(data: dict[str, Any], source: str = "the settings") -> dict[str, Any]:
    """The canonical settings: every key present, numbers as floats/ints, lists in a fixed order."""
    if not isinstance(data, dict):
        raise ParamsError(f"{source}: the settings must be a table of keys")
    unknown = sorted(set(data) - _SECTIONS[""])
    if unknown:
        raise ParamsError(f"{source}: unknown key(s) {', '.join(unknown)} (known: "
                          f"{', '.join(sorted(_SECTIONS['']))})")
    name = data.get("name", "")
    description = data.get("description", "")
    if not isinstance(name, str) or not isinstance(description, str):
        raise ParamsError(f"{source}: name and description must be strings")

    resampling = _table(data, "resampling", source)
    spacing = resampling.get("spacing")
    new_spacing: list[float | None] | None = None
    if spacing is not None:
        if isinstance(spacing, int | float) and not isinstance(spacing, bool):
            spacing = [spacing] * 3
        if not isinstance(spacing, list) or len(spacing) != 3:
            raise ParamsError(f"{_where(source, 'resampling', 'spacing')} must be one number (isotropic, mm) or "
                              f"[z, y, x] in mm, with \"keep\" for an axis to keep; got {spacing!r}")
        new_spacing = [None if value == "keep" else _number(value, f"{_where(source, 'resampling', 'spacing')}[{i}]",
                                                            positive=True) for i, value in enumerate(spacing)]
        if all(value is None for value in new_spacing):
            new_spacing = None
    interpolation = resampling.get("interpolation", "linear")
    if interpolation not in ("linear", "cubic", "nearest"):
        raise ParamsError(f"{_where(source, 'resampling', 'interpolation')} must be linear, cubic (IBSI tricubic "
                          f"spline) or nearest, not {interpolation!r}")
    mask_interpolation = resampling.get("mask_interpolation", "partial_volume")
    if mask_interpolation not in ("partial_volume", "nearest"):
        raise ParamsError(f"{_where(source, 'resampling', 'mask_interpolation')} must be partial_volume or nearest, "
                          f"not {mask_interpolation!r}")
    threshold = _number(resampling.get("partial_volume_threshold", 0.5),
                        _where(source, "resampling", "partial_volume_threshold"))
    if not 0 < threshold <= 1:
        raise ParamsError(f"{_where(source, 'resampling', 'partial_volume_threshold')} must be in (0, 1]")
    round_intensities = resampling.get("round_intensities", False)
    if not isinstance(round_intensities, bool):
        raise ParamsError(f"{_where(source, 'resampling', 'round_intensities')} must be true or false")

    resegmentation = _table(data, "resegmentation", source)
    lower = resegmentation.get("lower")
    upper = resegmentation.get("upper")
    lower = None if lower is None else _number(lower, _where(source, "resegmentation", "lower"))
    upper = None if upper is None else _number(upper, _where(source, "resegmentation", "upper"))
    if lower is not None and upper is not None and lower > upper:
        raise ParamsError(f"{_where(source, 'resegmentation')}: lower ({lower}) is above upper ({upper})")
    sigma = resegmentation.get("outlier_sigma")
    sigma = None if sigma is None else _number(sigma, _where(source, "resegmentation", "outlier_sigma"),
                                               positive=True)

    features = _table(data, "features", source)
    families = features.get("families", "all")
    if families == "all":
        families = list(ALL_FAMILIES)
    if not isinstance(families, list) or not families or not all(isinstance(f, str) for f in families):
        raise ParamsError(f"{_where(source, 'features', 'families')} must be \"all\" or a non-empty list of "
                          f"{', '.join(ALL_FAMILIES)}")
    bad = sorted(set(families) - set(ALL_FAMILIES))
    if bad:
        raise ParamsError(f"{_where(source, 'features', 'families')}: unknown famil{'y' if len(bad) == 1 else 'ies'} "
                          f"{', '.join(bad)} (known: {', '.join(ALL_FAMILIES)})")
    chosen = [family for family in ALL_FAMILIES if family in families]
    aggregations = features.get("aggregations", list(DEFAULT_AGGREGATIONS))
    if isinstance(aggregations, str):
        aggregations = [aggregations]
    if not isinstance(aggregations, list) or not aggregations:
        raise ParamsError(f"{_where(source, 'features', 'aggregations')} must be a non-empty list of "
                          f"{', '.join(ALL_AGGREGATIONS)}")
    bad = sorted({str(a) for a in aggregations} - set(ALL_AGGREGATIONS))
    if bad:
        raise ParamsError(f"{_where(source, 'features', 'aggregations')}: unknown aggregation(s) {', '.join(bad)} "
                          f"(known: {', '.join(ALL_AGGREGATIONS)})")
    aggregations = [a for a in ALL_AGGREGATIONS if a in aggregations]
    if not any(family in TEXTURE_FAMILIES for family in chosen):
        aggregations = []  # no texture family: the aggregation cannot change a value

    needs_bins = any(family in DISCRETISED_FAMILIES for family in chosen)
    discretisation = _binning(_table(data, "discretisation", source), _where(source, "discretisation"), needs_bins)
    if not needs_bins:
        discretisation = {"bin_width": None, "bin_number": None}
    ivh = _binning(_table(data, "ivh", source), _where(source, "ivh"), False)
    if "ivh" not in chosen:
        ivh = {"bin_width": None, "bin_number": None}

    return {
        "name": name,
        "description": description,
        "resampling": {"spacing": new_spacing,
                       "interpolation": interpolation if new_spacing else "linear",
                       "mask_interpolation": mask_interpolation if new_spacing else "partial_volume",
                       "partial_volume_threshold": threshold if new_spacing else 0.5,
                       "round_intensities": round_intensities},
        "resegmentation": {"lower": lower, "upper": upper, "outlier_sigma": sigma},
        "discretisation": discretisation,
        "ivh": ivh,
        "features": {"families": chosen, "aggregations": aggregations},
    }


def canonical_json(params: dict[str, Any]) -> str:
    """The settings that change values, as canonical JSON (the name and description do not)."""
    meaningful = {key: value for key, value in params.items() if key not in ("name", "description")}
    return json.dumps(meaningful, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def parameter_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(params).encode("ascii")).hexdigest()
