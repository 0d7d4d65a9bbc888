"""What the benchmarks' markdown reports share: number formatting and the machine's description."""

from __future__ import annotations

import platform
from pathlib import Path


def format_number(value: float | None) -> str:
    """Three significant figures or so, thousands separated; "—" for no value."""
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
