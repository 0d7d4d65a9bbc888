"""dicomweb-client (a client nobody here wrote) stores, searches and retrieves against a running gateway."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image

from tests.conftest import ADMIN_TOKEN, RunningServer
from tests.dicom_factory import make_dataset, multipart_body, new_uid, stow_headers, to_bytes


@pytest.fixture
def client(server: RunningServer) -> Iterator[DICOMwebClient]:
    dicomweb = DICOMwebClient(url=server.dicomweb)
    yield dicomweb
    dicomweb._session.close()  # a kept-alive connection would hold the server's shutdown


def _series(count: int, **kwargs: object) -> list[pydicom.Dataset]:
    study, series = new_uid(), new_uid()
    return [make_dataset(study_uid=study, series_uid=series, instance_number=i + 1, seed=i, **kwargs)
            for i in range(count)]


def test_store_search_retrieve_round_trip(client: DICOMwebClient) -> None:
    datasets = _series(5)
    sent = {ds.SOPInstanceUID: to_bytes(ds) for ds in datasets}
    response = client.store_instances([pydicom.dcmread(io.BytesIO(b)) for b in sent.values()])
    assert len(response.ReferencedSOPSequence) == 5
    study_uid = datasets[0].StudyInstanceUID

    studies = client.search_for_studies(search_filters={"StudyInstanceUID": study_uid})
    assert len(studies) == 1
    study = pydicom.Dataset.from_json(studies[0])
    assert study.PatientName == "Doe^Jane"
    assert study.NumberOfStudyRelatedInstances == 5
    assert study.NumberOfStudyRelatedSeries == 1
    assert list(study.ModalitiesInStudy) == ["CT"] or study.ModalitiesInStudy == "CT"

    instances = client.search_for_instances(study_instance_uid=study_uid)
    assert sorted(pydicom.Dataset.from_json(i).SOPInstanceUID for i in instances) == sorted(sent)

    # Byte-identical: no transcoding was asked for.
    url = f"{client.base_url}/studies/{study_uid}"
    raw = requests.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'}, timeout=30)
    assert raw.status_code == 200
    for ds in client.retrieve_study(study_uid):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
    retrieved = client.retrieve_series(study_uid, datasets[0].SeriesInstanceUID)
    assert len(retrieved) == 5
    for ds in retrieved:
        original = sent[ds.SOPInstanceUID]
        # Every stored byte comes back in the part (compare the raw parts, not a re-encoding).
        assert original in raw.content
        assert ds.PixelData == pydicom.dcmread(io.BytesIO(original)).PixelData


def test_retrieve_instance_bytes_identical(server: RunningServer, client: DICOMwebClient) -> None:
    ds = make_dataset(seed=3)
    data = to_bytes(ds)
    client.store_instances([pydicom.dcmread(io.BytesIO(data))])
    url = (f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}")
    single = requests.get(url, headers={"Accept": "application/dicom"}, timeout=30)
    assert single.status_code == 200
    assert single.content == data


def test_metadata_matches_pydicom(server: RunningServer, client: DICOMwebClient) -> None:
    ds = make_dataset(rows=64, columns=64, OtherPatientNames="Roe^Janet", InstitutionName="Hôpital Européen")
    data = to_bytes(ds)
    client.store_instances([pydicom.dcmread(io.BytesIO(data))])
    metadata = client.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    # Pixel data is referenced, never inlined, and the URI resolves to the pixel bytes.
    assert "BulkDataURI" in metadata["7FE00010"]
    uri = metadata["7FE00010"]["BulkDataURI"]
    assert uri.startswith(server.dicomweb)
    bulk = client.retrieve_bulkdata(uri)
    assert bulk[0] == ds.PixelData
    from_json = pydicom.Dataset.from_json(metadata)
    read = pydicom.dcmread(io.BytesIO(data))
    for element in read:
        if element.tag == 0x7FE00010:
            continue
        assert element.tag in from_json, element
        assert from_json[element.tag].value == element.value, element
    assert from_json.InstitutionName == "Hôpital Européen"

    series_metadata = client.retrieve_series_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID)
    study_metadata = client.retrieve_study_metadata(ds.StudyInstanceUID)
    assert series_metadata == [metadata] == study_metadata


def test_frames_native(server: RunningServer, client: DICOMwebClient) -> None:
    ds = make_dataset(frames=3, rows=8, columns=10, seed=7)
    client.store_instances([ds])
    frames = client.retrieve_instance_frames(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                             frame_numbers=[3, 1])
    pixels = np.frombuffer(ds.PixelData, dtype="<u2").reshape(3, 8, 10)
    assert frames[0] == pixels[2].tobytes()
    assert frames[1] == pixels[0].tobytes()
    missing = requests.get(f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                           f"/instances/{ds.SOPInstanceUID}/frames/4",
                           headers={"Accept": 'multipart/related; type="application/octet-stream"'}, timeout=30)
    assert missing.status_code == 404
    assert "3 frame" in missing.json()["detail"]


def test_rendered_and_thumbnail(server: RunningServer, client: DICOMwebClient) -> None:
    ds = make_dataset(rows=64, columns=48)
    client.store_instances([ds])
    base = (f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")
    jpeg = requests.get(base + "/rendered", headers={"Accept": "image/jpeg"}, timeout=30)
    assert jpeg.status_code == 200 and jpeg.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).size == (48, 64)
    png = requests.get(base + "/rendered?window=100,50&viewport=24,32", headers={"Accept": "image/png"}, timeout=30)
    assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size == (24, 32)
    thumb = requests.get(f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/thumbnail", timeout=30)
    assert thumb.status_code == 200 and max(Image.open(io.BytesIO(thumb.content)).size) <= 128
    bad = requests.get(base + "/rendered?window=abc", timeout=30)
    assert bad.status_code == 400 and "window" in bad.json()["detail"]
    via_client = client.retrieve_instance_rendered(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                                   media_types=("image/png",))
    assert via_client.startswith(b"\x89PNG")


def test_transcode_implicit_to_explicit(server: RunningServer, client: DICOMwebClient) -> None:
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ds = make_dataset(transfer_syntax=ImplicitVRLittleEndian)
    data = to_bytes(ds)
    requests.post(f"{server.dicomweb}/studies", data=multipart_body([data]), headers=stow_headers(),
                  timeout=30).raise_for_status()
    retrieved = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                         media_types=(("application/dicom", ExplicitVRLittleEndian),))
    assert retrieved.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert retrieved.PixelData == ds.PixelData
    as_stored = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                         media_types=(("application/dicom", "*"),))
    assert as_stored.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian


def test_delete_needs_admin(server: RunningServer, client: DICOMwebClient) -> None:
    datasets = _series(3)
    client.store_instances(datasets)
    study, series = datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID
    url = f"{server.dicomweb}/studies/{study}/series/{series}/instances/{datasets[0].SOPInstanceUID}"
    assert requests.delete(url, timeout=30).status_code == 401
    assert requests.delete(url, headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 403
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert requests.delete(url, headers=auth, timeout=30).status_code == 200
    assert requests.delete(url, headers=auth, timeout=30).status_code == 404
    found = client.search_for_studies(search_filters={"StudyInstanceUID": study})
    assert pydicom.Dataset.from_json(found[0]).NumberOfStudyRelatedInstances == 2
    assert requests.delete(f"{server.dicomweb}/studies/{study}", headers=auth, timeout=30).json() == {
        "deleted_instances": 2}
    assert client.search_for_studies(search_filters={"StudyInstanceUID": study}) == []
    health = requests.get(server.url + "/health", timeout=30).json()
    assert health["counts"] == {"patients": 0, "studies": 0, "series": 0, "instances": 0}
    assert not any(p.is_file() for p in server.node.files.root.rglob("*"))
