"""The store: idempotency, conflicts, atomicity under failures and crashes, deletion, configuration."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from gateway.config import ConfigError, load_settings
from gateway.dicom.status import InstanceRejected
from gateway.node import Node
from gateway.store.index_writer import GroupIndexWriter
from tests.conftest import make_settings
from tests.dicom_factory import make_dataset, make_instance, multipart_body, new_uid, stow_headers, to_bytes


def _rows(node: Node) -> dict[str, int]:
    return node.counts()


def _files(node: Node) -> list[Path]:
    return sorted(p for p in node.files.root.rglob("*") if p.is_file())


def test_identical_restore_is_idempotent_and_conflict_is_kept(node: Node) -> None:
    ds = make_dataset()
    first = node.ingest.store_bytes(to_bytes(ds))
    again = node.ingest.store_bytes(to_bytes(ds))
    assert (first.status, again.status) == ("stored", "duplicate")
    ds.PatientName = "Other^Name"
    conflict = node.ingest.store_bytes(to_bytes(ds))
    assert conflict.status == "failed" and conflict.conflict and conflict.failure_reason == 0x0111
    assert _rows(node)["instances"] == 1 and len(_files(node)) == 1


def test_series_under_two_studies_is_refused(node: Node) -> None:
    series = new_uid()
    assert node.ingest.store_bytes(make_instance(series_uid=series)).ok
    moved = node.ingest.store_bytes(make_instance(series_uid=series, study_uid=new_uid()))
    assert moved.status == "failed" and "another study" in moved.message


def test_failure_inside_a_group_spoils_nothing_else(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = [make_instance(seed=i) for i in range(3)]
    uploads = [node.files.upload_from_bytes(p) for p in parts]
    original = GroupIndexWriter._write
    doomed = pydicom.dcmread(io.BytesIO(parts[1])).SOPInstanceUID

    def flaky(self, record):  # type: ignore[no-untyped-def]
        written = original(self, record)
        if record.fields.sop_instance_uid == doomed:  # after its rows were written: they must be taken back
            raise InstanceRejected(0x0110, "simulated failure")
        return written

    monkeypatch.setattr(GroupIndexWriter, "_write", flaky)
    results = node.ingest.store_uploads(uploads)
    assert [r.status for r in results] == ["stored", "failed", "stored"]
    assert _rows(node)["instances"] == 2 and len(_files(node)) == 2
    assert not list(node.files.tmp_dir.rglob("upload-*"))


def test_failed_commit_leaves_no_file_and_no_row(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_durable(paths: list[Path], directories: bool = False) -> None:
        if directories:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(node.files, "make_durable", broken_durable)
    results = node.ingest.store_uploads([node.files.upload_from_bytes(make_instance(seed=i)) for i in range(3)])
    assert all(r.status == "failed" and r.failure_reason == 0xA700 for r in results)
    assert _rows(node) == {"patients": 0, "studies": 0, "series": 0, "instances": 0}
    assert _files(node) == []
    assert not list(node.files.tmp_dir.rglob("upload-*"))


def test_delete_keeps_counts_and_modalities_right(node: Node) -> None:
    study = new_uid()
    ct, mr = new_uid(), new_uid()
    for i in range(2):
        assert node.ingest.store_bytes(make_instance(study_uid=study, series_uid=ct, seed=i)).ok
    assert node.ingest.store_bytes(make_instance(study_uid=study, series_uid=mr, modality="MR", seed=5)).ok
    from gateway.services.query import parse_query

    def study_row() -> dict:
        query = parse_query("study", [("StudyInstanceUID", study)], max_results=10)
        return node.query.search(query, base_url="http://x").matches[0]

    assert study_row()["00080061"]["Value"] == ["CT", "MR"]
    assert node.ingest.delete(study, mr) == 1
    row = study_row()
    assert row["00080061"]["Value"] == ["CT"]
    assert row["00201206"]["Value"] == [1] and row["00201208"]["Value"] == [2]
    assert node.ingest.delete(study) == 2
    assert _rows(node) == {"patients": 0, "studies": 0, "series": 0, "instances": 0}
    assert _files(node) == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"gateway exited: {process.stdout.read().decode() if process.stdout else ''}")
        try:
            if requests.get(url + "/health", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            time.sleep(0.2)
    raise AssertionError("gateway did not start")


def test_kill_during_upload_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """A real `gateway serve` process killed with SIGKILL while an upload is in flight: after a restart,
    what was acknowledged is there and intact, and nothing half-written is anywhere."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "gateway.cli", "serve", "--data-dir", str(tmp_path), "--port", str(port),
               "--log-level", "WARNING"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(url, process)
        acknowledged = [make_instance(seed=i) for i in range(5)]
        response = requests.post(url + "/dicomweb/studies", data=multipart_body(acknowledged), headers=stow_headers(),
                                 timeout=30)
        assert response.status_code == 200
        big = multipart_body([make_instance(seed=100 + i, rows=512, columns=512) for i in range(20)])
        with socket.create_connection(("127.0.0.1", port)) as connection:
            head = (f"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: "
                    f"{stow_headers()['Content-Type']}\r\nContent-Length: {len(big)}\r\n\r\n")
            connection.sendall(head.encode() + big[: len(big) * 2 // 3])
            time.sleep(0.3)
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(url, process)
        health = requests.get(url + "/health", timeout=5).json()
        assert health["counts"]["instances"] == 5
        assert not list((tmp_path / "tmp").rglob("upload-*")), "leftover uploads are cleaned at start"
        assert len(list((tmp_path / "tmp").iterdir())) == 1, "only the running server's session remains"
        stored_files = [p for p in (tmp_path / "instances").rglob("*") if p.is_file()]
        assert len(stored_files) == 5
        for data in acknowledged:
            assert data in [p.read_bytes() for p in stored_files]
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_settings_precedence(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[server]\nport = 9000\nhost = "0.0.0.0"\n[storage]\ndata_dir = "/srv/a"\n'
                      '[database]\nurl = "postgresql://x@y/z"\n', encoding="utf-8")
    from_file = load_settings(config, environ={})
    assert (from_file.port, from_file.host, str(from_file.data_dir)) == (9000, "0.0.0.0", "/srv/a")
    assert from_file.database_url == "postgresql://x@y/z"
    from_env = load_settings(config, environ={"GATEWAY_PORT": "9100", "GATEWAY_ADMIN_TOKENS": "a, b"})
    assert from_env.port == 9100 and from_env.admin_tokens == ["a", "b"]
    from_flags = load_settings(config, {"port": 9200}, environ={"GATEWAY_PORT": "9100"})
    assert from_flags.port == 9200
    with pytest.raises(ConfigError, match="port"):
        load_settings(None, {"port": 70000}, environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        bad = tmp_path / "bad.toml"
        bad.write_text("port = = 1", encoding="utf-8")
        load_settings(bad, environ={})


def test_cli_import_and_db(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.dcm").write_bytes(make_instance(seed=i))
    (folder / "junk.txt").write_text("not dicom", encoding="utf-8")
    data = tmp_path / "data"
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "import", "--data-dir", str(data), str(folder)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr  # one file failed
    assert "stored 3" in done.stdout and "failed 1" in done.stdout
    upgraded = subprocess.run([sys.executable, "-m", "gateway.cli", "db", "upgrade", "--data-dir", str(data)],
                              capture_output=True, text=True, timeout=120)
    assert upgraded.returncode == 0, upgraded.stderr
    bad_config = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config", str(tmp_path / "none.toml")],
                                capture_output=True, text=True, timeout=60)
    assert bad_config.returncode == 2 and "does not exist" in bad_config.stderr


def test_migration_backfills_existing_rows(tmp_path: Path) -> None:
    """Upgrading an index created by revision 0001 computes the QIDO fragments of the studies it holds."""
    import json as json_module

    from alembic import command
    from sqlalchemy import create_engine, text

    from gateway.dicom.index_fields import study_qido_members
    from gateway.store.db import alembic_config, upgrade_database

    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0001")
    attributes = {"00100020": {"vr": "LO", "Value": ["P9"]}, "00081030": {"vr": "LO", "Value": ["not default"]}}
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO patient (pk, patient_id, issuer, patient_name, patient_name_match, "
                                "patient_birth_date, patient_sex, num_studies, created_at) VALUES "
                                "(1, 'P9', '', '', '', '', '', 1, '2020-01-01')"))
        connection.execute(text(
            "INSERT INTO study (pk, study_instance_uid, patient_pk, patient_id, issuer, patient_name, "
            "patient_name_match, patient_name_fuzzy, patient_birth_date, patient_sex, study_date, study_time, "
            "accession_number, study_id, study_description, referring_physician_match, modalities, num_series, "
            "num_instances, attributes_json, created_at, updated_at) VALUES (1, '1.2.3', 1, 'P9', '', '', '', '', "
            "'', '', '', '', '', '', '', '', '', 0, 0, :attributes, '2020-01-01', '2020-01-01')"),
            {"attributes": json_module.dumps(attributes)})
    upgrade_database(url)
    with engine.connect() as connection:
        backfilled = connection.execute(text("SELECT qido_json FROM study WHERE pk = 1")).scalar()
    assert backfilled == study_qido_members(attributes) == '"00100020":{"vr":"LO","Value":["P9"]}'
    engine.dispose()


def test_cleanup_spares_live_processes_uploads(tmp_path: Path) -> None:
    """A second process starting on the same data dir must not delete uploads the first is writing."""
    first = Node.open(make_settings(tmp_path))
    upload = first.files.new_upload()
    upload.write(b"in flight")
    second = Node.open(make_settings(tmp_path))
    try:
        assert upload.path.exists()
    finally:
        first.close()
        second.close()
    assert not list((tmp_path / "tmp").iterdir()), "closed cleanly: nothing left behind"


def test_deploy_example_configuration_loads() -> None:
    example = Path(__file__).resolve().parent.parent / "deploy" / "gateway.toml.example"
    settings = load_settings(example, environ={})
    assert settings.port == 8042 and settings.dimse_port == 11112 and settings.database_url
    assert str(settings.data_dir) == "/var/lib/gateway"


def test_concurrent_single_stores_are_committed_in_groups(node: Node) -> None:
    """C-STOREs arriving on parallel associations share commits, and each caller gets its own result."""
    import threading

    from sqlalchemy import func, select

    from gateway.services.ingest import StoreResult
    from gateway.store.models import Instance as StoredInstance

    commits: list[int] = []
    store_group = node.ingest.store_uploads

    def counting(uploads: list[Path], expected_study_uid: str | None = None) -> list[StoreResult]:
        commits.append(len(uploads))
        time.sleep(0.05)  # a slow disk: the other associations' instances arrive meanwhile
        return store_group(uploads, expected_study_uid)

    node.ingest.store_uploads = counting  # type: ignore[method-assign]
    payloads = [[make_instance(seed=thread * 10 + number, patient_id=f"P{thread}") for number in range(6)]
                for thread in range(6)]
    results: dict[int, list[StoreResult]] = {}

    def sender(thread: int) -> None:
        results[thread] = [node.ingest.store_upload_grouped(node.files.upload_from_bytes(data))
                           for data in payloads[thread]]

    threads = [threading.Thread(target=sender, args=(thread,)) for thread in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(result.status == "stored" for thread in range(6) for result in results[thread])
    assert sum(commits) == 36 and max(commits) > 1
    with node.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(StoredInstance)).scalar() == 36
    again = node.ingest.store_upload_grouped(node.files.upload_from_bytes(payloads[0][0]))
    assert again.status == "duplicate"


def test_spooled_upload_digests_the_data_set_as_it_is_written(tmp_path: Path) -> None:
    """The digest computed while spooling equals the one read back from the file, however the bytes arrive;
    an upload whose start is not a PS3.10 layout gets none (the file is read instead)."""
    from gateway.services.ingest import _data_set_digest
    from gateway.store.files import SpooledUpload

    part10 = to_bytes(make_dataset(rows=16, columns=16))
    assert part10[128:132] == b"DICM"
    meta = pydicom.dcmread(io.BytesIO(part10), stop_before_pixels=True).file_meta
    expected = _data_set_digest_of(part10, meta, tmp_path, _data_set_digest)
    no_preamble = part10[132:]
    for data, sizes in ((part10, [len(part10)]), (part10, [1] * 200 + [len(part10)]), (part10, [143, 1, 7, 10_000]),
                        (no_preamble, [5, 7, len(no_preamble)]), (part10[:140], [140])):
        upload = SpooledUpload(tmp_path)
        position = 0
        for size in sizes:
            upload.write(memoryview(data)[position:position + size])
            position += size
        assert upload.size == len(data) and position >= len(data)
        finished = upload.finished()
        assert finished.path.read_bytes() == data
        assert finished.data_set_sha256 == (None if len(data) < 144 else expected), sizes
    other = SpooledUpload(tmp_path)
    other.write(b"\x01" * 500)
    assert other.finished().data_set_sha256 is None


def _data_set_digest_of(part10: bytes, meta: object, folder: Path, digest: Any) -> str:
    path = folder / "reference.dcm"
    path.write_bytes(part10)
    return str(digest(path, meta))


def test_dimse_part10_header_is_the_standard_file_meta_encoding() -> None:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID
    from pynetdicom.dsutils import encode_file_meta

    from gateway.dimse.handlers import FILE_META_VERSION_NAME, IMPLEMENTATION_CLASS_UID, part10_header
    from gateway.services.ingest import PREAMBLE

    for sop_class, sop_instance, syntax in (("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5", "1.2.840.10008.1.2.1"),
                                            ("1.2.840.10008.5.1.4.1.1.4", "1.2.3.44", "1.2.840.10008.1.2.4.50")):
        meta = FileMetaDataset()
        meta.FileMetaInformationVersion = b"\x00\x01"
        meta.MediaStorageSOPClassUID = UID(sop_class)
        meta.MediaStorageSOPInstanceUID = UID(sop_instance)
        meta.TransferSyntaxUID = UID(syntax)
        meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        meta.ImplementationVersionName = FILE_META_VERSION_NAME
        assert part10_header(sop_class, sop_instance, syntax) == PREAMBLE + encode_file_meta(meta)
