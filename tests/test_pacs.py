"""The gateway as a client of the hospital PACS: a real Orthanc plays the PACS.

The gateway finds studies in it (C-FIND and QIDO-RS) and pulls them with C-MOVE (to the gateway's own SCP),
C-GET and WADO-RS; what arrives is compared byte for byte with Orthanc's copies. Pulls are idempotent and
resumable (only what is missing moves), rate-limited, restricted to a time window when asked, and run as jobs
from the CLI and the HTTP API.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from gateway.node import Node
from gateway.services.jobs import CANCELLED, COMPLETED, FAILED, JobError
from gateway.store.models import Instance
from tests.conftest import ADMIN_TOKEN, make_settings, start_server
from tests.dicom_factory import make_dataset, new_uid, to_bytes
from tests.orthanc_peer import OrthancPeer, dicomweb_plugin, free_port, orthanc_binary

pytestmark = pytest.mark.skipif(
    (orthanc_binary() is None or dicomweb_plugin() is None or not Path("/usr/bin/storescp").exists())
    and not os.environ.get("CI"),
    reason="Orthanc or dcmtk is not installed (apt-get install orthanc orthanc-dicomweb dcmtk; tests/run_all.sh "
           "does this)")

CORPUS = Path(pydicom.__file__).parent / "data" / "test_files"
# Compressed and uncompressed files as a modality would send them: they must come back exactly as stored.
CORPUS_FILES = ("CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm")
GATEWAY_AE = "GATEWAY"
STORESCP_AE = "STORESCP"
DCMTK = Path("/usr/bin")


@dataclass
class PacsData:
    orthanc: OrthancPeer
    gateway_port: int
    study_a: str  # CT (6) + MR (3), accession ACC-A
    study_b: str  # 4 CT instances in Implicit VR Little Endian, accession ACC-B
    corpus_studies: dict[str, str]  # file name -> Study Instance UID
    sop_uids: dict[str, list[str]]  # study UID -> its SOP Instance UIDs
    dcmtk_received: dict[str, bytes]  # SOP Instance UID -> the file dcmtk's storescp wrote, bit-preserving


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsData]:
    gateway_port, storescp_port = free_port(), free_port()
    with OrthancPeer(tmp_path_factory.mktemp("orthanc"), GATEWAY_AE, gateway_port,
                     other_modalities={STORESCP_AE: storescp_port}) as orthanc:
        study_a, study_b = new_uid(), new_uid()
        sop_uids: dict[str, list[str]] = {study_a: [], study_b: []}
        ct, mr = new_uid(), new_uid()
        for number in range(1, 7):
            dataset = make_dataset(study_uid=study_a, series_uid=ct, instance_number=number, seed=number,
                                   patient_id="PACS-1", accession="ACC-A", study_date="20240105", rows=64, columns=64)
            orthanc.upload(to_bytes(dataset))
            sop_uids[study_a].append(str(dataset.SOPInstanceUID))
        for number in range(1, 4):
            dataset = make_dataset(study_uid=study_a, series_uid=mr, modality="MR", series_number=2, seed=20 + number,
                                   instance_number=number, patient_id="PACS-1", accession="ACC-A",
                                   study_date="20240105")
            orthanc.upload(to_bytes(dataset))
            sop_uids[study_a].append(str(dataset.SOPInstanceUID))
        series_b = new_uid()
        for number in range(1, 5):
            dataset = make_dataset(study_uid=study_b, series_uid=series_b, instance_number=number, seed=40 + number,
                                   patient_id="PACS-2", patient_name="Roe^Richard", accession="ACC-B",
                                   study_date="20230611", transfer_syntax="1.2.840.10008.1.2")
            orthanc.upload(to_bytes(dataset))
            sop_uids[study_b].append(str(dataset.SOPInstanceUID))
        corpus_studies = {}
        for name in CORPUS_FILES:
            data = (CORPUS / name).read_bytes()
            orthanc.upload(data)
            dataset = pydicom.dcmread(CORPUS / name)
            corpus_studies[name] = str(dataset.StudyInstanceUID)
            sop_uids.setdefault(str(dataset.StudyInstanceUID), []).append(str(dataset.SOPInstanceUID))
        received = _moved_to_storescp(orthanc, list(sop_uids), storescp_port, tmp_path_factory.mktemp("storescp"))
        yield PacsData(orthanc, gateway_port, study_a, study_b, corpus_studies, sop_uids, received)


def _moved_to_storescp(orthanc: OrthancPeer, studies: list[str], port: int, folder: Path) -> dict[str, bytes]:
    """Each study C-MOVEd by the PACS to dcmtk's storescp, which writes what it receives bit for bit."""
    storescp = subprocess.Popen([str(DCMTK / "storescp"), "-aet", STORESCP_AE, "+B", "+xa", "-od", str(folder),
                                 str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for study in studies:
            moved = subprocess.run([str(DCMTK / "movescu"), "-S", "-aet", STORESCP_AE, "-aec", orthanc.ae_title,
                                    "-aem", STORESCP_AE, "-k", "QueryRetrieveLevel=STUDY", "-k",
                                    f"StudyInstanceUID={study}", "127.0.0.1", str(orthanc.dicom_port)],
                                   capture_output=True, text=True, timeout=60, check=False)
            assert moved.returncode == 0, moved.stderr
    finally:
        storescp.terminate()
        storescp.wait(10)
    received = {}
    for path in folder.iterdir():
        received[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path.read_bytes()
    return received


def _pacs_table(pacs: PacsData, **extra: Any) -> dict[str, Any]:
    return {"hospital": {"ae_title": pacs.orthanc.ae_title, "host": "127.0.0.1", "port": pacs.orthanc.dicom_port,
                         "dicomweb_url": pacs.orthanc.dicomweb, **extra}}


@pytest.fixture
def gateway(tmp_path: Path, database_url: str, pacs: PacsData) -> Iterator[Node]:
    node = Node.open(make_settings(tmp_path / "data", database_url, dimse_port=pacs.gateway_port,
                                   ae_title=GATEWAY_AE, sections={"pacs": _pacs_table(pacs)}))
    yield node
    node.close()


def _stored_file(node: Node, sop_uid: str) -> bytes:
    with node.engine.connect() as connection:
        relative = connection.execute(Instance.__table__.select()  # type: ignore[attr-defined]
                                      .where(Instance.__table__.c.sop_instance_uid == sop_uid)).mappings().one()
    return (node.files.root / relative["file_path"]).read_bytes()


def _data_set(part10: bytes) -> tuple[str, bytes]:
    """Transfer syntax and the encoded data set after the File Meta Information."""
    dataset = pydicom.dcmread(pydicom.filebase.DicomBytesIO(part10), stop_before_pixels=True)
    meta_end = 132 + 12 + int(dataset.file_meta.FileMetaInformationGroupLength)
    return str(dataset.file_meta.TransferSyntaxUID), part10[meta_end:]


def _elements(part10: bytes) -> pydicom.Dataset:
    dataset = pydicom.dcmread(io.BytesIO(part10))
    dataset.pop(0xFFFCFFFC, None)  # Data Set Trailing Padding: media only (PS3.10 7.2)
    return dataset


def _run_pull(node: Node, **params: Any) -> dict[str, Any]:
    job = node.jobs.create(node, "pacs-pull", {"pacs": "hospital", **params})
    return node.jobs.run(node, job["id"])


def test_find_studies_over_dimse_and_dicomweb(gateway: Node, pacs: PacsData) -> None:
    service = gateway.extensions["pacs"]
    everything = service.find_studies("hospital", {})
    assert {study["StudyInstanceUID"] for study in everything} == set(pacs.sop_uids)
    by_patient = service.find_studies("hospital", {"PatientID": "PACS-1"})
    assert [(s["StudyInstanceUID"], s["AccessionNumber"], s["NumberOfStudyRelatedInstances"]) for s in by_patient] \
        == [(pacs.study_a, "ACC-A", 9)]
    assert set(by_patient[0]["ModalitiesInStudy"].split("\\")) == {"CT", "MR"}
    in_2023 = service.find_studies("hospital", {"StudyDate": "20230101-20231231", "ModalitiesInStudy": "CT"})
    assert {s["StudyInstanceUID"] for s in in_2023} >= {pacs.study_b}
    assert pacs.study_a not in {s["StudyInstanceUID"] for s in in_2023}

    # The same questions over QIDO-RS, when the PACS is configured with DICOMweb only.
    web_only = Node.open(make_settings(gateway.settings.data_dir.parent / "web-only", None, sections={
        "pacs": {"web": {"dicomweb_url": pacs.orthanc.dicomweb}}}))
    try:
        answer = web_only.extensions["pacs"].find_studies("web", {"AccessionNumber": "ACC-B"})
        assert [(s["StudyInstanceUID"], s["PatientID"]) for s in answer] == [(pacs.study_b, "PACS-2")]
        assert web_only.extensions["pacs"].pacs["web"].method == "wado-rs"
    finally:
        web_only.close()


@pytest.mark.parametrize("method", ["c-move", "c-get", "wado-rs"])
def test_pull_is_byte_identical_to_the_pacs_copy(gateway: Node, pacs: PacsData, method: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    studies = [pacs.study_a, *pacs.corpus_studies.values()]
    with caplog.at_level(logging.INFO, logger="gateway.audit"):
        job = _run_pull(gateway, studies=studies, method=method)
    assert job["state"] == COMPLETED, job["error"]
    expected = sum(len(pacs.sop_uids[study]) for study in studies)
    assert job["result"]["totals"] == {"studies": len(studies), "instances": expected, "alreadyPresent": 0,
                                       "retrieved": expected, "failed": 0}
    assert job["progress"]["done"] == job["progress"]["total"] == expected
    for study in studies:
        for sop_uid in pacs.sop_uids[study]:
            ours, theirs = _stored_file(gateway, sop_uid), pacs.orthanc.file(sop_uid)
            if method == "wado-rs":
                assert ours == theirs  # the whole file, File Meta Information included
            else:
                # DIMSE carries the data set only; each side writes its own File Meta Information.
                # DIMSE carries the data set only, as the sender encodes it (DCMTK drops trailing padding and
                # writes sequences with explicit lengths): the reference is what dcmtk's storescp, writing
                # bit-preserving, received from the same PACS; and element by element it is the PACS's file.
                assert _data_set(ours) == _data_set(pacs.dcmtk_received[sop_uid]), sop_uid
                assert _elements(ours) == _elements(theirs), sop_uid
    operation = {"c-move": "upstream-c-move", "c-get": "upstream-c-get", "wado-rs": "upstream-wado-rs"}[method]
    assert any(f"event={operation}" in record.getMessage() and "pacs=hospital" in record.getMessage()
               for record in caplog.records)


def test_a_pull_again_moves_only_what_is_missing(gateway: Node, pacs: PacsData) -> None:
    first = _run_pull(gateway, studies=[pacs.study_a], method="c-get")
    assert first["result"]["totals"]["retrieved"] == 9
    again = _run_pull(gateway, studies=[pacs.study_a], method="c-get")
    assert again["result"]["totals"] == {"studies": 1, "instances": 9, "alreadyPresent": 9, "retrieved": 0,
                                         "failed": 0}
    # Lose two instances of one series (as if a crash had interrupted the first pull there): only they return.
    lost = pacs.sop_uids[pacs.study_a][1:3]
    for sop_uid in lost:
        gateway.ingest.delete(pacs.study_a, None, sop_uid)
    for method in ("c-move", "wado-rs"):
        for sop_uid in lost:
            gateway.ingest.delete(pacs.study_a, None, sop_uid)
        resumed = _run_pull(gateway, studies=[pacs.study_a], method=method)
        assert resumed["result"]["totals"] == {"studies": 1, "instances": 9, "alreadyPresent": 7, "retrieved": 2,
                                               "failed": 0}, method
        for sop_uid in lost:
            assert _data_set(_stored_file(gateway, sop_uid)) == _data_set(pacs.dcmtk_received[sop_uid])


@pytest.mark.parametrize("method", ["c-move", "c-get", "wado-rs"])
def test_new_series_are_retrieved_unlisted_and_a_short_one_is_listed(gateway: Node, pacs: PacsData, method: str,
                                                                    caplog: pytest.LogCaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A series of which nothing is here is retrieved whole without listing its instances first (the count the
    PACS announces is checked afterwards); when fewer arrive, its list names the missing ones."""
    with caplog.at_level(logging.INFO, logger="gateway.audit"):
        job = _run_pull(gateway, studies=[pacs.study_a], method=method)
    assert job["state"] == COMPLETED and job["result"]["totals"]["retrieved"] == 9, job
    image_finds = [r.getMessage() for r in caplog.records if "event=upstream-c-find" in r.getMessage()
                   and "level=IMAGE" in r.getMessage()]
    assert image_finds == []  # two series, both new: no instance was listed
    # One instance of study B cannot be stored (as if the disk had refused it): its series comes up one short.
    from gateway.dicom.status import PROCESSING_FAILURE, InstanceRejected
    from gateway.services import ingest

    lost = pacs.sop_uids[pacs.study_b][2]
    parse = ingest.parse_instance

    def refusing(path: Path, *args: Any) -> Any:
        parsed = parse(path, *args)
        if parsed.sop_instance_uid == lost:
            raise InstanceRejected(PROCESSING_FAILURE, "refused by the test")
        return parsed

    monkeypatch.setattr(ingest, "parse_instance", refusing)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gateway.audit"):
        short = _run_pull(gateway, studies=[pacs.study_b], method=method)
    assert short["state"] == FAILED and "1 of 4 instances could not be retrieved" in short["error"], short
    listed = [r.getMessage() for r in caplog.records if "event=upstream-c-find" in r.getMessage()
              and "level=IMAGE" in r.getMessage()]
    assert len(listed) == 1 and "matches=4" in listed[0]  # the short series, listed after its retrieval
    assert gateway.counts()["instances"] == 9 + 3
    monkeypatch.undo()
    resumed = gateway.jobs.run(gateway, gateway.jobs.make_resumable(short["id"])["id"])
    assert resumed["state"] == COMPLETED, resumed
    assert resumed["result"]["totals"] == {"studies": 1, "instances": 4, "alreadyPresent": 3, "retrieved": 1,
                                           "failed": 0}


def test_bulk_pull_from_a_csv_of_accession_numbers_is_rate_limited(gateway: Node, pacs: PacsData,
                                                                   tmp_path: Path) -> None:
    from gateway.pacs.service import read_accession_numbers

    cohort = tmp_path / "cohort.csv"
    cohort.write_text("patient,Accession Number\nA,ACC-A\nB,ACC-B\nC,ACC-UNKNOWN\nB,ACC-B\n", encoding="utf-8")
    accessions = read_accession_numbers(cohort)
    assert accessions == ["ACC-A", "ACC-B", "ACC-UNKNOWN"]
    started = time.monotonic()
    job = _run_pull(gateway, accession_numbers=accessions, method="c-move", max_instances_per_second=10)
    elapsed = time.monotonic() - started
    assert job["state"] == COMPLETED, job["error"]
    assert job["result"]["notFound"] == ["ACC-UNKNOWN"]
    assert job["result"]["totals"]["retrieved"] == 13
    assert elapsed >= 12 / 10  # 13 instances at most 10 per second: the first is free


def test_a_pull_waits_for_its_time_window_and_can_be_cancelled(gateway: Node, pacs: PacsData) -> None:
    from datetime import datetime, timedelta

    now = datetime.now()
    closed = f"{(now + timedelta(hours=2)):%H:%M}-{(now + timedelta(hours=3)):%H:%M}"
    job = gateway.jobs.create(gateway, "pacs-pull", {"pacs": "hospital", "studies": [pacs.study_b],
                                                     "method": "c-get", "window": closed})
    import threading

    runner = threading.Thread(target=gateway.jobs.run, args=(gateway, job["id"]))
    runner.start()
    deadline = time.monotonic() + 20
    while "waiting for the pull window" not in gateway.jobs.get(job["id"])["progress"]["message"]:
        assert time.monotonic() < deadline, gateway.jobs.get(job["id"])
        time.sleep(0.1)
    gateway.jobs.request_cancel(job["id"])
    runner.join(20)
    final = gateway.jobs.get(job["id"])
    assert final["state"] == CANCELLED
    assert gateway.counts()["instances"] == 0


def test_bad_pull_requests_are_refused_before_anything_runs(gateway: Node, pacs: PacsData, tmp_path: Path) -> None:
    def refused(params: dict[str, Any], message: str) -> None:
        with pytest.raises(JobError, match=message):
            gateway.jobs.create(gateway, "pacs-pull", params)

    refused({"pacs": "nowhere", "studies": [pacs.study_a]}, "unknown PACS 'nowhere'")
    refused({"pacs": "hospital"}, "say what to pull")
    refused({"pacs": "hospital", "studies": ["not a uid"]}, "Study Instance UIDs")
    refused({"pacs": "hospital", "studies": [pacs.study_a], "method": "ftp"}, "not one of")
    refused({"pacs": "hospital", "query": {"Colour": "blue"}}, "unknown query keys")
    refused({"pacs": "hospital", "studies": [pacs.study_a], "max_instances_per_second": 0}, "positive")
    refused({"pacs": "hospital", "studies": [pacs.study_a], "window": "9-5"}, "time window")
    no_scp = Node.open(make_settings(tmp_path / "no-scp", None, sections={"pacs": _pacs_table(pacs)}))
    try:
        with pytest.raises(JobError, match="DIMSE port"):
            no_scp.jobs.create(no_scp, "pacs-pull", {"pacs": "hospital", "studies": [pacs.study_a],
                                                     "method": "c-move"})
    finally:
        no_scp.close()
    assert gateway.jobs.list() == []


def test_a_study_the_pacs_does_not_send_fails_the_job_visibly(gateway: Node, pacs: PacsData) -> None:
    # A PACS that knows the gateway under another AE title sends its C-MOVE nowhere we listen.
    gateway.extensions["pacs"].pacs["hospital"] = gateway.extensions["pacs"].pacs["hospital"].__class__(
        **{**gateway.extensions["pacs"].pacs["hospital"].__dict__, "move_destination": "ELSEWHERE"})
    job = _run_pull(gateway, studies=[pacs.study_b], method="c-move")
    assert job["state"] == FAILED
    assert "C-MOVE failed" in job["error"] or "could not be retrieved" in job["error"]
    assert gateway.counts()["instances"] == 0


def test_unreachable_pacs_is_a_clear_error(tmp_path: Path, pacs: PacsData) -> None:
    node = Node.open(make_settings(tmp_path / "data", None, sections={
        "pacs": {"down": {"ae_title": "DOWN", "host": "127.0.0.1", "port": free_port(), "timeout": 5}}}))
    try:
        from gateway.pacs.upstream import UpstreamError

        with pytest.raises(UpstreamError, match=r"PACS down .*did not accept"):
            node.extensions["pacs"].find_studies("down", {})
    finally:
        node.close()


def test_the_api_starts_a_pull_job_and_reports_progress(gateway: Node, pacs: PacsData) -> None:
    running, server, thread = start_server(gateway)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        listed = requests.get(f"{running.url}/api/pacs", headers=headers, timeout=10).json()
        assert listed[0]["name"] == "hospital" and "password" not in str(listed)
        found = requests.get(f"{running.url}/api/pacs/hospital/studies", params={"AccessionNumber": "ACC-B"},
                             headers=headers, timeout=30)
        assert found.status_code == 200 and found.json()[0]["StudyInstanceUID"] == pacs.study_b
        assert requests.get(f"{running.url}/api/pacs/hospital/studies", params={"Colour": "x"}, headers=headers,
                            timeout=10).status_code == 400
        assert requests.post(f"{running.url}/api/pacs/nowhere/pull", json={"studies": [pacs.study_b]},
                             headers=headers, timeout=10).status_code == 404
        assert requests.post(f"{running.url}/api/pacs/hospital/pull", json={"studies": [pacs.study_b]},
                             timeout=10).status_code == 401
        started = requests.post(f"{running.url}/api/pacs/hospital/pull",
                                json={"studies": [pacs.study_b], "method": "wado-rs"}, headers=headers, timeout=10)
        assert started.status_code == 202, started.text
        location = running.url + started.headers["Location"]
        deadline = time.monotonic() + 60
        while (job := requests.get(location, headers=headers, timeout=10).json())["state"] not in (COMPLETED, FAILED):
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
        assert job["state"] == COMPLETED, job
        assert job["progress"] == {"done": 4, "total": 4, "fraction": 1.0, "message": job["progress"]["message"]}
        assert job["result"]["totals"]["retrieved"] == 4
    finally:
        server.close()  # type: ignore[attr-defined]
        thread.join(5)


def test_cli_find_and_pull_with_a_progress_bar(tmp_path: Path, pacs: PacsData) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[dimse]
port = {pacs.gateway_port}
ae_title = "{GATEWAY_AE}"

[pacs.hospital]
ae_title = "{pacs.orthanc.ae_title}"
host = "127.0.0.1"
port = {pacs.orthanc.dicom_port}
dicomweb_url = "{pacs.orthanc.dicomweb}"
method = "c-move"
""", encoding="utf-8")
    def gateway_cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "gateway.cli", *args[:2], "--data-dir", str(tmp_path / "data"),
                   "--config", str(config), *args[2:]]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    found = gateway_cli("pacs", "find", "--pacs", "hospital", "--patient-id", "PACS-2")
    assert found.returncode == 0, found.stderr
    assert "ACC-B" in found.stdout and pacs.study_b in found.stdout and "1 study" in found.stdout
    pulled = gateway_cli("pacs", "pull", "--pacs", "hospital", "--study", pacs.study_b)
    assert pulled.returncode == 0, pulled.stderr
    assert "pulling from hospital" in pulled.stderr and "4/4" in pulled.stderr  # tqdm's bar
    assert '"retrieved": 4' in pulled.stdout
    again = gateway_cli("pacs", "pull", "--pacs", "hospital", "--study", pacs.study_b, "--dry-run")
    assert f"{pacs.study_b}: 4 instances upstream, 0 to retrieve" in again.stdout
    jobs = gateway_cli("jobs", "list")
    assert "pacs-pull" in jobs.stdout and "completed" in jobs.stdout
    unknown = gateway_cli("pacs", "pull", "--pacs", "elsewhere", "--study", pacs.study_b)
    assert unknown.returncode == 2 and "unknown PACS 'elsewhere'" in unknown.stderr


def test_the_deployment_example_configures_a_pacs() -> None:
    from gateway.config import load_settings
    from gateway.pacs.config import upstream_pacs

    example = Path(__file__).resolve().parent.parent / "deploy" / "gateway.toml.example"
    main = upstream_pacs(load_settings(example, environ={}))["main"]
    assert (main.ae_title, main.host, main.port, main.method) == ("PACS01", "10.0.0.5", 104, "c-move")
    assert main.max_instances_per_second == 50 and str(main.window) == "20:00-06:00"
    assert main.available_methods() == ["c-move", "c-get", "wado-rs"]
    # The other plug-ins' tables of the example parse too.
    from gateway.ehr.mllp import MllpConfig
    from gateway.ehr.resources import EhrConfig
    from gateway.fhir.service import FhirConfig

    settings = load_settings(example, environ={})
    assert FhirConfig.from_section(settings.section("fhir")).mrn_system.startswith("urn:oid:")
    assert MllpConfig.from_settings(settings).port == 2575
    assert EhrConfig.from_settings(settings).timezone == "Europe/Madrid"


@pytest.mark.parametrize(("table", "message"), [
    ({"ae_title": "PACS", "host": "h"}, "DIMSE needs ae_title, host and port together"),
    ({"dicomweb_url": "ftp://x"}, "http:// or https://"),
    ({}, "give DIMSE"),
    ({"ae_title": "PACS", "host": "h", "port": 104, "method": "wado-rs"}, "needs dicomweb_url"),
    ({"dicomweb_url": "http://x", "colour": "blue"}, "unknown keys colour"),
    ({"dicomweb_url": "http://x", "username": "u"}, "username and password go together"),
    ({"dicomweb_url": "http://x", "window": "25:00-06:00"}, "window"),
])
def test_bad_pacs_configuration_names_the_problem(table: dict[str, Any], message: str) -> None:
    from gateway.config import ConfigError, load_settings
    from gateway.pacs.config import upstream_pacs

    with pytest.raises(ConfigError, match=message):
        upstream_pacs(load_settings(None, {"sections": {"pacs": {"bad": table}}}, environ={}))


@pytest.mark.parametrize("method", ["c-move", "c-get"])
def test_a_pull_stores_what_it_retrieves_in_groups(gateway: Node, pacs: PacsData, method: str) -> None:
    """Sub-operations of a pull do not each wait for a sync and a commit; the pull's own check decides."""
    groups: list[int] = []
    store_group = gateway.ingest.store_uploads

    def counting(uploads: list[Path], expected_study_uid: str | None = None) -> list[Any]:
        groups.append(len(uploads))
        time.sleep(0.05)  # a slow disk: the next instances arrive meanwhile
        return store_group(uploads, expected_study_uid)

    gateway.ingest.store_uploads = counting  # type: ignore[method-assign]
    job = _run_pull(gateway, studies=[pacs.study_a], method=method)
    assert job["state"] == COMPLETED and job["result"]["totals"]["retrieved"] == 9
    assert sum(groups) == 9 and len(groups) < 9
    assert gateway.ingest.deferred_store_for(pacs.orthanc.ae_title) is None
