"""Radiomics benchmark: the gateway's IBSI 1 feature pipeline against pyradiomics, side by side in one run.

    python tests/bench/bench_radiomics.py --out bench-radiomics.md     # full run (~3 min on 2 cores)
    python tests/bench/bench_radiomics.py --quick                      # smoke run (~30 s)
    python tests/bench/bench_radiomics.py --profile                    # + cProfile of the gateway, case 3

Cases (same synthetic chest CT, label map and settings for both tools; spacing 2.5 × 0.7 × 0.7 mm (z, y, x),
fixed bin width 25 HU; volume and lesions from ``_radiomics_cases``):

1. 512×512×128 int16 volume, one spherical lesion of radius 40 voxels;
2. the same volume with 100 lesions of radius 3–10 voxels in one label map, each extracted separately;
3. the same with 20 lesions of radius 3–10 voxels (headline: pyradiomics ≥ 10× the gateway as whole processes);
4. case 1 resampled to 1 mm isotropic (gateway: trilinear image, partial-volume mask, rounded intensities;
   pyradiomics: ``resampledPixelSpacing``, ``interpolator='sitkLinear'``).

Gateway: ``extract_label_map_features`` (one call for the whole label map; Numba backend) with every default
family (morphology, local intensity, statistics, histogram, IVH, GLCM, GLRLM, GLSZM, GLDZM, NGTDM, NGLDM;
textures "3D averaged" and "3D merged"). pyradiomics: the fast way, each lesion cropped to its bounding box + 2
voxels, ``additionalInfo`` off, ``force2D`` off, classes firstorder, shape, glcm, glrlm, glszm, gldm, ngtdm.

Timings, each the median of ``--repeats`` runs taken in turn (order alternating, so drift on a shared machine
hits both tools alike):

* in-process: the extraction of every lesion on arrays in memory (pyradiomics: the per-lesion loop; gateway:
  one label-map call), after an untimed warm-up on one lesion (Numba compiles
  or loads its on-disk cache there; pyradiomics/SimpleITK load their libraries);
* whole process: ``python tests/bench/_radiomics_cases.py TOOL volume.npy labels.npy ...`` starts an
  interpreter, imports the tool, loads the .npy files, extracts every lesion and writes JSON, so import time
  and Numba's cache loading count (each worker imports only what its tool needs; both freeze the garbage
  collector before exiting, see ``_radiomics_cases.run_worker``). One untimed process per tool and case
  runs first (page cache, and Numba's on-disk cache if the sources changed); its time is reported as "first
  process".

Ratio = pyradiomics ÷ gateway. Not collected by pytest (no ``test_``); needs the ``bench`` extra (pyradiomics:
``pip install versioneer wheel && pip install --no-build-isolation pyradiomics``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
BENCH_DIRECTORY = Path(__file__).resolve().parent
sys.path.insert(0, str(REPOSITORY_ROOT))
sys.path.insert(0, str(BENCH_DIRECTORY))

from _radiomics_cases import (  # noqa: E402
    EXTRACTORS,
    LesionFeatures,
    Settings,
    ct_body_volume,
    paint_lesions,
    place_lesions,
)

TOOLS = ("gateway", "pyradiomics")
SPACING = (2.5, 0.7, 0.7)
BIN_WIDTH = 25.0
HEADLINE_CASE = "3"
HEADLINE_TARGET = 10.0

# Features whose definitions coincide (IBSI 1 vs pyradiomics), as (label, gateway key, pyradiomics key).
# The texture pairs agree because every lesion's minimum is a multiple of the bin width (see paint_lesions).
COMPARED_FEATURES: tuple[tuple[str, str, str], ...] = (
    ("volume, voxel counting (mm³)", "morph_approx_vol", "original_shape_VoxelVolume"),
    ("volume, mesh (mm³)", "morph_vol", "original_shape_MeshVolume"),
    ("surface area, mesh (mm²)", "morph_area", "original_shape_SurfaceArea"),
    ("mean intensity", "stat_mean", "original_firstorder_Mean"),
    ("intensity variance", "stat_var", "original_firstorder_Variance"),
    ("discretised intensity entropy", "ih_entropy", "original_firstorder_Entropy"),
    ("GLCM joint entropy, 3D averaged", "cm_joint_entr [3D averaged]", "original_glcm_JointEntropy"),
    ("GLCM contrast, 3D averaged", "cm_contrast [3D averaged]", "original_glcm_Contrast"),
    ("GLRLM short runs emphasis, 3D averaged", "rlm_sre [3D averaged]", "original_glrlm_ShortRunEmphasis"),
    ("GLSZM small zone emphasis, 3D", "szm_sze [3D]", "original_glszm_SmallAreaEmphasis"),
    ("NGTDM coarseness, 3D", "ngt_coarseness [3D]", "original_ngtdm_Coarseness"),
    ("NGLDM/GLDM dependence count entropy, 3D", "ngl_dc_entr [3D]", "original_gldm_DependenceEntropy"),
)


@dataclass(frozen=True, slots=True)
class CaseSpec:
    key: str
    title: str
    radii: tuple[int, ...]
    new_spacing: tuple[float, float, float] | None = None
    same_lesions_as: str | None = None  # reuse another case's volume and label map


@dataclass
class Case:
    spec: CaseSpec
    volume: np.ndarray
    labels: np.ndarray
    volume_path: Path
    labels_path: Path

    @property
    def settings(self) -> Settings:
        return Settings(spacing=SPACING, bin_width=BIN_WIDTH, new_spacing=self.spec.new_spacing)

    @property
    def lesion_count(self) -> int:
        return len(self.spec.radii)


@dataclass
class Measurements:
    in_process: dict[str, list[float]] = field(default_factory=lambda: {tool: [] for tool in TOOLS})
    whole_process: dict[str, list[float]] = field(default_factory=lambda: {tool: [] for tool in TOOLS})
    first_process: dict[str, float] = field(default_factory=dict)
    warm_up: dict[str, float] = field(default_factory=dict)
    process_stages: dict[str, list[dict[str, float]]] = field(default_factory=lambda: {tool: [] for tool in TOOLS})
    results: dict[str, LesionFeatures] = field(default_factory=dict)


def case_specs(quick: bool, rng: np.random.Generator) -> list[CaseSpec]:
    large_radius = 20 if quick else 40
    many, few = (30, 10) if quick else (100, 20)
    return [
        CaseSpec("1", f"1 lesion, radius {large_radius}", (large_radius,)),
        CaseSpec("2", f"{many} lesions, radius 3–10", tuple(int(r) for r in rng.integers(3, 11, many))),
        CaseSpec("3", f"{few} lesions, radius 3–10", tuple(int(r) for r in rng.integers(3, 11, few))),
        CaseSpec("4", f"1 lesion, radius {large_radius}, resampled to 1 mm", (large_radius,),
                 new_spacing=(1.0, 1.0, 1.0), same_lesions_as="1"),
    ]


def build_cases(specs: Sequence[CaseSpec], shape: tuple[int, int, int], seed: int, workdir: Path) -> list[Case]:
    rng = np.random.default_rng(seed)
    body = ct_body_volume(shape, rng)
    cases: dict[str, Case] = {}
    for spec in specs:
        if spec.same_lesions_as is not None:
            source = cases[spec.same_lesions_as]
            cases[spec.key] = Case(spec, source.volume, source.labels, source.volume_path, source.labels_path)
            continue
        volume = body.copy()
        labels = paint_lesions(volume, place_lesions(shape, spec.radii, rng), rng)
        volume_path, labels_path = workdir / f"case{spec.key}-volume.npy", workdir / f"case{spec.key}-labels.npy"
        np.save(volume_path, volume)
        np.save(labels_path, labels)
        cases[spec.key] = Case(spec, volume, labels, volume_path, labels_path)
    return [cases[spec.key] for spec in specs]


def first_lesion_problem(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """A small volume and label map holding only the first lesion (with context), for warm-up calls."""
    box = ndimage.find_objects(case.labels, max_label=1)[0]
    padded = tuple(slice(max(s.start - 20, 0), s.stop + 20) for s in box)
    return case.volume[padded], (case.labels[padded] == 1).astype(np.uint8)


def timed(action: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    value = action()
    return time.perf_counter() - start, value


def worker_command(tool: str, case: Case, out_path: Path) -> list[str]:
    settings = case.settings
    command = [sys.executable, str(BENCH_DIRECTORY / "_radiomics_cases.py"), tool, str(case.volume_path),
               str(case.labels_path), "--spacing", *map(str, settings.spacing), "--bin-width", str(BIN_WIDTH),
               "--out", str(out_path)]
    if settings.new_spacing is not None:
        command += ["--new-spacing", *map(str, settings.new_spacing)]
    return command


def run_worker(tool: str, case: Case, workdir: Path) -> tuple[float, dict[str, float]]:
    """Wall time of one whole extraction process, and its stages: start-up (interpreter, NumPy, SciPy), the
    worker's own import, load, extract and write, and exit (from the last write to the process's end)."""
    out_path = workdir / f"case{case.spec.key}-{tool}.json"
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY_ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = worker_command(tool, case, out_path)
    launched_at, start = time.time(), time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    seconds = time.perf_counter() - start
    ended_at = time.time()
    if completed.returncode != 0:
        raise RuntimeError(f"{tool} worker failed for case {case.spec.key}:\n{completed.stderr}")
    written = json.loads(out_path.read_text(encoding="utf-8"))
    if len(written) != case.lesion_count:
        raise RuntimeError(f"{tool} worker wrote {len(written)} lesions, expected {case.lesion_count}")
    reported = json.loads(completed.stdout.strip().splitlines()[-1])
    stages = {"start-up": reported["started_at"] - launched_at, **reported["stages"],
              "exit": ended_at - reported["finished_at"]}
    return seconds, stages


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure_case(case: Case, repeats: int, workdir: Path) -> Measurements:
    measured = Measurements()
    warm_volume, warm_labels = first_lesion_problem(case)
    for tool in TOOLS:
        measured.warm_up[tool] = timed(lambda tool=tool: EXTRACTORS[tool](warm_volume, warm_labels,
                                                                          case.settings))[0]
        measured.first_process[tool] = run_worker(tool, case, workdir)[0]
    for repeat in range(repeats):
        order = TOOLS if repeat % 2 == 0 else tuple(reversed(TOOLS))
        for tool in order:
            seconds, results = timed(lambda tool=tool: EXTRACTORS[tool](case.volume, case.labels, case.settings))
            measured.in_process[tool].append(seconds)
            measured.results[tool] = results  # type: ignore[assignment]
        for tool in order:
            seconds, stages = run_worker(tool, case, workdir)
            measured.whole_process[tool].append(seconds)
            measured.process_stages[tool].append(stages)
        log(f"case {case.spec.key} repeat {repeat + 1}/{repeats}: "
            + ", ".join(f"{tool} {measured.in_process[tool][-1]:.2f} s in-process, "
                        f"{measured.whole_process[tool][-1]:.2f} s process" for tool in TOOLS))
    return measured


# --------------------------------------------------------------------------------------------------------------
# Reporting


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def seconds_cell(samples: Sequence[float]) -> str:
    return f"{median(samples):.3f} s"


def timing_table(cases: Sequence[Case], measured: dict[str, Measurements]) -> list[str]:
    lines = [
        "| case | gateway (in-process) | gateway (process) | pyradiomics (in-process) | pyradiomics (process) "
        "| ratio (in-process / process) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for case in cases:
        m = measured[case.spec.key]
        in_ratio = median(m.in_process["pyradiomics"]) / median(m.in_process["gateway"])
        process_ratio = median(m.whole_process["pyradiomics"]) / median(m.whole_process["gateway"])
        lines.append(
            f"| {case.spec.key}. {case.spec.title} | {seconds_cell(m.in_process['gateway'])} "
            f"| {seconds_cell(m.whole_process['gateway'])} | {seconds_cell(m.in_process['pyradiomics'])} "
            f"| {seconds_cell(m.whole_process['pyradiomics'])} | {in_ratio:.1f}× / {process_ratio:.1f}× |"
        )
    return lines


def detail_table(cases: Sequence[Case], measured: dict[str, Measurements]) -> list[str]:
    """Per-lesion in-process cost, warm-up and first-process times, and where a whole process spends its time."""
    lines = [
        "| case | tool | in-process per lesion | warm-up (1 lesion) | first process | process: start-up "
        "| import tool | load .npy | extract | write | exit |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case in cases:
        m = measured[case.spec.key]
        for tool in TOOLS:
            stages = {name: median([s[name] for s in m.process_stages[tool]]) for name in m.process_stages[tool][0]}
            per_lesion_ms = 1000 * median(m.in_process[tool]) / case.lesion_count
            lines.append(
                f"| {case.spec.key} | {tool} | {per_lesion_ms:.1f} ms | {m.warm_up[tool]:.2f} s "
                f"| {m.first_process[tool]:.2f} s | {stages['start-up']:.2f} s | {stages['import']:.2f} s "
                f"| {stages['load']:.2f} s | {stages['extract']:.2f} s | {stages['write']:.3f} s "
                f"| {stages['exit']:.2f} s |"
            )
    return lines


def agreement_table(cases: Sequence[Case], measured: dict[str, Measurements]) -> list[str]:
    """Largest relative difference over a case's lesions for each feature both tools define alike."""
    lines = [
        "| feature | " + " | ".join(f"case {case.spec.key}" for case in cases) + " |",
        "|---|" + "---:|" * len(cases),
    ]
    for label, gateway_key, pyradiomics_key in COMPARED_FEATURES:
        cells = []
        for case in cases:
            results = measured[case.spec.key].results
            ours = np.array([results["gateway"][lesion][gateway_key] for lesion in sorted(results["gateway"])])
            theirs = np.array([results["pyradiomics"][lesion][pyradiomics_key]
                               for lesion in sorted(results["gateway"])])
            difference = np.abs(ours - theirs) / np.maximum(np.abs(theirs), 1e-12)
            cells.append(f"{np.nanmax(difference):.1e}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def profile_gateway(case: Case, top: int) -> str:
    """cProfile of the gateway's in-process loop over the case (already warm), top functions by own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    EXTRACTORS["gateway"](case.volume, case.labels, case.settings)
    profiler.disable()
    text = io.StringIO()
    report = pstats.Stats(profiler, stream=text)
    report.sort_stats("tottime").print_stats(top)
    report.sort_stats("cumulative").print_stats(top)
    return text.getvalue()


def environment_line() -> str:
    import numba

    try:
        import radiomics
        import SimpleITK

        pyradiomics_versions = f"pyradiomics {radiomics.__version__}, SimpleITK {SimpleITK.Version_VersionString()}"
    except ImportError:
        pyradiomics_versions = "pyradiomics not installed"
    return (f"Python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__} "
            f"({numba.config.NUMBA_NUM_THREADS} threads), {pyradiomics_versions}; {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="256×256×64 volume, fewer lesions, 2 repeats")
    parser.add_argument("--repeats", type=int, help="timed runs per variant (default 7, 2 with --quick)")
    parser.add_argument("--cases", nargs="+", choices=["1", "2", "3", "4"], help="run only these cases")
    parser.add_argument("--profile", action="store_true", help="cProfile the gateway on case 3 (in-process)")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 7)
    shape = (64, 256, 256) if args.quick else (128, 512, 512)

    try:
        import radiomics  # noqa: F401
    except ImportError:
        print("pyradiomics is not installed: pip install versioneer wheel && "
              "pip install --no-build-isolation pyradiomics", file=sys.stderr)
        return 2

    started = time.perf_counter()
    specs = case_specs(args.quick, np.random.default_rng(args.seed))
    if args.cases:
        wanted = set(args.cases) | {spec.same_lesions_as for spec in specs if spec.key in args.cases} - {None}
        specs = [spec for spec in specs if spec.key in wanted]
    report: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-radiomics-") as directory:
        workdir = Path(directory)
        log(f"building volume {shape[2]}×{shape[1]}×{shape[0]} and label maps in {workdir}")
        cases = build_cases(specs, shape, args.seed, workdir)
        if args.cases:
            cases = [case for case in cases if case.spec.key in args.cases]
        measured: dict[str, Measurements] = {}
        for case in cases:
            log(f"case {case.spec.key}: {case.spec.title}")
            measured[case.spec.key] = measure_case(case, repeats, workdir)
        profile_text = None
        if args.profile:
            headline = next((case for case in cases if case.spec.key == HEADLINE_CASE), cases[0])
            profile_text = profile_gateway(headline, top=25)

    volume_size = f"{shape[2]}×{shape[1]}×{shape[0]}"
    report.append(f"## Radiomics: gateway vs pyradiomics ({volume_size} int16 CT, spacing "
                  f"{' × '.join(map(str, SPACING))} mm (z, y, x), bin width {BIN_WIDTH:g} HU)")
    report.append("")
    report.append(f"Median of {repeats} runs; ratio = pyradiomics ÷ gateway. {environment_line()}.")
    report.append("")
    report += timing_table(cases, measured)
    headline_measured = measured.get(HEADLINE_CASE)
    if headline_measured is not None:
        ratio = median(headline_measured.whole_process["pyradiomics"]) / median(
            headline_measured.whole_process["gateway"])
        verdict = "met" if ratio >= HEADLINE_TARGET else "NOT met"
        report.append("")
        report.append(f"Headline target (case {HEADLINE_CASE}, whole process, ≥ {HEADLINE_TARGET:g}×): {ratio:.1f}× — "
                      f"{verdict}.")
    report += ["", "### Where the time goes (medians)", ""]
    report += detail_table(cases, measured)
    report += ["", "### Agreement: max |gateway − pyradiomics| / |pyradiomics| over each case's lesions", ""]
    report += agreement_table(cases, measured)
    if any(case.spec.new_spacing is not None for case in cases):
        report += ["", "With resampling the tools differ by design: pyradiomics aligns its grid with the mask's "
                   "bounding box and resamples the mask by nearest neighbour, the gateway uses the IBSI grid (centred "
                   "on the cropped image) and a partial-volume mask (threshold 0.5)."]
    if profile_text is not None:
        report += ["", f"### cProfile, gateway in-process, case {HEADLINE_CASE}", ""]
        report += ["```", profile_text.strip(), "```"]
    report.append("")
    report.append(f"Total benchmark time {time.perf_counter() - started:.0f} s.")

    text = "\n".join(report) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
