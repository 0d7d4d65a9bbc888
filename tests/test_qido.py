"""QIDO-RS matching semantics (PS3.4 C.2.2.2) over HTTP, against a small known data set."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.conftest import RunningServer
from tests.dicom_factory import make_instance, multipart_body, new_uid, stow_headers

STUDIES: list[dict[str, Any]] = [
    {"patient_id": "P1", "patient_name": "Müller^Anna", "study_date": "20150310", "study_time": "083000",
     "accession": "A100", "series": [("CT", 2), ("PT", 1)]},
    {"patient_id": "P2", "patient_name": "Smith^John^^Dr", "study_date": "20181120", "study_time": "141500",
     "accession": "A200", "series": [("MR", 3)]},
    {"patient_id": "P3", "patient_name": "smithson^mary", "study_date": "20221231", "study_time": "235959",
     "accession": "B300", "series": [("CT", 1)]},
    {"patient_id": "P1", "patient_name": "Müller^Anna", "study_date": "20200101", "study_time": "120000",
     "accession": "A101", "series": [("MR", 1), ("CT", 1)]},
]


@pytest.fixture
def loaded(server: RunningServer) -> dict[str, Any]:
    uids: dict[str, Any] = {"studies": [], "series": []}
    parts = []
    for study in STUDIES:
        study_uid = new_uid()
        uids["studies"].append(study_uid)
        for number, (modality, count) in enumerate(study["series"], start=1):
            series_uid = new_uid()
            uids["series"].append(series_uid)
            for index in range(count):
                parts.append(make_instance(
                    study_uid=study_uid, series_uid=series_uid, patient_id=study["patient_id"],
                    patient_name=study["patient_name"], study_date=study["study_date"],
                    study_time=study["study_time"], accession=study["accession"], modality=modality,
                    series_number=number, instance_number=index + 1, seed=len(parts)))
    response = requests.post(f"{server.dicomweb}/studies", data=multipart_body(parts), headers=stow_headers(),
                             timeout=60)
    assert response.status_code == 200
    return uids


def _search(server: RunningServer, path: str = "/studies", **params: Any) -> list[dict[str, Any]]:
    response = requests.get(server.dicomweb + path, params=params, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/dicom+json")
    return response.json()


def _values(results: list[dict[str, Any]], tag: str) -> list[Any]:
    return [r[tag]["Value"][0] if "Value" in r.get(tag, {}) else None for r in results]


ACCESSION = "00080050"


def test_single_value_and_wildcards(server: RunningServer, loaded: dict[str, Any]) -> None:
    assert _values(_search(server, PatientID="P1"), ACCESSION) == ["A100", "A101"]
    # requests sends '*' as %2A: it must still be a wildcard.
    assert _values(_search(server, AccessionNumber="A1*"), ACCESSION) == ["A100", "A101"]
    assert _values(_search(server, AccessionNumber="?200"), ACCESSION) == ["A200"]
    assert _search(server, PatientID="p1") == []  # LO matching is case-sensitive
    assert _search(server, AccessionNumber="A1%") == []  # SQL wildcards are literal characters
    assert len(_search(server, **{"00100020": "P2"})) == 1  # tag instead of keyword


def test_person_name_matching(server: RunningServer, loaded: dict[str, Any]) -> None:
    assert _values(_search(server, PatientName="SMITH*"), ACCESSION) == ["A200", "B300"]
    assert _values(_search(server, PatientName="smith^john^^dr"), ACCESSION) == ["A200"]
    assert _search(server, PatientName="john") == []
    fuzzy = _search(server, PatientName="john", fuzzymatching="true")
    assert _values(fuzzy, ACCESSION) == ["A200"]
    assert _values(_search(server, PatientName="muller", fuzzymatching="true"), ACCESSION) == ["A100", "A101"]


def test_date_and_time_ranges(server: RunningServer, loaded: dict[str, Any]) -> None:
    assert _values(_search(server, StudyDate="20180101-20201231"), ACCESSION) == ["A200", "A101"]
    assert _values(_search(server, StudyDate="-20160101"), ACCESSION) == ["A100"]
    # Date-range searches come in date order (StudyDate, StudyTime).
    assert _values(_search(server, StudyDate="20200101-"), ACCESSION) == ["A101", "B300"]
    assert _values(_search(server, StudyDate="20181120"), ACCESSION) == ["A200"]
    assert _values(_search(server, StudyTime="1200-1500"), ACCESSION) == ["A200", "A101"]
    assert _values(_search(server, StudyTime="2359"), ACCESSION) == ["B300"]


def test_uid_lists(server: RunningServer, loaded: dict[str, Any]) -> None:
    first, _, third, _ = loaded["studies"]
    for separator in ("\\", ","):
        results = _search(server, StudyInstanceUID=f"{first}{separator}{third}")
        assert _values(results, "0020000D") == [first, third]


def test_modalities_and_computed_attributes(server: RunningServer, loaded: dict[str, Any]) -> None:
    ct = _search(server, ModalitiesInStudy="CT")
    assert _values(ct, ACCESSION) == ["A100", "B300", "A101"]
    first = ct[0]
    assert first["00080061"]["Value"] == ["CT", "PT"]
    assert first["00201206"]["Value"] == [2]
    assert first["00201208"]["Value"] == [3]
    assert first["00080056"]["Value"] == ["ONLINE"]
    assert first["00081190"]["Value"][0].endswith(f"/dicomweb/studies/{loaded['studies'][0]}")
    assert _values(_search(server, ModalitiesInStudy="PT\\MR"), ACCESSION) == ["A100", "A200", "A101"]


def test_series_and_instance_levels(server: RunningServer, loaded: dict[str, Any]) -> None:
    study = loaded["studies"][0]
    series = _search(server, f"/studies/{study}/series")
    assert _values(series, "00080060") == ["CT", "PT"]
    assert _values(series, "00201209") == [2, 1]
    assert "00100010" not in series[0]  # study attributes only when searching all series
    all_ct_series = _search(server, "/series", Modality="CT", PatientID="P1")
    assert len(all_ct_series) == 2 and all("00100010" in s for s in all_ct_series)
    instances = _search(server, f"/studies/{study}/series/{loaded['series'][0]}/instances")
    assert _values(instances, "00200013") == [1, 2]
    assert instances[0]["00280010"]["Value"] == [16]
    assert len(_search(server, "/instances", AccessionNumber="A2*")) == 3
    assert len(_search(server, f"/studies/{study}/instances", InstanceNumber="2")) == 1


def test_includefield_limit_offset(server: RunningServer, loaded: dict[str, Any]) -> None:
    plain = _search(server, PatientID="P2")[0]
    assert "00081030" not in plain  # StudyDescription is not a default return key
    included = _search(server, PatientID="P2", includefield="StudyDescription,00080090")[0]
    assert included["00081030"]["Value"] == ["CT THORAX"]
    everything = _search(server, PatientID="P2", includefield="all")[0]
    assert {"00081030", "00100030", "00080005"} <= set(everything)
    instance_all = _search(server, "/instances", PatientID="P2", includefield="all")[0]
    assert "00200032" in instance_all  # ImagePositionPatient, an instance-level attribute
    assert "7FE00010" not in instance_all
    page = _search(server, limit="2", offset="1")
    assert _values(page, ACCESSION) == ["A200", "B300"]
    response = requests.get(f"{server.dicomweb}/studies", params={"limit": 100000}, timeout=30)
    assert len(response.json()) == 4


def test_truncation_warning(server: RunningServer, loaded: dict[str, Any]) -> None:
    server.node.settings.qido_max_results = 2
    response = requests.get(f"{server.dicomweb}/studies", timeout=30)
    assert len(response.json()) == 2
    assert "additional results" in response.headers["Warning"]


@pytest.mark.parametrize("params", [
    {"StudyDate": "2020"}, {"StudyDate": "20200101-2021"}, {"StudyTime": "25x"},
    {"StudyInstanceUID": "1.2.abc"}, {"NotAKeyword": "x"}, {"limit": "-1"}, {"limit": "ten"},
    {"offset": "-5"}, {"fuzzymatching": "maybe"}, {"includefield": "Bogus"}, {"SeriesNumber": "x"},
])
def test_bad_parameters_are_400(server: RunningServer, params: dict[str, str]) -> None:
    path = "/series" if "SeriesNumber" in params else "/studies"
    response = requests.get(server.dicomweb + path, params=params, timeout=30)
    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["detail"]


def test_unsupported_matching_key_warns(server: RunningServer, loaded: dict[str, Any]) -> None:
    response = requests.get(f"{server.dicomweb}/studies", params={"PatientWeight": "70"}, timeout=30)
    assert response.status_code == 200
    assert "PatientWeight" in response.headers["Warning"]


def test_accept_negotiation(server: RunningServer, loaded: dict[str, Any]) -> None:
    url = f"{server.dicomweb}/studies"
    assert requests.get(url, headers={"Accept": "application/json"}, timeout=30).headers[
        "Content-Type"].startswith("application/json")
    xml_only = requests.get(url, headers={"Accept": 'multipart/related; type="application/dicom+xml"'}, timeout=30)
    assert xml_only.status_code == 406
    assert requests.get(url, headers={"Accept": "*/*"}, timeout=30).status_code == 200


def test_bad_uid_in_path_and_unknown_study(server: RunningServer) -> None:
    assert requests.get(f"{server.dicomweb}/studies/../../etc/series", timeout=30).status_code in (400, 404)
    assert requests.get(f"{server.dicomweb}/studies/1.2.x/series", timeout=30).status_code == 400
    missing = requests.get(f"{server.dicomweb}/studies/1.2.3/metadata", timeout=30)
    assert missing.status_code == 404 and "1.2.3" in missing.json()["detail"]


def test_cors_for_allowed_origins_only(tmp_path, database_url: str) -> None:  # type: ignore[no-untyped-def]
    from gateway.node import Node
    from tests.conftest import make_settings, start_server

    node = Node.open(make_settings(tmp_path / "d", database_url, cors_origins=["https://viewer.example"]))
    running, waitress_server, _thread = start_server(node)
    try:
        url = f"{running.dicomweb}/studies"
        allowed = requests.get(url, headers={"Origin": "https://viewer.example"}, timeout=30)
        assert allowed.headers["Access-Control-Allow-Origin"] == "https://viewer.example"
        other = requests.get(url, headers={"Origin": "https://evil.example"}, timeout=30)
        assert "Access-Control-Allow-Origin" not in other.headers
        preflight = requests.options(url, headers={"Origin": "https://viewer.example",
                                                   "Access-Control-Request-Method": "GET"}, timeout=30)
        assert preflight.status_code == 204 and "GET" in preflight.headers["Access-Control-Allow-Methods"]
    finally:
        waitress_server.close()  # type: ignore[attr-defined]
        node.close()


@pytest.mark.parametrize(("path", "params"), [
    ("/studies", {}), ("/studies", {"ModalitiesInStudy": "CT"}), ("/studies", {"PatientName": "smith*"}),
    ("/series", {}), ("/series", {"Modality": "MR"}), ("/studies", {"limit": "2", "offset": "1"}),
])
def test_spliced_answers_equal_the_general_path(server: RunningServer, loaded: dict[str, Any], path: str,
                                                params: dict[str, str]) -> None:
    from gateway.services.query import parse_query

    level = "study" if path == "/studies" else "series"
    query = parse_query(level, list(params.items()), max_results=100)
    general = server.node.query.search(query, base_url=server.dicomweb).matches
    assert _search(server, path, **params) == general
    study = loaded["studies"][0]
    query = parse_query("series", [], max_results=100)
    general = server.node.query.search(query, base_url=server.dicomweb, study_uid=study).matches
    assert _search(server, f"/studies/{study}/series") == general
