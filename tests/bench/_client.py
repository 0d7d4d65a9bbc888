"""DICOMweb load generator: one process per server, the same code for the gateway and Orthanc.

Started by bench_dicomweb.py (`ClientProcess`) as `[nsenter --net=…] python _client.py ROOT_URL DATASET`, so
that it can join a server's private network namespace, it stays up for the whole run and executes one JSON
command per line (a phase: stow, verify, qido, wado, metadata; a round of it), answering with raw timings
and every correctness failure.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from _dataset import Manifest, SeriesEntry, StudyEntry
from _process import die_with_parent
from _workload import QuerySpec

DICOM_JSON = "application/dicom+json"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
NUMBER_OF_STUDY_RELATED_INSTANCES = "00201208"
MAX_RECORDED_FAILURES = 10
MEGABYTE = 1_000_000


def log(message: str) -> None:
    print(f"[client {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear-interpolated percentile (fraction in [0, 1]) of a non-empty sequence."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float]:
    if not latencies_s:
        return {}
    return {"median_ms": 1000 * statistics.median(latencies_s),
            "p95_ms": 1000 * percentile(latencies_s, 0.95),
            "min_ms": 1000 * min(latencies_s), "max_ms": 1000 * max(latencies_s), "count": len(latencies_s)}


@dataclass
class FailureLog:
    """Counts failures and keeps the first few messages (a server that fails fast must not look fast)."""

    count: int = 0
    examples: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, message: str) -> None:
        with self._lock:
            self.count += 1
            if len(self.examples) < MAX_RECORDED_FAILURES:
                self.examples.append(message)

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "examples": self.examples}


class DicomwebClient:
    """requests Sessions (one per thread, with keep-alive) against one DICOMweb root."""

    def __init__(self, base_url: str, timeout_s: float = 300) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def get(self, path: str, accept: str) -> requests.Response:
        # The query string is pre-encoded in `path`: requests sends it as is.
        return self.session.get(self.base_url + path, headers={"Accept": accept}, timeout=self.timeout_s)

    def post_instances(self, instances: Sequence[bytes]) -> requests.Response:
        boundary = uuid.uuid4().hex
        chunks: list[bytes] = []
        for instance in instances:
            chunks += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), instance, b"\r\n"]
        chunks.append(f"--{boundary}--\r\n".encode())
        headers = {"Content-Type": f"{MULTIPART_DICOM}; boundary={boundary}", "Accept": DICOM_JSON}
        return self.session.post(self.base_url + "/studies", data=b"".join(chunks), headers=headers,
                                 timeout=self.timeout_s)


def count_multipart_parts(response: requests.Response) -> int:
    match = re.search(r'boundary="?([^";]+)"?', response.headers.get("Content-Type", ""))
    if not match:
        raise ValueError(f"no multipart boundary in Content-Type {response.headers.get('Content-Type')!r}")
    delimiter = b"--" + match.group(1).encode()
    return max(response.content.count(delimiter) - 1, 0)  # minus the close delimiter


def json_items(response: requests.Response) -> list[Any]:
    if response.status_code == 204 or not response.content:
        return []
    document = response.json()
    if not isinstance(document, list):
        raise ValueError(f"expected a JSON array, got {type(document).__name__}")
    return document


def run_concurrently(task: Callable[[int], None], task_count: int, workers: int) -> float:
    """Run task(0..task_count-1) on `workers` threads; return the wall time in seconds."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for completion in [pool.submit(task, index) for index in range(task_count)]:
            completion.result()
    return time.perf_counter() - started


# ----------------------------------------------------------------------------------------------------------
# Phases. Each measurement is split into rounds (`round_index` of `rounds`) that the orchestrator interleaves
# between the servers, so that a change in background load hits both servers alike.


def round_slice(items: Sequence[Any], round_index: int, rounds: int) -> list[Any]:
    """The contiguous `round_index`-th of `rounds` parts of `items`."""
    return list(items[len(items) * round_index // rounds:len(items) * (round_index + 1) // rounds])


def stow_phase(client: DicomwebClient, manifest: Manifest, batch_size: int, workers: int, round_index: int,
               rounds: int) -> dict[str, Any]:
    files = [manifest.folder / path for _, series in manifest.all_series() for path in series.files]
    all_batches = [files[start:start + batch_size] for start in range(0, len(files), batch_size)]
    batches = round_slice(all_batches, round_index, rounds)
    failures = FailureLog()
    latencies: list[float] = []
    stored_counts: list[int] = []
    sent_bytes: list[int] = []

    def send(batch_index: int) -> None:
        instances = [path.read_bytes() for path in batches[batch_index]]
        started = time.perf_counter()
        try:
            response = client.post_instances(instances)
        except requests.RequestException as error:
            failures.add(f"STOW request: {error}")
            return
        latencies.append(time.perf_counter() - started)
        sent_bytes.append(sum(map(len, instances)))
        stored = len(instances) if response.status_code == 200 else 0
        try:
            document = response.json()
            stored = len(document.get(REFERENCED_SOP_SEQUENCE, {}).get("Value", []))
            failed = len(document.get(FAILED_SOP_SEQUENCE, {}).get("Value", []))
            if failed:
                failures.add(f"STOW request: HTTP {response.status_code}, {failed} failed SOP instances")
        except ValueError:
            pass
        if response.status_code not in (200, 202) and stored == 0:
            failures.add(f"STOW request: HTTP {response.status_code} {response.text[:200]!r}")
        stored_counts.append(stored)

    instance_count = sum(map(len, batches))
    log(f"STOW-RS {instance_count} instances (part {round_index + 1}/{rounds}), {len(batches)} requests of "
        f"{batch_size}, {workers} clients")
    wall_s = run_concurrently(send, len(batches), workers)
    stored_total = sum(stored_counts)
    log(f"STOW-RS: {stored_total / wall_s:.0f} instances/s{failure_note(failures)}")
    return {
        "instances_sent": instance_count, "instances_stored": stored_total, "bytes_sent": sum(sent_bytes),
        "wall_s": wall_s, "instances_per_s": stored_total / wall_s,
        "megabytes_per_s": sum(sent_bytes) / MEGABYTE / wall_s,
        "batch_latency": latency_summary(latencies), "failures": failures.to_json(),
    }


def failure_note(failures: FailureLog) -> str:
    return f", {failures.count} FAILURES (e.g. {failures.examples[0]})" if failures.count else ""


def verify_phase(client: DicomwebClient, manifest: Manifest, page_size: int = 1000) -> dict[str, Any]:
    """Count studies and instances through QIDO (paged): did everything sent get indexed?"""
    studies_found = 0
    instances_found = 0
    offset = 0
    while True:
        response = client.get(f"/studies?includefield={NUMBER_OF_STUDY_RELATED_INSTANCES}&limit={page_size}"
                              f"&offset={offset}", DICOM_JSON)
        response.raise_for_status()
        page = json_items(response)
        studies_found += len(page)
        for study in page:
            values = study.get(NUMBER_OF_STUDY_RELATED_INSTANCES, {}).get("Value", [0])
            instances_found += int(values[0])
        if len(page) < page_size:
            break
        offset += page_size
    expected_studies, expected_instances = len(manifest.studies), manifest.instance_count
    ok = studies_found == expected_studies and instances_found == expected_instances
    log(f"verify: {studies_found}/{expected_studies} studies, {instances_found}/{expected_instances} "
        f"instances{'' if ok else '  <-- MISMATCH'}")
    return {"studies_found": studies_found, "studies_expected": expected_studies,
            "instances_found": instances_found, "instances_expected": expected_instances, "ok": ok}


def qido_phase(client: DicomwebClient, query: QuerySpec, repeats: int, concurrent_clients: int,
               concurrent_requests: int, round_index: int, warmup: int = 2) -> dict[str, Any]:
    """One query: `repeats` sequential requests, then `concurrent_requests` from `concurrent_clients`."""
    failures = FailureLog()
    result_counts: list[int] = []
    first_case = round_index * (repeats + concurrent_requests)  # other parameter values in each round

    def search(case_index: int) -> float:
        case = query.cases[(first_case + case_index) % len(query.cases)]
        started = time.perf_counter()
        try:
            response = client.get(f"/studies?{case.query_string}", DICOM_JSON)
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            found = len(json_items(response))
        except (requests.RequestException, ValueError) as error:
            failures.add(f"{case.query_string}: {error}")
            return time.perf_counter() - started
        result_counts.append(found)
        if found != case.expected_results:
            failures.add(f"{case.query_string}: {found} results, expected {case.expected_results}")
        return elapsed

    for index in range(warmup):
        search(index)
    sequential = [search(index) for index in range(repeats)]
    concurrent: list[float] = []
    wall_s = 0.0
    if concurrent_clients > 0 and concurrent_requests > 0:
        wall_s = run_concurrently(lambda index: concurrent.append(search(index)), concurrent_requests,
                                  concurrent_clients)
    result = {
        "sequential": latency_summary(sequential),
        "concurrent": {**latency_summary(concurrent), "requests_per_s": len(concurrent) / wall_s if wall_s else 0},
        "median_results": statistics.median(result_counts) if result_counts else 0,
        "failures": failures.to_json(),
    }
    log(f"{query.label}: median {result['sequential'].get('median_ms', 0):.1f} ms"
        + (f", {concurrent_clients} clients {result['concurrent']['requests_per_s']:.1f} req/s" if wall_s else "")
        + failure_note(failures))
    return result


def series_sample(manifest: Manifest, count: int) -> list[tuple[StudyEntry, SeriesEntry]]:
    every_series = manifest.all_series()
    count = min(count, len(every_series))
    return [every_series[index * len(every_series) // count] for index in range(count)]


def wado_phase(client: DicomwebClient, manifest: Manifest, series_count: int, sequential_count: int,
               workers: int, round_index: int, rounds: int) -> dict[str, Any]:
    sample = round_slice(series_sample(manifest, series_count), round_index, rounds)
    failures = FailureLog()
    received_bytes: list[int] = []
    received_instances: list[int] = []

    def retrieve(index: int) -> float:
        study, series = sample[index % len(sample)]
        started = time.perf_counter()
        try:
            response = client.get(f"/studies/{study.uid}/series/{series.uid}", MULTIPART_DICOM)
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            parts = count_multipart_parts(response)
        except (requests.RequestException, ValueError) as error:
            failures.add(f"series {series.uid}: {error}")
            return time.perf_counter() - started
        received_bytes.append(len(response.content))
        received_instances.append(parts)
        if parts != series.instance_count:
            failures.add(f"series {series.uid}: {parts} instances, expected {series.instance_count}")
        return elapsed

    retrieve(0)  # warm-up
    sequential = [retrieve(index) for index in range(min(sequential_count, len(sample)))]
    received_bytes.clear()
    received_instances.clear()
    concurrent: list[float] = []
    wall_s = run_concurrently(lambda index: concurrent.append(retrieve(index)), len(sample), workers)
    result = {
        "series": len(sample), "wall_s": wall_s,
        "megabytes_per_s": sum(received_bytes) / MEGABYTE / wall_s,
        "instances_per_s": sum(received_instances) / wall_s,
        "sequential": latency_summary(sequential), "concurrent": latency_summary(concurrent),
        "failures": failures.to_json(),
    }
    log(f"WADO-RS {len(sample)} series, {workers} clients: {result['megabytes_per_s']:.1f} MB/s"
        + failure_note(failures))
    return result


def metadata_phase(client: DicomwebClient, manifest: Manifest, repeats: int, round_index: int,
                   rounds: int) -> dict[str, Any]:
    sample = round_slice(series_sample(manifest, repeats * rounds), round_index, rounds)
    failures = FailureLog()

    def fetch(index: int) -> float:
        study, series = sample[index % len(sample)]
        started = time.perf_counter()
        try:
            response = client.get(f"/studies/{study.uid}/series/{series.uid}/metadata", DICOM_JSON)
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            found = len(json_items(response))
        except (requests.RequestException, ValueError) as error:
            failures.add(f"series {series.uid}: {error}")
            return time.perf_counter() - started
        if found != series.instance_count:
            failures.add(f"series {series.uid}: metadata of {found} instances, expected "
                         f"{series.instance_count}")
        return elapsed

    fetch(0)
    latencies = [fetch(index) for index in range(repeats)]
    log(f"WADO-RS series metadata: median {1000 * statistics.median(latencies):.1f} ms"
        + failure_note(failures))
    return {"sequential": latency_summary(latencies), "failures": failures.to_json()}


def execute(client: DicomwebClient, manifest: Manifest, command: dict[str, Any]) -> dict[str, Any]:
    options = command["options"]
    round_index, rounds = command.get("round", 0), command.get("rounds", 1)
    match command["phase"]:
        case "stow":
            return stow_phase(client, manifest, options["stow_batch"], options["stow_clients"], round_index,
                              rounds)
        case "verify":
            return verify_phase(client, manifest)
        case "qido":
            return qido_phase(client, QuerySpec.from_json(command["query"]), options["qido_repeats"],
                              options["qido_clients"], options["qido_concurrent_requests"], round_index)
        case "wado":
            return wado_phase(client, manifest, options["wado_series"], options["wado_sequential"],
                              options["wado_clients"], round_index, rounds)
        case "metadata":
            return metadata_phase(client, manifest, options["metadata_repeats"], round_index, rounds)
    raise ValueError(f"unknown phase {command['phase']!r}")


def serve_commands(base_url: str, manifest_folder: Path) -> None:
    """One JSON command per stdin line → one JSON result per stdout line, until stdin closes."""
    client = DicomwebClient(base_url)
    manifest = Manifest.load(manifest_folder)
    for line in sys.stdin:
        command = json.loads(line)
        try:
            result = execute(client, manifest, command)
        except Exception as error:  # one broken endpoint must not hide the others' figures
            log(f"{command['phase']} failed: {error!r}")
            result = {"error": f"{command['phase']}: {error!r}", "traceback": traceback.format_exc(limit=4)}
        print(json.dumps(result), flush=True)


class ClientProcess:
    """The orchestrator's handle on a client process (run inside the server's network namespace if any)."""

    def __init__(self, prefix: Sequence[str], base_url: str, manifest_folder: Path) -> None:
        self.process = subprocess.Popen(
            [*prefix, sys.executable, __file__, base_url, str(manifest_folder)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent)

    def run(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"client process exited with status {self.process.wait()}")
        return json.loads(line)

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} DICOMWEB_ROOT_URL DATASET_FOLDER  (commands on stdin)")
    serve_commands(sys.argv[1], Path(sys.argv[2]))
