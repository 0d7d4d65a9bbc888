"""STOW-RS: statuses, per-instance failures, bad input that must not damage what is stored."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import pytest
import requests

from tests.conftest import RunningServer, make_settings, start_server
from tests.dicom_factory import make_dataset, make_instance, multipart_body, new_uid, stow_headers, to_bytes

FAILED_SOP_SEQUENCE, REFERENCED_SOP_SEQUENCE, FAILURE_REASON = "00081198", "00081199", "00081197"


def _post(server: RunningServer, body: bytes, study: str | None = None, **headers: str) -> requests.Response:
    url = f"{server.dicomweb}/studies" + (f"/{study}" if study else "")
    return requests.post(url, data=body, headers={**stow_headers(), **headers}, timeout=60)


def _failures(response: requests.Response) -> list[tuple[int, str]]:
    items = response.json().get(FAILED_SOP_SEQUENCE, {}).get("Value", [])
    return [(item[FAILURE_REASON]["Value"][0], item["00091001"]["Value"][0]) for item in items]


def _count(server: RunningServer) -> int:
    return requests.get(server.url + "/health", timeout=10).json()["counts"]["instances"]


def test_all_stored_is_200_and_idempotent(server: RunningServer) -> None:
    parts = [make_instance(seed=i) for i in range(3)]
    first = _post(server, multipart_body(parts))
    assert first.status_code == 200
    assert first.headers["Content-Type"].startswith("application/dicom+json")
    assert len(first.json()[REFERENCED_SOP_SEQUENCE]["Value"]) == 3
    again = _post(server, multipart_body(parts))
    assert again.status_code == 200
    assert _count(server) == 3


def test_conflicting_instance_is_refused_not_overwritten(server: RunningServer) -> None:
    ds = make_dataset(seed=1)
    original = to_bytes(ds)
    assert _post(server, multipart_body([original])).status_code == 200
    ds.PatientName = "Changed^Name"
    response = _post(server, multipart_body([to_bytes(ds)]))
    assert response.status_code == 409
    (reason, detail), = _failures(response)
    assert reason == 0x0111 and "different content" in detail
    stored = requests.get(f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                          f"/instances/{ds.SOPInstanceUID}", headers={"Accept": "application/dicom"}, timeout=30)
    assert stored.content == original


def test_partial_success_is_202_with_reasons(server: RunningServer) -> None:
    good = make_instance(seed=2)
    truncated = make_instance(seed=3)[:-100]
    not_dicom = b"this is not a DICOM file at all" * 10
    no_sop = make_dataset(seed=4)
    del no_sop.SOPInstanceUID
    response = _post(server, multipart_body([good, truncated, not_dicom, to_bytes(no_sop)]))
    assert response.status_code == 202
    failures = _failures(response)
    assert [reason for reason, _ in failures] == [0xC000, 0xC000, 0x0120]
    assert "truncated" in failures[0][1]
    assert "not a DICOM" in failures[1][1]
    assert "SOPInstanceUID" in failures[2][1]
    assert _count(server) == 1
    assert not list(server.node.files.tmp_dir.rglob("upload-*")), "no temporary file may be left behind"


def test_study_uid_mismatch(server: RunningServer) -> None:
    other_study = new_uid()
    response = _post(server, multipart_body([make_instance()]), study=other_study)
    assert response.status_code == 409
    (reason, detail), = _failures(response)
    assert reason == 0xC409 and other_study in detail
    ds = make_dataset()
    assert _post(server, multipart_body([to_bytes(ds)]), study=ds.StudyInstanceUID).status_code == 200


@pytest.mark.parametrize(("content_type", "status"), [
    ("application/dicom", 415),
    ('multipart/related; type="application/dicom+json"; boundary=x', 415),
    ("", 415),
])
def test_wrong_media_type(server: RunningServer, content_type: str, status: int) -> None:
    response = requests.post(f"{server.dicomweb}/studies", data=make_instance(),
                             headers={"Content-Type": content_type}, timeout=30)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["detail"]


def test_malformed_multipart_is_400(server: RunningServer) -> None:
    response = _post(server, b"no boundary anywhere in this body")
    assert response.status_code == 400
    assert "boundary" in response.json()["detail"]
    empty = _post(server, b"--testboundary--\r\n")
    assert empty.status_code == 400


def test_part_of_wrong_type_fails_alone(server: RunningServer) -> None:
    body = (b"--testboundary\r\nContent-Type: text/plain\r\n\r\nhello\r\n" +
            multipart_body([make_instance()])[len(b""):])
    response = _post(server, body)
    assert response.status_code == 202
    assert "text/plain" in _failures(response)[0][1]


def test_body_over_limit_is_413(tmp_path: Path, database_url: str) -> None:
    from gateway.node import Node

    node = Node.open(make_settings(tmp_path / "d", database_url, max_upload_bytes=10_000))
    running, waitress_server, _thread = start_server(node)
    try:
        response = _post(running, multipart_body([make_instance(rows=128, columns=128)]))
        assert response.status_code == 413
        assert "10000" in response.json()["detail"]
        assert _count(running) == 0
    finally:
        waitress_server.close()  # type: ignore[attr-defined]
        node.close()


def test_interrupted_upload_leaves_nothing(server: RunningServer) -> None:
    """A client that drops mid-part: the finished part is stored, the cut one leaves no file and no row."""
    complete = make_instance(seed=10)
    cut = make_instance(seed=11, rows=256, columns=256)
    body = multipart_body([complete, cut])
    sent = body[: len(body) - 50_000]
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as connection:
        head = (f"POST /dicomweb/studies HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Content-Type: {stow_headers()['Content-Type']}\r\nContent-Length: {len(body)}\r\n\r\n")
        connection.sendall(head.encode() + sent)
        connection.shutdown(socket.SHUT_WR)
        connection.settimeout(10)
        with contextlib.suppress(OSError):
            connection.recv(100)
    # waitress never hands an incomplete body to the application, so nothing of it may be stored.
    assert _count(server) in (0, 1)
    assert not list(server.node.files.tmp_dir.rglob("upload-*"))
    stored = list(server.node.files.root.rglob("*.dcm"))
    assert len(stored) == _count(server)


def test_pydicom_corpus(server: RunningServer) -> None:
    """Every file of pydicom's own test corpus goes through STOW-RS: valid ones are stored and retrievable,
    broken ones get a per-instance failure, and nothing answers 500."""
    import pydicom.data

    root = Path(pydicom.data.__file__).parent
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc", ".json", ".txt"))
    assert len(files) > 100
    stored: dict[str, bytes] = {}
    outcomes = {"stored": 0, "failed": 0}
    for path in files:
        data = path.read_bytes()
        response = _post(server, multipart_body([data]))
        assert response.status_code in (200, 409), (path.name, response.status_code, response.text[:300])
        if response.status_code == 200:
            outcomes["stored"] += 1
            item = response.json()[REFERENCED_SOP_SEQUENCE]["Value"][0]
            sop_uid = item["00081155"]["Value"][0]
            stored.setdefault(sop_uid, data)
            url = item["00081190"]["Value"][0]
            if stored[sop_uid] is data:
                back = requests.get(url, headers={"Accept": "application/dicom"}, timeout=30)
                assert back.status_code == 200
                expected = data if data[128:132] == b"DICM" else b"\0" * 128 + b"DICM" + data
                assert back.content == expected, path.name
        else:
            outcomes["failed"] += 1
            (reason, detail), = _failures(response)
            assert reason in (0xC000, 0x0120, 0x0111), (path.name, hex(reason))
            assert detail
            if reason == 0x0111:
                continue
            # A refused file is one that pydicom cannot read as PS3.10 or that lacks identifying UIDs.
            try:
                ds = pydicom.dcmread(path)
                has_uids = all(ds.get(k) for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                                                    "SOPClassUID"))
            except Exception:
                has_uids = False
            assert not has_uids or "truncated" in detail or "TransferSyntaxUID" in detail, (path.name, detail)
    assert outcomes["stored"] >= 100
    assert _count(server) == len(stored)
    assert requests.get(f"{server.dicomweb}/studies", timeout=30).status_code == 200
