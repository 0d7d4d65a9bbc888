"""ComBat benchmark: the gateway's ComBat against neuroCombat, side by side in one run.

    python tests/bench/bench_combat.py                 # 2,000 features × 5,000 subjects from 20 sites
    python tests/bench/bench_combat.py --repeats 9 --np-features 300

Each variant is timed ``--repeats`` times in turn (interleaved, so drift on a shared machine hits both
sides alike) and the median is reported:

* in-process: the call alone, on arrays already in memory;
* whole process: ``python -m gateway.compute.combat`` (gateway) or an equivalent ``python -c`` script
  (neuroCombat), each starting an interpreter, importing, loading the .npy input, harmonising and saving.

The non-parametric prior is timed on a smaller problem (``--np-features`` × ``--np-subjects``) because
neuroCombat's costs ~features² × subjects Python-level work there. Not collected by pytest (no ``test_``).
neuroCombat (and pandas, which it imports) come from the ``bench`` extra; without them only the gateway's
times are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPOSITORY_ROOT))

from gateway.compute.combat import combat  # noqa: E402

NEUROCOMBAT_PROCESS = """
import contextlib, io, sys
import numpy as np
if not hasattr(np, "int"):
    np.int = int  # neuroCombat 0.2.12 still refers to np.int on one path
import pandas as pd
from neuroCombat import neuroCombat
data_path, batch_path, out_path, parametric = sys.argv[1:5]
data = np.load(data_path)
batch = [line.strip() for line in open(batch_path, encoding="utf-8") if line.strip()]
with contextlib.redirect_stdout(io.StringIO()):
    result = neuroCombat(data, pd.DataFrame({"batch": batch}), "batch", parametric=parametric == "1")
np.save(out_path, result["data"])
"""


@dataclass
class Problem:
    data: np.ndarray  # features × subjects
    batch: np.ndarray

    @property
    def label(self) -> str:
        n_sites = np.unique(self.batch).size
        return f"{self.data.shape[0]:,} features × {self.data.shape[1]:,} subjects, {n_sites} sites"


def make_problem(n_features: int, n_subjects: int, n_sites: int, seed: int) -> Problem:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, n_sites, n_subjects)
    batch = np.array([f"site{code:02d}" for code in codes])
    location = rng.normal(0, 0.7, (n_features, n_sites))[:, codes]
    scale = rng.uniform(0.5, 2.0, (n_features, n_sites))[:, codes]
    data = rng.normal(50, 10, (n_features, 1)) + location + scale * rng.normal(size=(n_features, n_subjects))
    return Problem(data=data, batch=batch)


def neurocombat_function() -> Callable[..., dict[str, Any]] | None:
    try:
        import pandas  # noqa: F401
        from neuroCombat import neuroCombat
    except ImportError:
        return None
    return neuroCombat


def run_neurocombat(neuro_combat: Callable[..., dict[str, Any]], problem: Problem, parametric: bool) -> np.ndarray:
    import pandas as pd

    with contextlib.redirect_stdout(io.StringIO()):
        result = neuro_combat(problem.data, pd.DataFrame({"batch": problem.batch}), "batch", parametric=parametric)
    return np.asarray(result["data"])


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = action()
    return time.perf_counter() - start, value


def run_process(command: list[str]) -> None:
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY_ROOT), os.environ.get("PYTHONPATH")])),
    }
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed:\n{completed.stderr}")


@dataclass
class Row:
    what: str
    gateway: list[float]
    neurocombat: list[float]


def benchmark(problem: Problem, parametric: bool, repeats: int, workdir: Path) -> tuple[list[Row], float | None]:
    neuro_combat = neurocombat_function()
    data_path, batch_path = workdir / "data.npy", workdir / "batch.txt"
    np.save(data_path, problem.data)
    batch_path.write_text("\n".join(problem.batch.tolist()) + "\n", encoding="utf-8")
    gateway_command = [sys.executable, "-m", "gateway.compute.combat", "--data", str(data_path)]
    gateway_command += ["--batch", str(batch_path), "--out", str(workdir / "gateway.npy")]
    if not parametric:
        gateway_command.append("--non-parametric")
    neuro_command = [sys.executable, "-c", NEUROCOMBAT_PROCESS, str(data_path), str(batch_path)]
    neuro_command += [str(workdir / "neurocombat.npy"), "1" if parametric else "0"]

    in_process = Row("in-process", [], [])
    whole_process = Row("whole process (python -m …, load + save)", [], [])
    ours: np.ndarray | None = None
    theirs: np.ndarray | None = None
    for _ in range(repeats):
        seconds, result = timed(lambda: combat(problem.data, problem.batch, parametric=parametric))
        in_process.gateway.append(seconds)
        ours = result.data
        whole_process.gateway.append(timed(lambda: run_process(gateway_command))[0])
        if neuro_combat is not None:
            seconds, theirs = timed(lambda: run_neurocombat(neuro_combat, problem, parametric))
            in_process.neurocombat.append(seconds)
            whole_process.neurocombat.append(timed(lambda: run_process(neuro_command))[0])
    agreement = None
    if ours is not None and theirs is not None:
        agreement = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
    return [in_process, whole_process], agreement


def print_table(title: str, rows: list[Row], agreement: float | None, repeats: int) -> None:
    print(f"\n{title} — median of {repeats} runs, seconds (min–max)")
    header = f"| {'variant':42} | {'gateway':>22} | {'neuroCombat':>22} | {'speed-up':>8} |"
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")

    def cell(samples: list[float]) -> str:
        if not samples:
            return "n/a"
        return f"{statistics.median(samples):.3f} ({min(samples):.3f}–{max(samples):.3f})"

    for row in rows:
        ratio = (
            f"{statistics.median(row.neurocombat) / statistics.median(row.gateway):.1f}×" if row.neurocombat else "n/a"
        )
        print(f"| {row.what:42} | {cell(row.gateway):>22} | {cell(row.neurocombat):>22} | {ratio:>8} |")
    if agreement is not None:
        print(f"max |gateway − neuroCombat| / max |neuroCombat| = {agreement:.1e}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, default=2000)
    parser.add_argument("--subjects", type=int, default=5000)
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--np-features", type=int, default=400, help="features for the non-parametric run")
    parser.add_argument("--np-subjects", type=int, default=2000, help="subjects for the non-parametric run")
    parser.add_argument("--np-repeats", type=int, default=3)
    parser.add_argument("--skip-non-parametric", action="store_true")
    parser.add_argument("--seed", type=int, default=2007)
    args = parser.parse_args(argv)

    print(
        f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} at start"
    )
    if neurocombat_function() is None:
        print("neuroCombat (or pandas) is not installed: pip install neuroCombat pandas — gateway times only")

    with tempfile.TemporaryDirectory(prefix="bench-combat-") as directory:
        workdir = Path(directory)
        problem = make_problem(args.features, args.subjects, args.sites, args.seed)
        rows, agreement = benchmark(problem, parametric=True, repeats=args.repeats, workdir=workdir)
        print_table(f"Parametric ComBat, {problem.label}", rows, agreement, args.repeats)
        if not args.skip_non_parametric:
            problem = make_problem(args.np_features, args.np_subjects, args.sites, args.seed + 1)
            rows, agreement = benchmark(problem, parametric=False, repeats=args.np_repeats, workdir=workdir)
            print_table(f"Non-parametric ComBat, {problem.label}", rows, agreement, args.np_repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
