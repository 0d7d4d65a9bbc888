"""The DIMSE service provider against DCMTK's tools: echo, store, find, move, get, policy and failures.

The tools are called by absolute path: pynetdicom installs console scripts with the same names that shadow
them on PATH. The server runs in-process on a free port, over SQLite and PostgreSQL like the HTTP tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, build_role
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelGet, Verification
from sqlalchemy import func, select

import gateway.dimse.handlers as dimse_handlers
from gateway.dicom.status import InstanceRejected
from gateway.dimse import DimseServer
from gateway.node import Node
from gateway.services.ingest import parse_instance
from gateway.store.models import Instance
from tests.dicom_factory import make_dataset, new_uid, to_bytes

DCMTK = Path("/usr/bin")
pytestmark = pytest.mark.skipif(not (DCMTK / "storescu").exists(),
                                reason="DCMTK is not installed (/usr/bin/storescu is missing; tests/run_all.sh "
                                       "installs the dcmtk package)")
CORPUS = Path(pydicom.__file__).parent / "data" / "test_files"
# pydicom's test files in many transfer syntaxes and SOP classes, each with its own SOP Instance UID.
CORPUS_VALID = ["CT_small.dcm", "rtplan.dcm", "rtdose.dcm", "ExplVR_BigEnd.dcm", "MR_small_RLE.dcm",
                "JPEG2000.dcm", "JPEG-lossy.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_jpeg_gdcm.dcm",
                "GDCMJ2K_TextGBR.dcm", "test-SR.dcm", "liver_1frame.dcm", "waveform_ecg.dcm"]
# Valid too, but the same instance as one above in another transfer syntax: sent under a new SOP Instance UID.
CORPUS_RENUMBERED = ["MR_small_jpeg_ls_lossless.dcm", "SC_rgb_rle.dcm"]
# No StudyInstanceUID (three); truncated; no File Meta Information: STOW-RS refuses them, so must C-STORE.
CORPUS_INVALID = ["JPEGLSNearLossless_08.dcm", "JPEGLSNearLossless_16.dcm", "SC_rgb_jls_lossy_line.dcm",
                  "rtplan_truncated.dcm", "no_meta.dcm"]
# Q/R rights for the tools' default calling AE titles; the default policy is tested on its own.
TEST_POLICY: dict[str, Any] = {"dimse_allow_query": ["FINDSCU", "MOVESCU", "GETSCU"],
                               "dimse_allow_retrieve": ["MOVESCU", "GETSCU"]}


def dcmtk(tool: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DCMTK / tool), *args], capture_output=True, text=True, timeout=timeout, check=False)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on port {port}")
        time.sleep(0.05)


class _AuditLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@dataclass
class RunningDimse:
    node: Node
    server: DimseServer
    audit_lines: list[str]

    def run(self, tool: str, *options: str, aet: str | None = None, files: tuple[str, ...] = (),
            called: str = "GATEWAY") -> subprocess.CompletedProcess[str]:
        calling = ["-aet", aet] if aet else []
        return dcmtk(tool, "-aec", called, *calling, *options, "127.0.0.1", str(self.server.port), *files)

    def audit(self, *fragments: str) -> list[str]:
        """Audit lines containing every fragment."""
        return [line for line in self.audit_lines if all(fragment in line for fragment in fragments)]

    def instance_count(self) -> int:
        with self.node.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(Instance)).scalar() or 0)

    def stored(self, sop_uid: str) -> Path:
        with self.node.engine.connect() as connection:
            relative = connection.execute(select(Instance.file_path)
                                          .where(Instance.sop_instance_uid == sop_uid)).scalar_one()
        return self.node.files.absolute(relative)


@pytest.fixture
def start_dimse(node: Node) -> Iterator[Callable[..., RunningDimse]]:
    """Start DIMSE service providers on the test's node with settings overridden (peers, allow-lists)."""
    servers: list[DimseServer] = []
    lines = _AuditLines()
    audit_logger = logging.getLogger("gateway.audit")
    previous_level = audit_logger.level
    audit_logger.setLevel(logging.INFO)
    audit_logger.addHandler(lines)

    def start(**overrides: Any) -> RunningDimse:
        settings = dataclasses.replace(node.settings, **overrides)
        server = DimseServer(dataclasses.replace(node, settings=settings), host="127.0.0.1", port=0)
        servers.append(server)
        return RunningDimse(node, server, lines.lines)

    yield start
    for server in servers:
        server.close()
    audit_logger.removeHandler(lines)
    audit_logger.setLevel(previous_level)


@pytest.fixture
def dimse(start_dimse: Callable[..., RunningDimse]) -> RunningDimse:
    return start_dimse(**TEST_POLICY)


@dataclass
class StoreSCP:
    ae_title: str
    port: int
    directory: Path

    @property
    def peer(self) -> str:
        return f"ARCHIVE={self.ae_title}@127.0.0.1:{self.port}"

    def received(self) -> dict[str, Dataset]:
        datasets = (pydicom.dcmread(path) for path in self.directory.iterdir() if path.is_file())
        return {str(ds.SOPInstanceUID): ds for ds in datasets}

    def clear(self) -> None:
        for path in self.directory.iterdir():
            path.unlink()


@pytest.fixture
def start_storescp(tmp_path: Path) -> Iterator[Callable[..., StoreSCP]]:
    """DCMTK's storescp as a C-MOVE destination; by default accepting every transfer syntax it knows."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(ae_title: str = "STORESCP", *options: str) -> StoreSCP:
        directory = tmp_path / f"storescp-{ae_title}"
        directory.mkdir()
        port = _free_port()
        processes.append(subprocess.Popen(
            [str(DCMTK / "storescp"), "-aet", ae_title, *(options or ("+xa",)), "-od", str(directory), str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_for_port(port)
        return StoreSCP(ae_title, port, directory)

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)


@pytest.fixture
def storescp(start_storescp: Callable[..., StoreSCP]) -> StoreSCP:
    return start_storescp()


def _after_file_meta(data: bytes) -> bytes:
    group_length = struct.unpack("<I", data[140:144])[0]  # (0002,0000) UL right after the preamble and "DICM"
    return data[144 + group_length:]


def _comparable(dataset: Dataset) -> Dataset:
    """The data set without what a sender may legitimately drop or recompute: trailing padding, group lengths,
    and the VR of Pixel Data (DCMTK corrects encapsulated OW to OB); compare Pixel Data values on their own."""
    copy = Dataset()
    for element in dataset:
        if element.tag not in (0xFFFCFFFC, 0x7FE00010) and element.tag.element != 0:
            copy.add(element)
    return copy


def _spooled_uploads(node: Node) -> list[Path]:
    return list(node.files.tmp_dir.rglob("upload-*"))


def _stow_would_store(path: Path, scratch: Path) -> bool:
    upload = scratch / f"{uuid.uuid4().hex}.dcm"
    shutil.copyfile(path, upload)
    try:
        parse_instance(upload, 1024)
    except InstanceRejected:
        return False
    return True


# -- C-ECHO ----------------------------------------------------------------------------------------------------

def test_echo_and_called_ae_title_check(dimse: RunningDimse) -> None:
    assert dimse.run("echoscu").returncode == 0
    wrong = dimse.run("echoscu", called="ANY-SCP")
    assert wrong.returncode != 0 and "Called AE Title Not Recognized" in wrong.stderr
    assert dimse.audit("event=association outcome=accepted", "calling_ae=ECHOSCU", "services=echo")
    assert dimse.audit("outcome=rejected reason=called-ae-title-not-recognised", "called_ae=ANY-SCP",
                       "peer=127.0.0.1:")


# -- C-STORE ---------------------------------------------------------------------------------------------------

def _storescu_profile(files: list[Path], path: Path) -> Path:
    """A storescu profile proposing each SOP class in each transfer syntax found, one context per syntax, so
    that storescu sends every file as it is instead of converting it."""
    classes, syntaxes = set(), {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2"}
    for file in files:
        with contextlib.suppress(Exception):
            dataset = pydicom.dcmread(file, stop_before_pixels=True)
            classes.add(str(dataset.SOPClassUID))
            syntaxes.add(str(dataset.file_meta.TransferSyntaxUID))
    lines = ["[[TransferSyntaxes]]"]
    for number, syntax in enumerate(sorted(syntaxes)):
        lines += [f"[Syntax{number}]", f"TransferSyntax1 = {syntax}"]
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    contexts = [f"{sop_class}\\Syntax{number}" for sop_class in sorted(classes) for number in range(len(syntaxes))]
    assert len(contexts) <= 128
    lines += [f"PresentationContext{number} = {context}" for number, context in enumerate(contexts, start=1)]
    lines += ["[[Profiles]]", "[Default]", "PresentationContexts = Contexts"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_storescu_folder_stores_what_stow_would_keep(dimse: RunningDimse, tmp_path: Path) -> None:
    folder = tmp_path / "outgoing"
    folder.mkdir()
    study_uid = new_uid()
    made = {"explicit.dcm": to_bytes(make_dataset(study_uid=study_uid, seed=1)),
            "implicit.dcm": to_bytes(make_dataset(study_uid=study_uid, seed=2, transfer_syntax=ImplicitVRLittleEndian)),
            "multiframe.dcm": to_bytes(make_dataset(study_uid=study_uid, seed=3, frames=3, instance_number=3))}
    for name, data in made.items():
        (folder / name).write_bytes(data)
    for name in CORPUS_VALID + CORPUS_INVALID:
        shutil.copyfile(CORPUS / name, folder / name)
    for name in CORPUS_RENUMBERED:
        renumbered = pydicom.dcmread(CORPUS / name)
        renumbered.SOPInstanceUID = renumbered.file_meta.MediaStorageSOPInstanceUID = new_uid()
        renumbered.save_as(folder / name)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    expected_valid = {path.name for path in folder.iterdir() if _stow_would_store(path, scratch)}
    assert expected_valid == set(made) | set(CORPUS_VALID) | set(CORPUS_RENUMBERED)

    profile = _storescu_profile(sorted(folder.iterdir()), tmp_path / "storescu.cfg")
    result = dimse.run("storescu", "-nh", "-xf", str(profile), "Default", "+sd", files=(str(folder),))
    assert result.returncode in (0, 1), result.stderr  # 1: the invalid files were refused

    assert dimse.instance_count() == len(expected_valid)
    for name in sorted(expected_valid):
        source = pydicom.dcmread(folder / name)
        stored_path = dimse.stored(str(source.SOPInstanceUID))
        stored = pydicom.dcmread(stored_path)
        assert stored.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID, name
        assert stored.file_meta.MediaStorageSOPInstanceUID == source.SOPInstanceUID, name
        assert _comparable(stored) == _comparable(source), name
        assert stored.get("PixelData") == source.get("PixelData"), name
        if name in made:
            # What STOW-RS keeps is the uploaded file; C-STORE keeps the same data set byte for byte.
            assert _after_file_meta(stored_path.read_bytes()) == _after_file_meta(made[name]), name
        retrieved = dimse.node.retrieve.instance(str(source.StudyInstanceUID), str(source.SeriesInstanceUID),
                                                 str(source.SOPInstanceUID))
        assert dimse.node.retrieve.path(retrieved) == stored_path
    assert _spooled_uploads(dimse.node) == []


def test_deflated_instance_is_stored(dimse: RunningDimse) -> None:
    result = dimse.run("storescu", "-xd", files=(str(CORPUS / "image_dfl.dcm"),))
    assert result.returncode == 0, result.stderr
    assert dimse.instance_count() == 1


def test_storing_twice_is_idempotent_and_a_conflict_is_refused(dimse: RunningDimse, tmp_path: Path) -> None:
    dataset = make_dataset(seed=7)
    original = tmp_path / "original.dcm"
    original.write_bytes(to_bytes(dataset))
    first = dimse.run("storescu", files=(str(original),))
    assert first.returncode == 0, first.stderr
    stored_path = dimse.stored(str(dataset.SOPInstanceUID))
    stored_bytes = stored_path.read_bytes()
    again = dimse.run("storescu", files=(str(original),))
    assert again.returncode == 0, again.stderr
    assert dimse.instance_count() == 1 and stored_path.read_bytes() == stored_bytes

    dataset.PatientName = "Changed^Name"
    conflicting = tmp_path / "conflicting.dcm"
    conflicting.write_bytes(to_bytes(dataset))
    refused = dimse.run("storescu", "-v", files=(str(conflicting),))
    assert refused.returncode != 0 and "0x111" in refused.stderr  # Duplicate SOP Instance: different content
    assert dimse.instance_count() == 1 and stored_path.read_bytes() == stored_bytes


def test_same_instance_by_stow_then_c_store_is_a_duplicate(dimse: RunningDimse, tmp_path: Path) -> None:
    """Identity is the data set, not the File Meta Information each sender writes differently."""
    dataset = make_dataset(seed=8)
    data = to_bytes(dataset)
    assert dimse.node.ingest.store_bytes(data).status == "stored"  # the STOW-RS path, with its File Meta
    path = tmp_path / "same.dcm"
    path.write_bytes(data)
    again = dimse.run("storescu", files=(str(path),))  # dcmtk rebuilds the File Meta Information
    assert again.returncode == 0, again.stderr
    assert dimse.instance_count() == 1


class _CuttingProxy:
    """Forwards one connection to the gateway and drops it after ``limit`` bytes from the client."""

    def __init__(self, upstream_port: int, limit: int) -> None:
        self.limit = limit
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.forwarded = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        with contextlib.suppress(OSError):
            while self.forwarded < self.limit and (chunk := client.recv(65536)):
                chunk = chunk[:self.limit - self.forwarded]
                upstream.sendall(chunk)
                self.forwarded += len(chunk)
        for end in (client, upstream):  # the connection is gone mid C-STORE, without A-ABORT
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()
        self.listener.close()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                target.sendall(chunk)


def test_association_dropped_mid_store_leaves_the_store_consistent(dimse: RunningDimse, tmp_path: Path) -> None:
    large = make_dataset(rows=512, columns=512, frames=8, seed=9)  # 4 MiB of pixel data
    path = tmp_path / "large.dcm"
    path.write_bytes(to_bytes(large))
    proxy = _CuttingProxy(dimse.server.port, limit=1024 * 1024)
    cut = dcmtk("storescu", "-aec", "GATEWAY", "127.0.0.1", str(proxy.port), str(path))
    assert cut.returncode != 0
    assert proxy.forwarded == 1024 * 1024
    deadline = time.monotonic() + 10
    while dimse.server.ae.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)

    assert dimse.audit("event=association outcome=aborted", "calling_ae=STORESCU")
    assert dimse.instance_count() == 0
    assert [p for p in dimse.node.files.root.rglob("*") if p.is_file()] == []
    assert _spooled_uploads(dimse.node) == []
    # The node is unharmed: the same instance sent in full is stored.
    complete = dimse.run("storescu", files=(str(path),))
    assert complete.returncode == 0, complete.stderr
    assert pydicom.dcmread(dimse.stored(str(large.SOPInstanceUID))).PixelData == large.PixelData


# -- C-FIND ----------------------------------------------------------------------------------------------------

@dataclass
class Layout:
    """Two patients; patient A with two studies (the first with a CT and an MR series), patient B with one."""

    datasets: list[Dataset]

    def uids(self, keyword: str, **where: str) -> set[str]:
        return {str(ds.get(keyword)) for ds in self.datasets
                if all(str(ds.get(key)) == value for key, value in where.items())}

    def first(self, **where: str) -> Dataset:
        return next(ds for ds in self.datasets if all(str(ds.get(key)) == value for key, value in where.items()))


def seed(node: Node) -> Layout:
    datasets: list[Dataset] = []
    patient_a = {"patient_id": "PAT-A", "patient_name": "Doe^Jane", "PatientSex": "F"}
    patient_b = {"patient_id": "PAT-B", "patient_name": "Müller^Jürgen", "PatientSex": "M",
                 "PatientBirthDate": "19700202"}
    a1, a1_ct, a1_mr, a2, b1 = (new_uid() for _ in range(5))
    for number in (1, 2):
        datasets.append(make_dataset(study_uid=a1, series_uid=a1_ct, accession="ACC-A1", study_date="20200115",
                                     instance_number=number, seed=number, **patient_a))
    datasets.append(make_dataset(study_uid=a1, series_uid=a1_mr, modality="MR", series_number=2, accession="ACC-A1",
                                 study_date="20200115", seed=3, **patient_a))
    datasets.append(make_dataset(study_uid=a2, accession="ACC-A2", study_date="20210610", modality="MR", seed=4,
                                 **patient_a))
    series_b = new_uid()
    for number in (1, 2):
        datasets.append(make_dataset(study_uid=b1, series_uid=series_b, accession="ACC-B1", study_date="20200301",
                                     instance_number=number, seed=10 + number, **patient_b))
    for dataset in datasets:
        assert node.ingest.store_bytes(to_bytes(dataset)).status == "stored"
    return Layout(datasets)


def find(dimse: RunningDimse, tmp_path: Path, model: str, *keys: str, aet: str = "FINDSCU") -> list[Dataset]:
    out = tmp_path / f"find-{uuid.uuid4().hex[:8]}"
    out.mkdir()
    options = [model, "-X", "-od", str(out)] + [part for key in keys for part in ("-k", key)]
    result = dimse.run("findscu", *options, aet=aet)
    assert result.returncode == 0, result.stderr
    return [pydicom.dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


def _values(value: Any) -> list[Any]:
    return list(value) if isinstance(value, MultiValue) else [value]


def _keywords(dataset: Dataset) -> set[str]:
    return {element.keyword for element in dataset}


def test_find_at_every_level_of_both_models(dimse: RunningDimse, tmp_path: Path) -> None:
    layout = seed(dimse.node)
    a1 = str(layout.first(AccessionNumber="ACC-A1").StudyInstanceUID)
    a2 = str(layout.first(AccessionNumber="ACC-A2").StudyInstanceUID)
    b1 = str(layout.first(AccessionNumber="ACC-B1").StudyInstanceUID)

    patients = find(dimse, tmp_path, "-P", "QueryRetrieveLevel=PATIENT", "PatientID", "PatientName", "PatientSex",
                    "PatientBirthDate", "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedInstances")
    assert {(p.PatientID, str(p.PatientName), p.PatientSex, p.PatientBirthDate, int(p.NumberOfPatientRelatedStudies),
             int(p.NumberOfPatientRelatedInstances)) for p in patients} == {
        ("PAT-A", "Doe^Jane", "F", "19600101", 2, 4), ("PAT-B", "Müller^Jürgen", "M", "19700202", 1, 2)}
    # Only what was asked, the level and its unique key; UTF-8 declared because a name needs it.
    assert _keywords(patients[0]) <= {"QueryRetrieveLevel", "PatientID", "PatientName", "PatientSex",
                                      "PatientBirthDate", "NumberOfPatientRelatedStudies",
                                      "NumberOfPatientRelatedInstances", "SpecificCharacterSet"}
    assert {p.get("SpecificCharacterSet") for p in patients} == {None, "ISO_IR 192"}
    wildcard = find(dimse, tmp_path, "-P", "QueryRetrieveLevel=PATIENT", "PatientName=Do*", "PatientID")
    assert [p.PatientID for p in wildcard] == ["PAT-A"]

    for model in ("-P", "-S"):
        studies = find(dimse, tmp_path, model, "QueryRetrieveLevel=STUDY", "PatientID=PAT-A", "StudyInstanceUID",
                       "StudyDate", "AccessionNumber", "ModalitiesInStudy", "NumberOfStudyRelatedInstances")
        assert {s.StudyInstanceUID: (s.StudyDate, s.AccessionNumber, _values(s.ModalitiesInStudy),
                                     int(s.NumberOfStudyRelatedInstances)) for s in studies} == {
            a1: ("20200115", "ACC-A1", ["CT", "MR"], 3), a2: ("20210610", "ACC-A2", ["MR"], 1)}
        assert all(_keywords(s) == {"QueryRetrieveLevel", "PatientID", "StudyInstanceUID", "StudyDate",
                                    "AccessionNumber", "ModalitiesInStudy", "NumberOfStudyRelatedInstances"}
                   for s in studies)
    in_2020 = find(dimse, tmp_path, "-S", "QueryRetrieveLevel=STUDY", "StudyDate=20200101-20201231",
                   "StudyInstanceUID")
    assert {s.StudyInstanceUID for s in in_2020} == {a1, b1}
    from_2021 = find(dimse, tmp_path, "-S", "QueryRetrieveLevel=STUDY", "StudyDate=20210101-", "StudyInstanceUID")
    assert {s.StudyInstanceUID for s in from_2021} == {a2}
    accession_wildcard = find(dimse, tmp_path, "-S", "QueryRetrieveLevel=STUDY", "AccessionNumber=ACC-A?",
                              "StudyInstanceUID")
    assert {s.StudyInstanceUID for s in accession_wildcard} == {a1, a2}

    for model, upper in (("-S", []), ("-P", ["PatientID=PAT-A"])):
        series = find(dimse, tmp_path, model, "QueryRetrieveLevel=SERIES", *upper, f"StudyInstanceUID={a1}",
                      "SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances")
        assert {(s.SeriesInstanceUID, s.Modality, int(s.NumberOfSeriesRelatedInstances)) for s in series} == {
            (uid, "CT" if uid in layout.uids("SeriesInstanceUID", Modality="CT") else "MR",
             len(layout.uids("SOPInstanceUID", SeriesInstanceUID=uid)))
            for uid in layout.uids("SeriesInstanceUID", StudyInstanceUID=a1)}
        ct_series = next(s.SeriesInstanceUID for s in series if s.Modality == "CT")
        images = find(dimse, tmp_path, model, "QueryRetrieveLevel=IMAGE", *upper, f"StudyInstanceUID={a1}",
                      f"SeriesInstanceUID={ct_series}", "SOPInstanceUID", "SOPClassUID", "InstanceNumber")
        assert {(i.SOPInstanceUID, i.SOPClassUID, int(i.InstanceNumber)) for i in images} == {
            (str(ds.SOPInstanceUID), str(ds.SOPClassUID), int(ds.InstanceNumber))
            for ds in layout.datasets if ds.SeriesInstanceUID == ct_series}

    assert dimse.audit("event=c-find", "calling_ae=FINDSCU", "model=patient-root", "level=PATIENT", "+PatientID",
                       "+NumberOfPatientRelatedStudies", "matches=2", "status=0x0000")
    assert dimse.audit("event=c-find", "model=study-root", "level=STUDY", "StudyDate=20200101-20201231",
                       "matches=2")


def test_malformed_find_identifiers_fail_with_a_comment(dimse: RunningDimse) -> None:
    for keys, comment in ((["QueryRetrieveLevel=STUDY", "StudyDate=notadate"], "is not a valid date"),
                          (["QueryRetrieveLevel=STUDY", "StudyInstanceUID=1.2.abc"], "is not a valid UID"),
                          (["QueryRetrieveLevel=SOMETHING"], "must be PATIENT, STUDY, SERIES or IMAGE"),
                          (["QueryRetrieveLevel=PATIENT", "PatientID"], "Study Root model has no PATIENT")):
        result = dimse.run("findscu", "-S", "-d", *[part for key in keys for part in ("-k", key)], aet="FINDSCU")
        assert "DIMSE Status                  : 0xa900" in result.stderr, result.stderr
        assert comment in result.stderr
    assert len(dimse.audit("event=c-find", "status=0xA900", "comment=")) == 4


# -- C-MOVE and C-GET ------------------------------------------------------------------------------------------

def test_move_to_a_known_peer_sends_what_was_stored(start_dimse: Callable[..., RunningDimse], storescp: StoreSCP,
                                                    tmp_path: Path) -> None:
    dimse = start_dimse(peers=[storescp.peer], **TEST_POLICY)
    layout = seed(dimse.node)
    a1 = str(layout.first(AccessionNumber="ACC-A1").StudyInstanceUID)
    jpeg = _store_jpeg_in_study(dimse.node, a1, tmp_path / "jpeg.dcm")  # a compressed instance goes as stored

    def move(*keys: str, model: str = "-S", destination: str = "STORESCP") -> subprocess.CompletedProcess[str]:
        return dimse.run("movescu", model, "-aem", destination, *[part for key in keys for part in ("-k", key)],
                         aet="MOVESCU")

    result = move("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={a1}")
    assert result.returncode == 0 and "Unable" not in result.stderr, result.stderr
    received = storescp.received()
    assert set(received) == layout.uids("SOPInstanceUID", StudyInstanceUID=a1) | {str(jpeg.SOPInstanceUID)}
    for sop_uid, dataset in received.items():
        stored = pydicom.dcmread(dimse.stored(sop_uid))
        assert _comparable(dataset) == _comparable(stored)
        assert dataset.file_meta.TransferSyntaxUID == stored.file_meta.TransferSyntaxUID
    assert dimse.audit("event=c-move", "calling_ae=MOVESCU", "destination=STORESCP", "level=STUDY", "instances=4",
                       "completed=4", "failed=0", "warning=0", "status=0x0000")

    storescp.clear()
    ct_series = str(layout.first(StudyInstanceUID=a1, Modality="CT").SeriesInstanceUID)
    assert move("QueryRetrieveLevel=SERIES", "PatientID=PAT-A", f"StudyInstanceUID={a1}",
                f"SeriesInstanceUID={ct_series}", model="-P").returncode == 0
    assert set(storescp.received()) == layout.uids("SOPInstanceUID", SeriesInstanceUID=ct_series)

    storescp.clear()
    one = layout.first(PatientID="PAT-B")
    assert move("QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={one.StudyInstanceUID}",
                f"SeriesInstanceUID={one.SeriesInstanceUID}", f"SOPInstanceUID={one.SOPInstanceUID}").returncode == 0
    assert set(storescp.received()) == {str(one.SOPInstanceUID)}

    storescp.clear()
    assert move("QueryRetrieveLevel=PATIENT", "PatientID=PAT-B", model="-P").returncode == 0
    assert set(storescp.received()) == layout.uids("SOPInstanceUID", PatientID="PAT-B")
    assert dimse.audit("event=c-move", "model=patient-root", "level=PATIENT", "instances=2", "completed=2")

    unknown = move("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={a1}", destination="NOWHERE")
    assert "MoveDestinationUnknown" in unknown.stderr
    assert dimse.audit("event=c-move", "destination=NOWHERE", "status=0xA801")
    bad = move("QueryRetrieveLevel=SERIES", f"StudyInstanceUID={a1}")  # no SeriesInstanceUID
    assert "DataSetDoesNotMatchSOPClass" in bad.stderr or "Failed" in bad.stderr, bad.stderr
    assert dimse.audit("event=c-move", "level=SERIES", "status=0xA900")


def _store_jpeg_in_study(node: Node, study_uid: str, path: Path) -> Dataset:
    """A JPEG Baseline instance from pydicom's corpus, put into a study of the test's."""
    jpeg = pydicom.dcmread(CORPUS / "SC_rgb_jpeg_dcmtk.dcm")
    jpeg.StudyInstanceUID, jpeg.PatientID = study_uid, "PAT-A"
    jpeg.save_as(path)
    assert node.ingest.store_bytes(path.read_bytes()).status == "stored"
    return jpeg


def test_get_returns_instances_with_sub_operation_counts(dimse: RunningDimse, tmp_path: Path) -> None:
    layout = seed(dimse.node)
    a1 = str(layout.first(AccessionNumber="ACC-A1").StudyInstanceUID)
    jpeg = _store_jpeg_in_study(dimse.node, a1, tmp_path / "jpeg.dcm")
    wanted = layout.uids("SOPInstanceUID", StudyInstanceUID=a1) | {str(jpeg.SOPInstanceUID)}

    def get(out: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Dataset]]:
        out.mkdir()
        result = dimse.run("getscu", "-S", "-v", "-od", str(out), "-k", "QueryRetrieveLevel=STUDY", "-k",
                           f"StudyInstanceUID={a1}", aet="GETSCU")
        return result, {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, out.iterdir())}

    # getscu takes only uncompressed storage: the JPEG instance reaches it decoded, everything else as stored.
    result, got = get(tmp_path / "get1")
    assert set(got) == wanted
    assert "Number of Completed Suboperations : 4" in result.stderr, result.stderr
    for sop_uid, dataset in got.items():
        stored = pydicom.dcmread(dimse.stored(sop_uid))
        if sop_uid == jpeg.SOPInstanceUID:
            assert dataset.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
            assert (dataset.pixel_array == stored.pixel_array).all()
        else:
            assert _comparable(dataset) == _comparable(stored) and dataset.PixelData == stored.PixelData
    assert dimse.audit("event=c-get", "calling_ae=GETSCU", "level=STUDY", "instances=4", "completed=4",
                       "failed=0", "warning=0", "status=0x0000")

    # An instance whose file has gone missing fails on its own; the others are still sent.
    lost = sorted(layout.uids("SOPInstanceUID", StudyInstanceUID=a1))[0]
    dimse.stored(lost).unlink()
    result, got = get(tmp_path / "get2")
    assert set(got) == wanted - {lost}
    assert "Number of Completed Suboperations : 3" in result.stderr
    assert "Number of Failed Suboperations    : 1" in result.stderr
    assert dimse.audit("event=c-get", "instances=4", "completed=3", "failed=1", "warning=0", "status=0xB000")


def test_move_decodes_for_a_peer_that_takes_no_compression(start_dimse: Callable[..., RunningDimse],
                                                           start_storescp: Callable[..., StoreSCP],
                                                           tmp_path: Path) -> None:
    plain_peer = start_storescp("PLAIN", "+xe")  # uncompressed transfer syntaxes only
    dimse = start_dimse(peers=[plain_peer.peer], **TEST_POLICY)
    study_uid = new_uid()
    jpeg = _store_jpeg_in_study(dimse.node, study_uid, tmp_path / "jpeg.dcm")
    moved = dimse.run("movescu", "-S", "-aem", "PLAIN", "-k", "QueryRetrieveLevel=STUDY", "-k",
                      f"StudyInstanceUID={study_uid}", aet="MOVESCU")
    assert moved.returncode == 0, moved.stderr
    received = plain_peer.received()[str(jpeg.SOPInstanceUID)]
    assert received.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert (received.pixel_array == pydicom.dcmread(dimse.stored(str(jpeg.SOPInstanceUID))).pixel_array).all()
    assert dimse.audit("event=c-move", "destination=PLAIN", "completed=1", "failed=0")


# -- association policy and sockets ----------------------------------------------------------------------------

def test_policy_refuses_unknown_callers_and_unallowed_services(start_dimse: Callable[..., RunningDimse],
                                                               tmp_path: Path) -> None:
    dimse = start_dimse(peers=["WS=WORKSTATION@127.0.0.1:104"], dimse_allow_echo=["MODALITY", "@peers"],
                        dimse_allow_store=["MODALITY"], dimse_allow_query=["@peers"],
                        dimse_allow_retrieve=["@peers"])
    instance = tmp_path / "instance.dcm"
    instance.write_bytes(to_bytes(make_dataset(seed=5)))

    intruder = dimse.run("echoscu", aet="INTRUDER")
    assert intruder.returncode != 0 and "Calling AE Title Not Recognized" in intruder.stderr
    assert dimse.audit("event=association outcome=rejected reason=calling-ae-title-not-recognised",
                       "calling_ae=INTRUDER")
    assert dimse.run("storescu", aet="INTRUDER", files=(str(instance),)).returncode != 0

    # The modality may echo and store but not query; the workstation may query but not store.
    assert dimse.run("echoscu", aet="MODALITY").returncode == 0
    modality_query = dimse.run("findscu", "-S", "-k", "QueryRetrieveLevel=STUDY", aet="MODALITY")
    assert modality_query.returncode != 0 and "No Acceptable Presentation Contexts" in modality_query.stderr
    assert dimse.audit("outcome=accepted", "calling_ae=MODALITY", "services=none", "refused=query")
    workstation_store = dimse.run("storescu", aet="WORKSTATION", files=(str(instance),))
    assert workstation_store.returncode != 0
    assert dimse.instance_count() == 0
    assert dimse.run("storescu", aet="MODALITY", files=(str(instance),)).returncode == 0
    assert dimse.run("findscu", "-S", "-k", "QueryRetrieveLevel=STUDY", aet="WORKSTATION").returncode == 0
    assert dimse.instance_count() == 1


def test_default_policy_lets_anyone_store_and_only_peers_query(start_dimse: Callable[..., RunningDimse],
                                                               tmp_path: Path) -> None:
    dimse = start_dimse(peers=["VIEWER=VIEWER@127.0.0.1:104"])
    instance = tmp_path / "instance.dcm"
    instance.write_bytes(to_bytes(make_dataset(seed=6)))
    assert dimse.run("echoscu", aet="ANYONE").returncode == 0
    assert dimse.run("storescu", aet="CT_SCANNER_7", files=(str(instance),)).returncode == 0
    assert dimse.run("findscu", "-S", "-k", "QueryRetrieveLevel=STUDY", aet="FINDSCU").returncode != 0
    assert dimse.run("getscu", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID=1.2.3",
                     aet="GETSCU").returncode != 0
    assert dimse.run("findscu", "-S", "-k", "QueryRetrieveLevel=STUDY", aet="VIEWER").returncode == 0


def test_a_retriever_cannot_store_over_its_c_get_contexts(start_dimse: Callable[..., RunningDimse]) -> None:
    dimse = start_dimse(dimse_allow_store=["MODALITY"], dimse_allow_retrieve=["RETRIEVER"])
    requestor = AE(ae_title="RETRIEVER")
    requestor.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    requestor.add_requested_context(CTImageStorage)
    association = requestor.associate("127.0.0.1", dimse.server.port, ae_title="GATEWAY",
                                      ext_neg=[build_role(CTImageStorage, scu_role=True, scp_role=True)])
    try:
        assert association.is_established
        status = association.send_c_store(make_dataset(seed=8))
        assert status.Status == 0x0124  # Refused: not authorised
    finally:
        association.release()
    assert dimse.instance_count() == 0


def test_every_dimse_socket_has_tcp_nodelay(start_dimse: Callable[..., RunningDimse], storescp: StoreSCP,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    dimse = start_dimse(peers=[storescp.peer], **TEST_POLICY)
    requestor = AE(ae_title="ECHOSCU")
    requestor.add_requested_context(Verification)
    association = requestor.associate("127.0.0.1", dimse.server.port, ae_title="GATEWAY")
    try:
        acceptors = dimse.server.ae.active_associations
        assert acceptors
        assert all(a.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for a in acceptors)
    finally:
        association.release()

    outgoing: list[int] = []
    set_tcp_nodelay = dimse_handlers.set_tcp_nodelay

    def recording(event: Any) -> None:
        set_tcp_nodelay(event)
        outgoing.append(event.assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(dimse_handlers, "set_tcp_nodelay", recording)
    dataset = make_dataset(seed=12)
    dimse.node.ingest.store_bytes(to_bytes(dataset))
    moved = dimse.run("movescu", "-S", "-aem", "STORESCP", "-k", "QueryRetrieveLevel=STUDY", "-k",
                      f"StudyInstanceUID={dataset.StudyInstanceUID}", aet="MOVESCU")
    assert moved.returncode == 0 and set(storescp.received()) == {str(dataset.SOPInstanceUID)}
    assert outgoing and all(outgoing)  # the sub-association to the move destination


# -- settings and the process of its own -----------------------------------------------------------------------

def test_dimse_settings_from_toml_environment_and_flags(tmp_path: Path) -> None:
    from gateway.cli import _settings, build_parser
    from gateway.config import ConfigError, Peer, load_settings

    config = tmp_path / "gateway.toml"
    config.write_text('[server]\nport = 8080\n[dimse]\nport = 11112\nae_title = "HOSPITAL_GW"\n'
                      'peers = ["PACS=PACS01@10.0.0.5:104", "WS=WS01@[fd00::7]:11112"]\n'
                      'allow_store = ["MODALITY1", "@peers"]\nallow_query = ["*"]\n')
    settings = load_settings(config, environ={"GATEWAY_DIMSE_ALLOW_RETRIEVE": "WS01"})
    assert (settings.port, settings.dimse_port, settings.ae_title) == (8080, 11112, "HOSPITAL_GW")
    assert settings.dimse_peers == [Peer("PACS", "PACS01", "10.0.0.5", 104), Peer("WS", "WS01", "fd00::7", 11112)]
    assert (settings.dimse_allow_store, settings.dimse_allow_query, settings.dimse_allow_retrieve) == (
        ["MODALITY1", "@peers"], ["*"], ["WS01"])
    assert settings.dimse_allow_echo == ["*"]

    args = build_parser().parse_args(["serve", "--config", str(config), "--dimse-port", "104", "--ae-title", "GW",
                                      "--peer", "A=AAA@host-a:104", "--peer", "B=BBB@host-b:11112"])
    from_flags = _settings(args, "./data")
    assert (from_flags.dimse_port, from_flags.ae_title) == (104, "GW")
    assert [peer.ae_title for peer in from_flags.dimse_peers] == ["AAA", "BBB"]
    assert load_settings(None, {}, environ={}).dimse_port is None  # off unless configured

    for bad in ({"peers": ["PACS@10.0.0.5:104"]}, {"peers": ["P=PACS@host:0"]}, {"ae_title": "WAY_TOO_LONG_AE_TITLE"},
                {"dimse_allow_store": ["BAD\\TITLE"]}, {"dimse_port": 70000}):
        with pytest.raises(ConfigError):
            load_settings(None, bad, environ={})


def test_dimse_process_for_the_multi_worker_mode(tmp_path: Path) -> None:
    from gateway.config import load_settings
    from gateway.dimse import start_dimse_process, stop_dimse_process

    port = _free_port()
    settings = load_settings(None, {"data_dir": tmp_path / "data", "dimse_port": port}, environ={})
    Node.open(settings).close()  # the parent migrates the schema before starting it
    process = start_dimse_process(settings)
    try:
        _wait_for_port(port, timeout=30)
        assert dcmtk("echoscu", "-aec", "GATEWAY", "127.0.0.1", str(port)).returncode == 0
    finally:
        stop_dimse_process(process)
    assert process.returncode is not None


def test_pynetdicom_message_logging_follows_its_logger() -> None:
    """pynetdicom's per-message loggers (which format every data set) are bound only when it logs DEBUG."""
    import logging

    from pynetdicom import _config

    from gateway.dimse.handlers import match_pynetdicom_logging

    logger = logging.getLogger("pynetdicom")
    names = ("LOG_HANDLER_LEVEL", "LOG_REQUEST_IDENTIFIERS", "LOG_RESPONSE_IDENTIFIERS")
    level, settings = logger.level, {name: getattr(_config, name) for name in names}
    try:
        logger.setLevel(logging.DEBUG)
        match_pynetdicom_logging()
        assert [getattr(_config, name) for name in names] == ["standard", True, True]
        logger.setLevel(logging.WARNING)
        match_pynetdicom_logging()
        assert [getattr(_config, name) for name in names] == ["none", False, False]
    finally:
        logger.setLevel(level)
        for name, value in settings.items():
            setattr(_config, name, value)
