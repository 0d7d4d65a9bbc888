"""Rebuilding the search indexes (job ``fhir-reindex``, ``gateway fhir reindex``): resources stored before a
search parameter existed are found by it afterwards, and a reindex of an intact store changes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from gateway.fhir.repository import INDEX_TABLES
from gateway.node import Node
from gateway.services.jobs import COMPLETED, JobError

LOINC = "http://loinc.org"


def _index_counts(node: Node) -> dict[str, int]:
    with node.engine.connect() as connection:
        return {model.__tablename__: connection.execute(  # type: ignore[attr-defined]
            select(func.count()).select_from(model.__table__)).scalar_one()  # type: ignore[attr-defined]
            for model in INDEX_TABLES}


def _ids(node: Node, res_type: str, params: list[tuple[str, str]]) -> list[str]:
    bundle = node.extensions["fhir"].search(res_type, params)
    return sorted(entry["resource"]["id"] for entry in bundle.get("entry", []))


def _store(node: Node) -> dict[str, Any]:
    service = node.extensions["fhir"]
    patient = service.create({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "R-1"}],
                              "name": [{"family": "Reindex"}]})
    observations = [service.create({
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]}, "subject": {"reference": f"Patient/{patient['id']}"},
        "effectiveDateTime": day, "valueQuantity": {"value": value, "unit": "ng/mL"}})
        for code, day, value in (("2857-1", "2021-02-01", 4.0), ("2857-1", "2022-02-01", 9.0),
                                 ("2039-6", "2021-03-01", 2.0), ("2857-1", "2021-04-01", 5.0))]
    service.delete("Observation", observations[-1]["id"])
    return {"patient": patient["id"], "observations": [o["id"] for o in observations[:3]]}


def test_reindex_restores_what_searches_match(node: Node) -> None:
    stored = _store(node)
    counts = _index_counts(node)
    code_in_2021 = [("code", "2857-1"), ("date", "ge2021-01-01"), ("date", "lt2022-01-01")]
    by_patient = [("patient", stored["patient"]), ("value-quantity", "gt3")]
    expected = {"code": _ids(node, "Observation", code_in_2021), "patient": _ids(node, "Observation", by_patient)}
    assert expected == {"code": [stored["observations"][0]], "patient": sorted(stored["observations"][:2])}
    # A store written before these parameters (and the code+date pair) were declared has none of their rows.
    with node.engine.begin() as connection:
        connection.execute(text("DELETE FROM fhir_token_date"))
        connection.execute(text("DELETE FROM fhir_token WHERE param = 'code'"))
        connection.execute(text("DELETE FROM fhir_quantity"))
    assert _ids(node, "Observation", code_in_2021) == [] and _ids(node, "Observation", by_patient) == []

    job = node.jobs.create(node, "fhir-reindex", {"types": ["Observation"]})
    finished = node.jobs.run(node, job["id"])
    assert finished["state"] == COMPLETED, finished["error"]
    assert finished["result"] == {"types": ["Observation"], "reindexed": 3}  # the deleted one stays out
    assert finished["progress"]["done"] == finished["progress"]["total"] == 3
    assert _index_counts(node) == counts
    assert {"code": _ids(node, "Observation", code_in_2021),
            "patient": _ids(node, "Observation", by_patient)} == expected

    everything = node.jobs.run(node, node.jobs.create(node, "fhir-reindex", {})["id"])
    with node.engine.connect() as connection:
        current = connection.execute(text("SELECT count(*) FROM fhir_resource WHERE NOT deleted")).scalar_one()
    assert everything["result"]["reindexed"] == current >= 4  # the Patient, 3 Observations, the Endpoint
    assert _index_counts(node) == counts  # idempotent
    with pytest.raises(JobError, match="unknown resource type"):
        node.jobs.create(node, "fhir-reindex", {"types": ["Observaton"]})


def test_reindex_command_shows_progress(tmp_path: Path, database_url: str) -> None:
    from tests.conftest import make_settings

    node = Node.open(make_settings(tmp_path / "data", database_url))
    try:
        _store(node)
    finally:
        node.close()
    command = [sys.executable, "-m", "gateway.cli", "fhir", "reindex", "--data-dir", str(tmp_path / "data"),
               "--type", "Observation", "--type", "Patient"]
    if database_url:
        command += ["--database-url", database_url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "fhir-reindex" in done.stderr and "4/4" in done.stderr  # 3 Observations and the Patient
    refused = subprocess.run([*command[:-4], "--type", "Nothing"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "unknown resource type" in refused.stderr
