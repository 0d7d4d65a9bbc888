"""DIMSE benchmark: the gateway's DICOM node and PACS client against Orthanc, side by side in one run.

    python tests/bench/bench_dimse.py --out bench-dimse.md          # full run (~5 min on 2 cores)
    python tests/bench/bench_dimse.py --instances 100 --repeats 1    # smoke run

1. C-STORE ingest from dcmtk's ``storescu``: a CT series of ``--instances`` 512×512 16-bit images (≈ 0.5 MB
   each) into a fresh gateway (``gateway serve --dimse-port``, SQLite) and a fresh Orthanc 1.10 (SQLite index),
   over one association and over 4 parallel associations; instances/s and MB/s (median of ``--repeats``).
2. C-FIND study-level latency over one association (pynetdicom client), 2,000 small instances in 50 studies
   stored in each: by PatientID, by StudyDate range + ModalitiesInStudy, and all studies.
3. Pulling the CT series (one study) from Orthanc into a fresh gateway with ``gateway pacs pull`` by C-MOVE,
   C-GET and WADO-RS, against the raw transfer of the same study: Orthanc C-MOVEing it to dcmtk's
   ``storescp`` (which writes each file to disk) for the DIMSE methods, and ``curl`` downloading the WADO-RS
   multipart response to a file for WADO-RS. Two gateway figures: the job itself (from its recorded start
   and finish) and the whole ``gateway`` process (interpreter start, imports, migrations included).

Targets (issue 3): ingest at least Orthanc's rate; pull time within 1.2× of the raw transfer time. Orthanc
listens on all interfaces (1.10 has no bind option) with remote HTTP access off and only known DICOM peers
(on 127.0.0.1, host checked); everything here talks to loopback. Not collected by pytest (no ``test_``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
BENCH_DIRECTORY = Path(__file__).resolve().parent
sys.path.insert(0, str(REPOSITORY_ROOT))
sys.path.insert(0, str(BENCH_DIRECTORY))

from _dataset import ensure_dataset  # noqa: E402
from _process import ManagedProcess, exit_cleanly_on_termination, free_tcp_port, log  # noqa: E402

from tests.orthanc_peer import OrthancPeer  # noqa: E402

DCMTK = Path("/usr/bin")
GATEWAY_AE, BENCH_AE, STORESCP_AE = "GATEWAY", "BENCH", "STORESCP"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class Series:
    folder: Path
    files: list[Path]
    study_uid: str

    @property
    def bytes(self) -> int:
        return sum(path.stat().st_size for path in self.files)


def ct_series(cache: Path, instances: int) -> Series:
    """A 512×512 16-bit CT series, generated once into the cache."""
    folder = cache / f"dimse-ct-{instances}"
    marker = folder / "study_uid.txt"
    if marker.exists():
        return Series(folder, sorted(folder.glob("*.dcm")), marker.read_text().strip())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    log(f"generating a {instances}-instance 512x512 CT series into {folder}")
    study_uid, series_uid = generate_uid(), generate_uid()
    rng = np.random.default_rng(7)
    body = np.hypot(*np.meshgrid(np.arange(512) - 256, np.arange(512) - 256)) < 200
    for number in range(1, instances + 1):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "BENCH-CT", "BENCH^CT", "19600101", "F"
        ds.StudyDate = ds.SeriesDate = "20240301"
        ds.StudyTime = "101500"
        ds.AccessionNumber, ds.StudyID, ds.StudyDescription = "BENCH-500", "1", "CT THORAX"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.BodyPartExamined = "CT", 1, number, "CHEST"
        ds.ReferringPhysicianName = ""
        ds.ImagePositionPatient = [-200.0, -200.0, float(number)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [0.78, 0.78], 1.0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = 512
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        pixels = np.where(body, 1024 + 40, 0) + rng.integers(0, 60, size=(512, 512))
        ds.PixelData = pixels.astype(np.uint16).tobytes()
        ds.save_as(folder / f"{number:04d}.dcm", enforce_file_format=True)
    marker.write_text(study_uid)
    return Series(folder, sorted(folder.glob("*.dcm")), study_uid)


class Gateway:
    """`gateway serve --dimse-port` on a fresh data dir."""

    def __init__(self, work_dir: Path, pacs: OrthancPeer | None = None) -> None:
        self.work_dir = work_dir
        self.dimse_port = free_tcp_port()
        self.http_port = free_tcp_port()
        self.config = work_dir / "gateway.toml"
        self.pacs = pacs
        self.process: ManagedProcess | None = None

    def write_config(self, dimse_port: int | None = None) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        text = (f'[dimse]\nport = {dimse_port or self.dimse_port}\nae_title = "{GATEWAY_AE}"\n'
                f'allow_query = ["{BENCH_AE}"]\nallow_retrieve = ["{BENCH_AE}"]\n')
        if self.pacs is not None:
            text += (f'\n[pacs.orthanc]\nae_title = "{self.pacs.ae_title}"\nhost = "127.0.0.1"\n'
                     f'port = {self.pacs.dicom_port}\ndicomweb_url = "{self.pacs.dicomweb}"\n')
        self.config.write_text(text, encoding="utf-8")

    def __enter__(self) -> Gateway:
        self.write_config()
        command = [sys.executable, "-m", "gateway.cli", "serve", "--data-dir", str(self.work_dir / "data"),
                   "--config", str(self.config), "--port", str(self.http_port), "--log-level", "WARNING"]
        self.process = ManagedProcess("gateway", command, self.work_dir / "gateway.log")
        self.process.wait_until(lambda: echo(GATEWAY_AE, self.dimse_port), 120, "answering C-ECHO")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.stop()


def echo(ae_title: str, port: int) -> bool:
    return subprocess.run([str(DCMTK / "echoscu"), "-aet", BENCH_AE, "-aec", ae_title, "127.0.0.1", str(port)],
                          capture_output=True, check=False).returncode == 0


def orthanc(work_dir: Path, gateway_port: int = 1) -> OrthancPeer:
    return OrthancPeer(work_dir, GATEWAY_AE, gateway_port,
                       other_modalities={BENCH_AE: free_tcp_port(), STORESCP_AE: free_tcp_port()})


def storescu(ae_title: str, port: int, files: list[Path], associations: int, nagle: bool = True) -> float:
    """Seconds for ``associations`` parallel storescu processes to send ``files`` (split evenly).

    DCMTK keeps Nagle's algorithm on unless its environment sets TCP_NODELAY=1, as a modality's DCMTK-based
    sender would; ``nagle=False`` measures the client with it off.
    """
    chunks = [files[index::associations] for index in range(associations)]
    environment = {**os.environ, "TCP_NODELAY": "0" if nagle else "1"}

    def send(chunk: list[Path]) -> None:
        result = subprocess.run([str(DCMTK / "storescu"), "-aet", BENCH_AE, "-aec", ae_title, "127.0.0.1",
                                 str(port), *map(str, chunk)], capture_output=True, text=True, check=False,
                                env=environment)
        if result.returncode != 0:
            raise RuntimeError(f"storescu failed: {result.stderr[-1000:]}")

    started = time.perf_counter()
    with ThreadPoolExecutor(associations) as pool:
        list(pool.map(send, chunks))
    return time.perf_counter() - started


def find_latencies(ae_title: str, port: int, repeats: int) -> dict[str, float]:
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    from gateway.dimse.handlers import set_tcp_nodelay

    ae = AE(ae_title=BENCH_AE)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)

    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title, evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay)])
    assert assoc.is_established, f"{ae_title} refused the C-FIND association"
    queries: dict[str, dict[str, str]] = {
        "PatientID (1 patient)": {"PatientID": "__FIRST__"},
        "StudyDate range + ModalitiesInStudy=CT": {"StudyDate": "20100101-20191231", "ModalitiesInStudy": "CT"},
        "all studies (50)": {},
    }
    first = _study_find(assoc, {})
    queries["PatientID (1 patient)"]["PatientID"] = str(first[0].PatientID)
    medians: dict[str, float] = {}
    try:
        for label, keys in queries.items():
            timings = []
            for _ in range(repeats):
                started = time.perf_counter()
                _study_find(assoc, keys)
                timings.append(time.perf_counter() - started)
            medians[label] = statistics.median(timings) * 1000
    finally:
        assoc.release()
    return medians


def _study_find(assoc: object, keys: dict[str, str]) -> list[Dataset]:
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    for keyword in ("PatientID", "PatientName", "StudyDate", "StudyInstanceUID", "AccessionNumber",
                    "ModalitiesInStudy", "StudyDescription", "NumberOfStudyRelatedInstances"):
        setattr(identifier, keyword, keys.get(keyword, ""))
    found = []
    for status, match in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):  # type: ignore[attr-defined]
        if status and status.Status in (0xFF00, 0xFF01) and match is not None:
            found.append(match)
    return found


def raw_move_seconds(pacs: OrthancPeer, study_uid: str, folder: Path) -> float:
    """Orthanc C-MOVEs the study to dcmtk's storescp, which writes every file: the raw DIMSE transfer."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    port = pacs.other_modalities[STORESCP_AE]
    # Without TCP_NODELAY=1, storescp's own Nagle holds each C-STORE response back (22 s instead of 0.8 s here).
    scp = subprocess.Popen([str(DCMTK / "storescp"), "-aet", STORESCP_AE, "+xa", "-od", str(folder), str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={**os.environ, "TCP_NODELAY": "1"})
    try:
        time.sleep(0.3)
        started = time.perf_counter()
        moved = subprocess.run([str(DCMTK / "movescu"), "-S", "-aet", BENCH_AE, "-aec", pacs.ae_title, "-aem",
                                STORESCP_AE, "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
                                "127.0.0.1", str(pacs.dicom_port)], capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - started
        if moved.returncode != 0:
            raise RuntimeError(f"movescu failed: {moved.stderr[-1000:]}")
    finally:
        scp.terminate()
        scp.wait(10)
    return elapsed


def raw_wado_seconds(pacs: OrthancPeer, study_uid: str, target: Path) -> tuple[float, float]:
    """curl downloading the study's WADO-RS response to a file: (seconds, seconds including an fsync)."""
    started = time.perf_counter()
    subprocess.run(["curl", "-sf", "-o", str(target), "-H",
                    'Accept: multipart/related; type="application/dicom"; transfer-syntax=*',
                    f"{pacs.dicomweb}/studies/{study_uid}"], check=True)
    downloaded = time.perf_counter() - started
    descriptor = os.open(target, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return downloaded, time.perf_counter() - started


def gateway_pull_seconds(work_dir: Path, pacs: OrthancPeer, study_uid: str, method: str) -> tuple[float, float]:
    """(job seconds, whole-process seconds) for `gateway pacs pull` into a fresh data dir."""
    shutil.rmtree(work_dir, ignore_errors=True)
    gateway = Gateway(work_dir, pacs)
    # Orthanc knows the gateway's AE at a fixed port (its configuration), so the pulling CLI listens there.
    gateway.write_config(dimse_port=pacs.gateway_port)
    base = [sys.executable, "-m", "gateway.cli", "pacs", "pull", "--data-dir", str(work_dir / "data"),
            "--config", str(gateway.config), "--log-level", "WARNING"]
    # Migrations and first imports are not the pull: done once before the timed process.
    subprocess.run([sys.executable, "-m", "gateway.cli", "db", "upgrade", "--data-dir", str(work_dir / "data"),
                    "--config", str(gateway.config)], capture_output=True, check=True)
    started = time.perf_counter()
    result = subprocess.run([*base, "--pacs", "orthanc", "--study", study_uid, "--method", method],
                            capture_output=True, text=True, check=False)
    whole = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"gateway pacs pull ({method}) failed: {result.stderr[-2000:]}")
    jobs = subprocess.run([sys.executable, "-m", "gateway.cli", "jobs", "list", "--json", "--data-dir",
                           str(work_dir / "data"), "--config", str(gateway.config)],
                          capture_output=True, text=True, check=True)
    job = json.loads(jobs.stdout)[0]
    from datetime import datetime

    job_seconds = (datetime.fromisoformat(job["finished"].replace("Z", "+00:00"))
                   - datetime.fromisoformat(job["started"].replace("Z", "+00:00"))).total_seconds()
    return job_seconds, whole


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "eucaim-bench")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown tables here")
    parser.add_argument("--sections", default="ingest,find,pull", help="which parts to run (comma-separated)")
    args = parser.parse_args()
    exit_cleanly_on_termination()
    for tool in ("storescu", "movescu", "storescp", "echoscu"):
        if not (DCMTK / tool).exists():
            raise SystemExit(f"dcmtk's {tool} is missing: apt-get install dcmtk")
    series = ct_series(args.cache, args.instances)
    small = ensure_dataset(args.cache, 2000, seed=1)
    small_files = [small.folder / file for _, entry in small.all_series() for file in entry.files]
    megabytes = series.bytes / 1e6
    lines: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="bench-dimse-"))
    try:
        sections = set(args.sections.split(","))
        # 1. ingest
        rates: dict[tuple[str, int, bool], list[float]] = {}
        orthanc_version = ""
        variants = [(associations, nagle) for nagle in (True, False) for associations in (1, 4)]
        for repeat in range(args.repeats if "ingest" in sections else 0):
            order = ["gateway", "orthanc"] if repeat % 2 == 0 else ["orthanc", "gateway"]
            for server in order:
                for associations, nagle in variants:
                    folder = work / f"ingest-{server}-{repeat}-{associations}-{nagle}"
                    if server == "gateway":
                        with Gateway(folder) as gateway:
                            seconds = storescu(GATEWAY_AE, gateway.dimse_port, series.files, associations, nagle)
                    else:
                        with orthanc(folder) as peer:
                            orthanc_version = peer.version()
                            seconds = storescu(peer.ae_title, peer.dicom_port, series.files, associations, nagle)
                    rates.setdefault((server, associations, nagle), []).append(seconds)
                    log(f"ingest {server} x{associations} nagle={nagle}: {len(series.files) / seconds:.0f} "
                        "instances/s")
                    shutil.rmtree(folder, ignore_errors=True)
        if "ingest" in sections:
            lines += [f"### C-STORE ingest from storescu: {len(series.files)} CT instances, {megabytes:.0f} MB "
                      f"(median of {args.repeats})", "",
                      "| storescu | associations | gateway inst/s | gateway MB/s | Orthanc inst/s | Orthanc MB/s "
                      "| ratio |",
                      "|---|---:|---:|---:|---:|---:|---:|"]
            for associations, nagle in variants:
                gateway_s = median(rates[("gateway", associations, nagle)])
                orthanc_s = median(rates[("orthanc", associations, nagle)])
                client = "default (Nagle on)" if nagle else "TCP_NODELAY=1"
                lines.append(f"| {client} | {associations} | {len(series.files) / gateway_s:.0f} | "
                             f"{megabytes / gateway_s:.0f} | {len(series.files) / orthanc_s:.0f} | "
                             f"{megabytes / orthanc_s:.0f} | {orthanc_s / gateway_s:.2f}× |")

        if "find" in sections:
            # 2. C-FIND
            finds: dict[str, dict[str, float]] = {}
            with Gateway(work / "find-gateway") as gateway:
                storescu(GATEWAY_AE, gateway.dimse_port, small_files, 1)
                finds["gateway"] = find_latencies(GATEWAY_AE, gateway.dimse_port, 50)
            with orthanc(work / "find-orthanc") as peer:
                storescu(peer.ae_title, peer.dicom_port, small_files, 1)
                finds["orthanc"] = find_latencies(peer.ae_title, peer.dicom_port, 50)
            lines += ["", f"### C-FIND study level, one association, {len(small_files)} instances in "
                      f"{len(small.studies)} studies (median of 50, ms)", "",
                      "| query | gateway | Orthanc | ratio |", "|---|---:|---:|---:|"]
            for label in finds["gateway"]:
                lines.append(f"| {label} | {finds['gateway'][label]:.2f} | {finds['orthanc'][label]:.2f} | "
                             f"{finds['gateway'][label] / finds['orthanc'][label]:.2f}× |")

        if "pull" in sections:
            # 3. pull
            pull_rows: list[str] = []
            gateway_port = free_tcp_port()
            # Orthanc's DCMTK sends with Nagle's algorithm on unless TCP_NODELAY=1 is in its environment (its own
            # TcpNoDelay option is for HTTP): off here, so the raw transfer is not held back by dcmtk's storescp.
            with OrthancPeer(work / "pacs", GATEWAY_AE, gateway_port,
                             other_modalities={BENCH_AE: free_tcp_port(), STORESCP_AE: free_tcp_port()},
                             environment={"TCP_NODELAY": "1"}) as pacs:
                storescu(pacs.ae_title, pacs.dicom_port, series.files, 4)
                raw: dict[str, list[float]] = {"dimse": [], "wado": [], "wado+fsync": []}
                pulls: dict[str, list[tuple[float, float]]] = {"c-move": [], "c-get": [], "wado-rs": []}
                for repeat in range(args.repeats):
                    raw["dimse"].append(raw_move_seconds(pacs, series.study_uid, work / "raw-move"))
                    downloaded, durable = raw_wado_seconds(pacs, series.study_uid, work / "raw-wado.bin")
                    raw["wado"].append(downloaded)
                    raw["wado+fsync"].append(durable)
                    for method in pulls:
                        pulls[method].append(gateway_pull_seconds(work / f"pull-{method}", pacs, series.study_uid,
                                                                  method))
                        log(f"pull {method} (run {repeat + 1}): job {pulls[method][-1][0]:.2f} s, process "
                            f"{pulls[method][-1][1]:.2f} s")
            references = {"c-move": [("C-MOVE → dcmtk storescp", "dimse")],
                          "c-get": [("C-MOVE → dcmtk storescp", "dimse")],
                          "wado-rs": [("curl WADO-RS → file", "wado"), ("curl WADO-RS → file + fsync", "wado+fsync")]}
            for method, timings in pulls.items():
                job, whole = median([t[0] for t in timings]), median([t[1] for t in timings])
                for label, key in references[method]:
                    reference = median(raw[key])
                    pull_rows.append(f"| {method} | {job:.2f} | {whole:.2f} | {label}: {reference:.2f} | "
                                     f"{job / reference:.2f}× / {whole / reference:.2f}× |")
            lines += ["", f"### Pulling the {len(series.files)}-instance study from Orthanc "
                      f"(median of {args.repeats}, s)",
                      "", "| method | gateway job | gateway process | raw transfer | ratio (job / process) |",
                      "|---|---:|---:|---|---:|", *pull_rows]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    dcmtk_version = subprocess.run([str(DCMTK / "storescu"), "--version"], capture_output=True, text=True,
                                   check=False).stdout.splitlines()[:1]
    header = (f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
              f"Orthanc {orthanc_version}; {' '.join(dcmtk_version)}")
    report = "\n".join([header, "", *lines, ""])
    print(report)
    if args.out:
        args.out.write_text(report, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
