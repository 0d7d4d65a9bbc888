"""DICOMweb benchmark: the gateway and Orthanc side by side, on the same synthetic data set, in one run.

    python tests/bench/bench_dicomweb.py [--instances 20000] [--out bench.md] [--servers gateway,orthanc]
    python tests/bench/bench_dicomweb.py --scale [--scale-points 20000,100000,250000,500000,1000000]

Both servers are started fresh (empty store, temp folder) and stay up together. Every measurement (STOW-RS
ingest, each QIDO-RS study search sequential and concurrent, WADO-RS series retrieval, series metadata)
is split into rounds that alternate between the servers, so background load hits both alike; the table
reports the median over rounds. The load comes from one client process per server (`_client.py`), the
same code for both. See README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _client import ClientProcess
from _dataset import INSTANCES_PER_STUDY, Manifest, ensure_dataset, iter_index_rows, study_count_for
from _gateway import GatewayServer
from _orthanc import OrthancServer
from _process import exit_cleanly_on_termination, log
from _report import cpu_model, format_number
from _workload import (
    QuerySpec,
    facts_from_manifest,
    facts_from_plans,
    patients_for_scale_curve,
    qido_study_queries,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BULK_FILL_HOOK = "gateway.store.bulk:bulk_insert_index_rows"
SERVER_NAMES = ("gateway", "orthanc")
DISPLAY_NAMES = {"gateway": "gateway", "orthanc": "Orthanc"}


def client_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"stow_batch": args.stow_batch, "stow_clients": args.stow_clients,
            "qido_repeats": args.qido_repeats, "qido_clients": args.qido_clients,
            "qido_concurrent_requests": args.qido_concurrent_requests, "wado_series": args.wado_series,
            "wado_sequential": args.wado_sequential, "wado_clients": args.wado_clients,
            "metadata_repeats": args.metadata_repeats}


def make_server(name: str, work_dir: Path, args: argparse.Namespace) -> GatewayServer | OrthancServer:
    if name == "orthanc":
        return OrthancServer(work_dir, binary=args.orthanc_binary,
                             plugin=Path(args.orthanc_plugin) if args.orthanc_plugin else None,
                             isolation=args.orthanc_isolation)
    return GatewayServer(work_dir, command=args.gateway_command, database_url=args.database_url,
                         origin=args.gateway_url, workers=args.gateway_workers)


def temporary_work_dir(stack: ExitStack, prefix: str, args: argparse.Namespace) -> Path:
    """A fresh folder for a server's storage and logs, removed when `stack` closes (unless kept)."""
    work_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=args.work_dir))

    def remove() -> None:
        if args.keep_work_dir:
            log(f"kept {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)

    stack.callback(remove)
    return work_dir


# ----------------------------------------------------------------------------------------------------------
# The side-by-side run


@dataclass
class Contender:
    name: str
    client: ClientProcess | None = None
    results: dict[str, Any] = field(default_factory=lambda: {"errors": [], "stow": [], "qido": {}, "wado": [],
                                                             "metadata": []})


def run_comparison(args: argparse.Namespace, manifest: Manifest,
                   queries: list[QuerySpec]) -> dict[str, dict[str, Any]]:
    contenders = [Contender(name) for name in args.servers]
    options = client_options(args)
    with ExitStack() as stack:
        for contender in contenders:
            work_dir = temporary_work_dir(stack, f"bench-{contender.name}-", args)
            try:
                server = stack.enter_context(make_server(contender.name, work_dir, args))
            except Exception as error:
                log(f"{contender.name} did not start: {error}")
                contender.results.update(description="did not start", errors=[f"start: {error}"])
                continue
            contender.results["description"] = server.description
            contender.client = ClientProcess(server.client_prefix, server.base_url, manifest.folder)
            stack.callback(contender.client.close)
        running = [contender for contender in contenders if contender.client is not None]

        def in_rounds(phase: str, rounds: int, record: Callable[[Contender, dict[str, Any]], None],
                      **command: Any) -> None:
            for round_index in range(rounds):
                # Alternate who goes first, so that neither server always runs right after the other.
                for contender in running if round_index % 2 == 0 else running[::-1]:
                    assert contender.client is not None
                    result = contender.client.run({"phase": phase, "round": round_index, "rounds": rounds,
                                                   "options": options, **command})
                    if "error" in result:
                        contender.results["errors"].append(result["error"])
                    else:
                        record(contender, result)

        in_rounds("stow", args.rounds, lambda contender, result: contender.results["stow"].append(result))
        in_rounds("verify", 1, lambda contender, result: contender.results.__setitem__("verify", result))
        for query in queries:
            in_rounds("qido", args.rounds,
                      lambda contender, result, key=query.key:
                      contender.results["qido"].setdefault(key, []).append(result),
                      query=query.to_json())
        in_rounds("wado", args.rounds, lambda contender, result: contender.results["wado"].append(result))
        in_rounds("metadata", args.rounds,
                  lambda contender, result: contender.results["metadata"].append(result))
    return {contender.name: contender.results for contender in contenders}


# ----------------------------------------------------------------------------------------------------------
# The comparison table


def dig(document: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(document, dict) or key not in document:
            return None
        document = document[key]
    return document


@dataclass(frozen=True)
class Metric:
    """One row: the per-round results it reads (`rounds_path`), the value in each round (`value_path`),
    whether higher is better and the target ratio gateway/Orthanc (None: reported, no target)."""

    label: str
    rounds_path: tuple[str, ...]
    value_path: tuple[str, ...]
    higher_is_better: bool
    target_ratio: float | None = None

    def rounds(self, results: dict[str, Any] | None) -> list[dict[str, Any]]:
        return dig(results, *self.rounds_path) or []

    def value(self, results: dict[str, Any] | None) -> float | None:
        values = [value for value in (dig(round_result, *self.value_path) for round_result in self.rounds(results))
                  if value is not None]
        return statistics.median(values) if values else None

    def failures(self, results: dict[str, Any] | None) -> int:
        return sum(dig(round_result, "failures", "count") or 0 for round_result in self.rounds(results))

    def cell(self, results: dict[str, Any] | None) -> str:
        failures = self.failures(results)
        return format_number(self.value(results)) + (f" ⚠{failures}" if failures else "")

    def ratio_and_target(self, gateway: dict[str, Any] | None,
                         orthanc: dict[str, Any] | None) -> tuple[str, str]:
        gateway_value, orthanc_value = self.value(gateway), self.value(orthanc)
        target = "—"
        if self.target_ratio is not None:
            target = f"{'≥' if self.higher_is_better else '≤'} {self.target_ratio:g}×"
        if not gateway_value or not orthanc_value:
            return "—", target
        ratio = gateway_value / orthanc_value
        if self.target_ratio is None:
            return f"{ratio:.2f}×", target
        met = ratio >= self.target_ratio if self.higher_is_better else ratio <= self.target_ratio
        verdict = "✅" if met and not self.failures(gateway) else "❌"
        return f"{ratio:.2f}×", f"{target} {verdict}"


def comparison_metrics(queries: list[QuerySpec], args: argparse.Namespace) -> list[Metric]:
    metrics = [
        Metric("STOW-RS ingest, instances/s", ("stow",), ("instances_per_s",), True, 1.0),
        Metric("STOW-RS ingest, MB/s", ("stow",), ("megabytes_per_s",), True, 1.0),
        Metric(f"STOW-RS request of {args.stow_batch} instances, median ms", ("stow",),
               ("batch_latency", "median_ms"), False),
    ]
    for query in queries:
        rounds_path = ("qido", query.key)
        metrics += [
            Metric(f"{query.label}: median ms", rounds_path, ("sequential", "median_ms"), False, 0.25),
            Metric(f"{query.label}: p95 ms", rounds_path, ("sequential", "p95_ms"), False, 0.25),
            Metric(f"{query.label}: {args.qido_clients} clients, median ms", rounds_path,
                   ("concurrent", "median_ms"), False, 0.25),
            Metric(f"{query.label}: {args.qido_clients} clients, requests/s", rounds_path,
                   ("concurrent", "requests_per_s"), True),
        ]
    metrics += [
        Metric(f"WADO-RS series retrieve ({args.wado_clients} clients), MB/s", ("wado",), ("megabytes_per_s",),
               True, 1.0),
        Metric(f"WADO-RS series retrieve ({args.wado_clients} clients), instances/s", ("wado",),
               ("instances_per_s",), True, 1.0),
        Metric("WADO-RS series retrieve (sequential), median ms", ("wado",), ("sequential", "median_ms"), False),
        Metric("WADO-RS series metadata, median ms", ("metadata",), ("sequential", "median_ms"), False),
        Metric("WADO-RS series metadata, p95 ms", ("metadata",), ("sequential", "p95_ms"), False),
    ]
    return metrics


def machine_line() -> str:
    return (f"- Run: {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, {cpu_model()}, {os.cpu_count()} "
            f"cores, load average {os.getloadavg()[0]:.1f} at the end, Python {platform.python_version()}; "
            "clients and servers on the same machine.")


def dataset_line(manifest: Manifest) -> str:
    return (f"- Data set: {manifest.instance_count:,} instances ({len(manifest.studies)} studies × 4 series × "
            f"10 instances of 64×64 int16, {manifest.byte_count / 1e6:.0f} MB, explicit VR little endian), "
            f"seed {manifest.seed}.")


def method_line(manifest: Manifest, args: argparse.Namespace) -> str:
    wado_series = min(args.wado_series, len(manifest.all_series()))
    return (f"- Method: each measurement in {args.rounds} rounds alternating between the servers; the table "
            f"shows the median over rounds. STOW-RS: the data set in {args.rounds} parts, {args.stow_batch} "
            f"instances per request, {args.stow_clients} parallel clients. QIDO-RS, per round and query: "
            f"{args.qido_repeats} sequential requests (rotating parameter values), then "
            f"{args.qido_concurrent_requests} from {args.qido_clients} concurrent clients. WADO-RS: "
            f"{wado_series} series over the rounds with {args.wado_clients} clients, after "
            f"{args.wado_sequential} one at a time; metadata: {args.metadata_repeats} sequential requests "
            "per round. MB = 10⁶ bytes.")


def render_comparison(results: dict[str, dict[str, Any]], queries: list[QuerySpec], manifest: Manifest,
                      args: argparse.Namespace, elapsed_s: float) -> str:
    gateway, orthanc = results.get("gateway"), results.get("orthanc")
    lines = ["## DICOMweb: gateway vs Orthanc", "", machine_line(), dataset_line(manifest),
             method_line(manifest, args)]
    for name, result in results.items():
        lines.append(f"- {DISPLAY_NAMES[name]}: {result.get('description', '')}.")
    lines += [f"- Whole run: {elapsed_s / 60:.1f} min.", "",
              "| metric | gateway | Orthanc | ratio (gateway/Orthanc) | target |", "|---|---:|---:|---:|---|"]
    for metric in comparison_metrics(queries, args):
        ratio, target = metric.ratio_and_target(gateway, orthanc)
        lines.append(f"| {metric.label} | {metric.cell(gateway)} | {metric.cell(orthanc)} | {ratio} "
                     f"| {target} |")
    verify_cells = []
    for result in (gateway, orthanc):
        verify = dig(result, "verify")
        verify_cells.append("—" if not verify else f"{verify['instances_found']:,}/{verify['instances_expected']:,}"
                            + ("" if verify["ok"] else " ❌"))
    lines.append(f"| instances found by QIDO after STOW | {verify_cells[0]} | {verify_cells[1]} | | |")
    lines += ["", "Medians over rounds. ⚠N: N requests failed or gave a wrong answer (number of studies, "
              "instances or parts differs from the data set); a target counts as met only without failures."]
    lines += problem_lines(results)
    return "\n".join(lines) + "\n"


def problem_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for name, result in results.items():
        problems = [f"error: {error.splitlines()[0]}" for error in result.get("errors", [])]
        phases: list[tuple[str, list[dict[str, Any]]]] = [
            (phase, result.get(phase) or []) for phase in ("stow", "wado", "metadata")]
        phases += [(f"qido {key}", rounds) for key, rounds in (result.get("qido") or {}).items()]
        for phase, rounds in phases:
            examples = [example for round_result in rounds for example in round_result["failures"]["examples"]]
            problems += [f"{phase}: {example}" for example in examples[:3]]
        if problems:
            lines += ["", f"Problems seen with {DISPLAY_NAMES.get(name, name)}:",
                      *[f"- {problem}" for problem in problems[:30]]]
    return lines


# ----------------------------------------------------------------------------------------------------------
# --scale: QIDO latency of the gateway as its index grows (bulk-filled, no STOW)

BulkFillHook = Callable[[str, Iterable[dict[str, Any]]], Any]


def resolve_bulk_fill_hook(spec: str) -> BulkFillHook:
    """`module:function`, called as function(database_url, rows) with one row (DICOM keyword → value) per
    instance, from _dataset.iter_index_rows; it inserts index rows without instance files."""
    module_name, _, function_name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise SystemExit(f"--scale needs the bulk-fill hook {spec!r} (function(database_url, rows)), "
                         f"which is not available: {error}. See tests/bench/README.md.") from error
    return function


def counted(rows: Iterator[dict[str, Any]], every: int = 100_000) -> Iterator[dict[str, Any]]:
    for index, row in enumerate(rows, start=1):
        if index % every == 0:
            log(f"bulk fill: {index:,} rows handed over")
        yield row


def run_scale_curve(args: argparse.Namespace, manifest: Manifest) -> tuple[str, dict[str, Any]]:
    bulk_fill = resolve_bulk_fill_hook(args.bulk_fill_hook)
    points = sorted({max(point, manifest.instance_count) for point in args.scale_points})
    options = {**client_options(args), "qido_repeats": args.scale_repeats, "qido_clients": 0,
               "qido_concurrent_requests": 0}
    patient_ids = patients_for_scale_curve(facts_from_manifest(manifest))
    curve: list[tuple[int, dict[str, Any]]] = []
    labels: dict[str, str] = {}
    with ExitStack() as stack:
        server = GatewayServer(temporary_work_dir(stack, "bench-gateway-scale-", args),
                               command=args.gateway_command, database_url=args.database_url,
                               origin=args.gateway_url, workers=args.gateway_workers)
        stack.enter_context(server)

        def measure(phase: str, **command: Any) -> dict[str, Any]:
            client = ClientProcess(server.client_prefix, server.base_url, manifest.folder)
            try:
                return client.run({"phase": phase, "options": options, **command})
            finally:
                client.close()

        loaded = measure("stow")
        log(f"base data set: {loaded.get('instances_stored')} instances stored over STOW-RS "
            f"{loaded.get('error', '')}")
        indexed_studies = len(manifest.studies)
        for point in points:
            target_studies = study_count_for(point)
            if target_studies > indexed_studies:
                if not args.gateway_url:
                    server.stop()  # the gateway restarts on the grown index: no stale caches
                fill_started = time.perf_counter()
                log(f"bulk fill: studies {indexed_studies:,}..{target_studies:,} "
                    f"({(target_studies - indexed_studies) * INSTANCES_PER_STUDY:,} instances)")
                rows = iter_index_rows(manifest.seed, indexed_studies, target_studies - indexed_studies)
                bulk_fill(server.effective_database_url, counted(rows))
                log(f"bulk fill took {time.perf_counter() - fill_started:.0f} s")
                indexed_studies = target_studies
                if not args.gateway_url:
                    server.start()
            queries = qido_study_queries(facts_from_plans(manifest.seed, indexed_studies),
                                         limit_every_query=True, patient_ids=patient_ids)
            measured: dict[str, Any] = {"qido": {}}
            for query in queries:
                labels[query.key] = query.label
                measured["qido"][query.key] = [measure("qido", query=query.to_json())]
            curve.append((indexed_studies * INSTANCES_PER_STUDY, measured))
    report = render_scale_curve(curve, labels, manifest, args)
    return report, {"base_load": loaded, "curve": [{"instances": size, **measured} for size, measured in curve]}


def render_scale_curve(curve: list[tuple[int, dict[str, Any]]], labels: dict[str, str], manifest: Manifest,
                       args: argparse.Namespace) -> str:
    sizes = [size for size, _ in curve]
    lines = ["## Gateway QIDO-RS latency vs index size", "", machine_line(),
             f"- Index: the {manifest.instance_count:,}-instance data set stored over STOW-RS, then grown by "
             f"bulk-inserting index rows of more synthetic studies ({args.bulk_fill_hook}). `limit=100` on "
             "the searches whose match count grows with the index; the PatientID searches look for the same "
             f"patients at every size. Median (p95) ms over {args.scale_repeats} sequential requests.", "",
             "| query | " + " | ".join(f"{size:,} instances" for size in sizes) + " | last/first |",
             "|---|" + "---:|" * (len(sizes) + 1)]
    for key, label in labels.items():
        cells = []
        for _, measured in curve:
            metric = Metric(label, ("qido", key), ("sequential", "median_ms"), False)
            p95 = Metric(label, ("qido", key), ("sequential", "p95_ms"), False)
            failures = metric.failures(measured)
            cells.append(f"{format_number(metric.value(measured))} ({format_number(p95.value(measured))})"
                         + (f" ⚠{failures}" if failures else ""))
        first = Metric(label, ("qido", key), ("sequential", "median_ms"), False).value(curve[0][1])
        last = Metric(label, ("qido", key), ("sequential", "median_ms"), False).value(curve[-1][1])
        growth = f"{last / first:.2f}×" if first and last else "—"
        lines.append(f"| {label} | {' | '.join(cells)} | {growth} |")
    for size, measured in curve:
        lines += problem_lines({f"gateway at {size:,} instances": measured})
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data set")
    data.add_argument("--instances", type=int, default=20_000,
                      help="instances (rounded up to whole studies of 40; default 20000)")
    data.add_argument("--seed", type=int, default=1)
    data.add_argument("--cache-dir", type=Path, default=REPO_ROOT / ".bench",
                      help="where the data set is generated once (default: .bench/ in the repository)")
    output = parser.add_argument_group("output")
    output.add_argument("--out", type=Path, help="write the markdown report here as well")
    output.add_argument("--json-out", type=Path, help="write the raw per-round results (JSON) here")
    servers = parser.add_argument_group("servers")
    servers.add_argument("--servers", default=",".join(SERVER_NAMES),
                         help="comma-separated subset of gateway,orthanc (default: both)")
    servers.add_argument("--work-dir", type=Path, default=None,
                         help="parent of the servers' temporary storage folders (default: system temp)")
    servers.add_argument("--keep-work-dir", action="store_true", help="keep server storage and logs")
    servers.add_argument("--gateway-command", default="gateway", help="gateway console script")
    servers.add_argument("--gateway-workers", type=int, default=2,
                         help="gateway worker processes (default 2: both cores, as Orthanc uses them)")
    servers.add_argument("--gateway-url", help="use a running gateway at this origin (e.g. "
                         "http://127.0.0.1:8080) instead of starting one; it should start empty")
    servers.add_argument("--database-url", help="passed to `gateway serve --database-url`")
    servers.add_argument("--orthanc-binary", default="Orthanc")
    servers.add_argument("--orthanc-plugin", help="path of libOrthancDicomWeb.so (default: Debian's)")
    servers.add_argument("--orthanc-isolation", choices=["auto", "netns", "none"], default="auto",
                         help="netns: private network namespace (needs root or user namespaces); none: "
                         "RemoteAccessAllowed=false only; auto (default): netns when possible")
    load = parser.add_argument_group("load (per round unless stated otherwise)")
    load.add_argument("--rounds", type=int, default=3, help="rounds alternating between the servers")
    load.add_argument("--stow-batch", type=int, default=50, help="instances per STOW-RS request")
    load.add_argument("--stow-clients", type=int, default=4)
    load.add_argument("--qido-repeats", type=int, default=20, help="sequential requests per QIDO query")
    load.add_argument("--qido-clients", type=int, default=8)
    load.add_argument("--qido-concurrent-requests", type=int, default=80,
                      help="requests per QIDO query in the concurrent measurement")
    load.add_argument("--wado-series", type=int, default=2000,
                      help="series retrieved with WADO-RS over all rounds (spread over the data set)")
    load.add_argument("--wado-sequential", type=int, default=10, help="series retrieved one at a time first")
    load.add_argument("--wado-clients", type=int, default=4)
    load.add_argument("--metadata-repeats", type=int, default=40)
    scale = parser.add_argument_group("--scale: gateway QIDO latency vs index size")
    scale.add_argument("--scale", action="store_true", help="measure the curve instead of the comparison")
    scale.add_argument("--scale-points", type=lambda text: [int(value) for value in text.split(",")],
                       default=[20_000, 100_000, 250_000, 500_000, 1_000_000],
                       help="index sizes in instances (comma-separated)")
    scale.add_argument("--scale-repeats", type=int, default=30)
    scale.add_argument("--bulk-fill-hook", default=DEFAULT_BULK_FILL_HOOK,
                       help="module:function(database_url, rows) that bulk-inserts index rows")
    args = parser.parse_args(argv)
    args.servers = [name.strip().lower() for name in args.servers.split(",") if name.strip()]
    if set(args.servers) - set(SERVER_NAMES) or not args.servers:
        parser.error(f"--servers: choose from {', '.join(SERVER_NAMES)}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    exit_cleanly_on_termination()
    args = parse_args(argv)
    started = time.perf_counter()
    manifest = ensure_dataset(args.cache_dir, args.instances, args.seed, log=log)
    log(f"data set: {manifest.instance_count:,} instances, {manifest.byte_count / 1e6:.0f} MB in "
        f"{manifest.folder}")
    if args.scale:
        report, raw = run_scale_curve(args, manifest)
    else:
        queries = qido_study_queries(facts_from_manifest(manifest))
        raw = run_comparison(args, manifest, queries)
        report = render_comparison(raw, queries, manifest, args, time.perf_counter() - started)
    print(report)
    if args.out:
        args.out.write_text(report, encoding="utf-8")
    if args.json_out:
        args.json_out.write_text(json.dumps(raw, indent=1), encoding="utf-8")
    log(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
