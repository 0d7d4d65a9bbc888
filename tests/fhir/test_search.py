"""Search semantics against the FHIR R4 definitions (search.html): parameter types, prefixes, modifiers,
token forms, chains, _has, _include/_revinclude, paging, sorting and the result parameters."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from gateway.fhir import search
from tests.fhir.conftest import FhirClient

MRN = "urn:oid:1.2.840.99999.1"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


@pytest.fixture
def data(fhir: FhirClient) -> dict[str, Any]:
    patients = {}
    for key, family, given, birth, gender in (("a", "Müller", "Anna", "1960-05-01", "female"),
                                              ("b", "Mueller", "Bert", "1975-11-30", "male"),
                                              ("c", "Smith", "Carla", "1990", "female")):
        patients[key] = fhir.create({"resourceType": "Patient",
                                     "identifier": [{"system": MRN, "value": f"MRN-{key}"}],
                                     "name": [{"family": family, "given": [given]}], "birthDate": birth,
                                     "gender": gender, "active": key != "c"})["id"]
    observations = {}
    for key, patient, code, value, unit, effective in (
            ("psa1", "a", "2857-1", 4.5, "ng/mL", {"effectiveDateTime": "2021-03-04T10:00:00Z"}),
            ("psa2", "a", "2857-1", 12.0, "ng/mL", {"effectiveDateTime": "2022-01-10"}),
            ("cea", "b", "2039-6", 3.1, "ng/mL", {"effectivePeriod": {"start": "2021-06-01", "end": "2021-06-30"}}),
            ("hb", "c", "718-7", 130, "g/L", {"effectiveDateTime": "2023-02"})):
        observations[key] = fhir.create({
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": LOINC, "code": code, "display": f"Lab {code}"}], "text": f"Test {key}"},
            "subject": {"reference": f"Patient/{patients[patient]}"},
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}, **effective})["id"]
    return {"patients": patients, "observations": observations}


def _p(data: dict[str, Any], *keys: str) -> list[str]:
    return sorted(data["patients"][k] for k in keys)


def _o(data: dict[str, Any], *keys: str) -> list[str]:
    return sorted(data["observations"][k] for k in keys)


def test_string(fhir: FhirClient, data: dict[str, Any]) -> None:
    assert fhir.ids("Patient?family=mue") == _p(data, "b")
    assert fhir.ids("Patient?family=MÜL") == _p(data, "a")          # case and accents folded
    assert fhir.ids("Patient?family=mul") == _p(data, "a")
    assert fhir.ids("Patient?family:exact=Müller") == _p(data, "a")
    assert fhir.ids("Patient?family:exact=müller") == []
    assert fhir.ids("Patient?name:contains=ell") == _p(data, "b")
    assert fhir.ids("Patient?name=carla") == _p(data, "c")          # name covers given names too
    assert fhir.ids("Patient?family=smith,mueller") == _p(data, "b", "c")  # comma: OR
    assert fhir.ids("Patient?family=m&given=b") == _p(data, "b")     # repeated parameters: AND


def test_token_forms_and_modifiers(fhir: FhirClient, data: dict[str, Any]) -> None:
    assert fhir.ids(f"Patient?identifier={MRN}|MRN-a") == _p(data, "a")
    assert fhir.ids("Patient?identifier=MRN-a") == _p(data, "a")
    assert fhir.ids(f"Patient?identifier={MRN}|") == _p(data, "a", "b", "c")
    assert fhir.ids("Patient?identifier=|MRN-a") == []               # |code: only codes without a system
    assert fhir.ids("Patient?gender=female") == _p(data, "a", "c")
    assert fhir.ids("Patient?gender:not=female") == _p(data, "b")
    assert fhir.ids("Patient?active=false") == _p(data, "c")
    assert fhir.ids(f"Observation?code={LOINC}|2857-1") == _o(data, "psa1", "psa2")
    assert fhir.ids("Observation?code=other|2857-1") == []
    assert fhir.ids("Observation?code:text=test%20cea") == _o(data, "cea")
    assert fhir.ids("Observation?code:text=lab%20718") == _o(data, "hb")
    assert fhir.ids("Patient?death-date:missing=true") == _p(data, "a", "b", "c")
    assert fhir.ids("Patient?gender:missing=false") == _p(data, "a", "b", "c")


def test_date_prefixes(fhir: FhirClient, data: dict[str, Any]) -> None:
    # birthdates: a 1960-05-01, b 1975-11-30, c 1990 (the whole year)
    assert fhir.ids("Patient?birthdate=1960-05-01") == _p(data, "a")
    assert fhir.ids("Patient?birthdate=eq1960") == _p(data, "a")
    assert fhir.ids("Patient?birthdate=1990-06-01") == []            # eq: the target range must lie inside
    assert fhir.ids("Patient?birthdate=ne1960") == _p(data, "b", "c")
    assert fhir.ids("Patient?birthdate=lt1975-11-30") == _p(data, "a")
    assert fhir.ids("Patient?birthdate=le1975-11-30") == _p(data, "a", "b")
    assert fhir.ids("Patient?birthdate=gt1975-11-30") == _p(data, "c")
    assert fhir.ids("Patient?birthdate=ge1975-11-30") == _p(data, "b", "c")
    assert fhir.ids("Patient?birthdate=gt1990-06-01") == _p(data, "c")  # 1990 extends past June
    assert fhir.ids("Patient?birthdate=sa1975") == _p(data, "c")
    assert fhir.ids("Patient?birthdate=eb1975") == _p(data, "a")
    assert fhir.ids("Patient?birthdate=ap1960-05-03") == _p(data, "a")
    assert fhir.ids("Patient?birthdate=ge1960&birthdate=lt1980") == _p(data, "a", "b")
    # Observation dates: a dateTime with zone, a day, a period, a month
    assert fhir.ids("Observation?date=2021") == _o(data, "psa1", "cea")
    assert fhir.ids("Observation?date=2021-06-15") == []             # the period is wider than the day
    assert fhir.ids("Observation?date=ge2021-06-15&date=le2021-06-15") == _o(data, "cea")  # it overlaps
    assert fhir.ids("Observation?date=2021-03-04T11:00:00%2B01:00") == _o(data, "psa1")
    assert fhir.ids("Observation?date=gt2022-12-31") == _o(data, "hb")
    assert fhir.get("Observation?date=gt2022-13").status_code == 400


def test_quantity(fhir: FhirClient, data: dict[str, Any]) -> None:
    assert fhir.ids("Observation?value-quantity=4.5") == _o(data, "psa1")
    assert fhir.ids("Observation?value-quantity=4") == []            # 4 means [3.5, 4.5)
    assert fhir.ids("Observation?value-quantity=3") == _o(data, "cea")  # 3.1 is in [2.5, 3.5)
    assert fhir.ids("Observation?value-quantity=gt4") == _o(data, "psa1", "psa2", "hb")
    assert fhir.ids("Observation?value-quantity=lt4") == _o(data, "cea")
    assert fhir.ids("Observation?value-quantity=ge12") == _o(data, "psa2", "hb")
    assert fhir.ids("Observation?value-quantity=le3.1") == _o(data, "cea")
    assert fhir.ids("Observation?value-quantity=ap12.5") == _o(data, "psa2")
    assert fhir.ids(f"Observation?value-quantity=gt1|{UCUM}|g/L") == _o(data, "hb")
    assert fhir.ids("Observation?value-quantity=gt1||ng/mL") == _o(data, "psa1", "psa2", "cea")
    assert fhir.ids("Observation?value-quantity=ne4.5") == _o(data, "psa2", "cea", "hb")


def test_references_chains_and_has(fhir: FhirClient, data: dict[str, Any]) -> None:
    a = data["patients"]["a"]
    assert fhir.ids(f"Observation?subject=Patient/{a}") == _o(data, "psa1", "psa2")
    assert fhir.ids(f"Observation?patient={a}") == _o(data, "psa1", "psa2")
    assert fhir.ids(f"Observation?subject:Patient={a}") == _o(data, "psa1", "psa2")
    assert fhir.ids(f"Observation?subject={fhir.base}/Patient/{a}") == _o(data, "psa1", "psa2")
    assert fhir.ids(f"Observation?subject:Patient.identifier={MRN}|MRN-b") == _o(data, "cea")
    assert fhir.ids("Observation?patient.family=smith") == _o(data, "hb")
    assert fhir.ids("Observation?subject.gender=female&code=2857-1") == _o(data, "psa1", "psa2")
    assert fhir.ids("Observation?encounter:missing=true") == _o(data, "psa1", "psa2", "cea", "hb")
    assert fhir.ids("Patient?_has:Observation:patient:code=2857-1") == _p(data, "a")
    assert fhir.ids("Patient?_has:Observation:subject:value-quantity=gt100") == _p(data, "c")
    assert fhir.ids("Patient?_has:Observation:patient:code=nothing") == []


def test_id_and_last_updated(fhir: FhirClient, data: dict[str, Any]) -> None:
    a, b = data["patients"]["a"], data["patients"]["b"]
    assert fhir.ids(f"Patient?_id={a},{b}") == _p(data, "a", "b")
    updated = fhir.get(f"Patient/{a}").json()["meta"]["lastUpdated"]
    assert a in fhir.ids(f"Patient?_lastUpdated={quote(updated)}")
    assert fhir.ids("Patient?_lastUpdated=lt2000") == []
    assert fhir.ids("Patient?_lastUpdated=gt2000") == _p(data, "a", "b", "c")


def test_paging_links_work_when_followed(fhir: FhirClient, data: dict[str, Any]) -> None:
    page = fhir.search("Observation?_count=1&_sort=date")
    assert page["total"] == 4
    seen = []
    while True:
        seen += [e["resource"]["id"] for e in page.get("entry", [])]
        relations = {link["relation"]: link["url"] for link in page["link"]}
        if "next" not in relations:
            break
        page = fhir.search(relations["next"])
    assert seen == [data["observations"][k] for k in ("psa1", "cea", "psa2", "hb")]
    previous = {link["relation"]: link["url"] for link in page["link"]}["previous"]
    assert [e["resource"]["id"] for e in fhir.search(previous)["entry"]] == [data["observations"]["psa2"]]


def test_sort(fhir: FhirClient, data: dict[str, Any]) -> None:
    def order(query: str) -> list[str]:
        return [e["resource"]["id"] for e in fhir.search(query)["entry"]]

    p = data["patients"]
    assert order("Patient?_sort=birthdate") == [p["a"], p["b"], p["c"]]
    assert order("Patient?_sort=-birthdate") == [p["c"], p["b"], p["a"]]
    assert order("Patient?_sort=family") == [p["b"], p["a"], p["c"]]     # "mueller" < "muller" < "smith"
    assert order("Patient?_sort=gender,-birthdate") == [p["c"], p["a"], p["b"]]
    assert fhir.get("Patient?_sort=nonsense").status_code == 400


def test_result_parameters(fhir: FhirClient, data: dict[str, Any]) -> None:
    counted = fhir.search("Observation?code=2857-1&_summary=count")
    assert counted["total"] == 2 and "entry" not in counted
    assert "total" not in fhir.search("Observation?_total=none")
    subsetted = fhir.search("Patient?_elements=gender&_count=1")["entry"][0]["resource"]
    assert set(subsetted) == {"resourceType", "id", "meta", "gender"}
    assert subsetted["meta"]["tag"][0]["code"] == "SUBSETTED"
    posted = fhir.post("Observation/_search", data="code=2857-1",
                       headers={"Content-Type": "application/x-www-form-urlencoded"}).json()
    assert posted["total"] == 2


def test_include_and_revinclude(fhir: FhirClient, data: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = fhir.search("Observation?code=2857-1&_include=Observation:patient")
    modes = sorted((e["search"]["mode"], e["resource"]["resourceType"]) for e in bundle["entry"])
    assert modes == [("include", "Patient"), ("match", "Observation"), ("match", "Observation")]
    bundle = fhir.search(f"Patient?_id={data['patients']['a']}&_revinclude=Observation:subject")
    included = sorted(e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "include")
    assert included == _o(data, "psa1", "psa2")
    # Beyond the bound the includes are cut and an OperationOutcome says so.
    monkeypatch.setattr(search, "MAX_INCLUDES", 1)
    bundle = fhir.search(f"Patient?_id={data['patients']['a']}&_revinclude=Observation:subject")
    assert sum(e["search"]["mode"] == "include" for e in bundle["entry"]) == 1
    outcome = next(e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome")
    assert "truncated" in outcome["issue"][0]["diagnostics"]
    assert fhir.get("Observation?_include=Patient:link").status_code == 400


def test_unknown_parameters_lenient_and_strict(fhir: FhirClient, data: dict[str, Any]) -> None:
    bundle = fhir.search("Patient?colour=blue&gender=male")
    assert [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"] == _p(data, "b")
    self_link = {link["relation"]: link["url"] for link in bundle["link"]}["self"]
    assert "colour" not in self_link and "gender=male" in self_link
    outcome = next(e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome")
    assert "colour" in outcome["issue"][0]["diagnostics"]
    strict = fhir.get("Patient?colour=blue", headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400 and strict.json()["resourceType"] == "OperationOutcome"
    assert fhir.get("Patient?gender:sounds-like=x").status_code == 400


def _plan(res_type: str, query: str) -> str:
    from urllib.parse import parse_qsl

    request = search.parse_request(res_type, parse_qsl(query))
    return str(search.base_query(request).candidates())


def test_code_and_date_are_one_index_range_with_the_same_answers(fhir: FhirClient, data: dict[str, Any]) -> None:
    """A code with a date range is answered from fhir_token_date (one row per coding and date), and every answer
    equals the intersection of the code alone and the dates alone, through updates and deletes."""
    a = data["patients"]["a"]
    both = fhir.create({"resourceType": "Observation", "status": "final",
                        "code": {"coding": [{"system": LOINC, "code": "2857-1"},
                                            {"system": "urn:oid:1.2.3.4.local", "code": "PSA"}]},
                        "subject": {"reference": f"Patient/{a}"}, "effectiveDateTime": "2021-05-05"})
    data["observations"]["local"] = both["id"]
    queries = {
        "code=2857-1&date=ge2021-01-01&date=lt2022-01-01": ("psa1", "local"),
        "code=PSA&date=2021": ("local",),
        f"code={quote(LOINC)}|2857-1&date=lt2021-04": ("psa1",),
        "code=urn:oid:1.2.3.4.local|2857-1&date=2021": (),          # the system belongs to the same coding
        "code=2039-6&date=ge2021-06-15&date=le2021-06-15": ("cea",),  # a period overlapping the day
        "code=718-7&date=2023-02": ("hb",),                           # a month
        "code=2857-1,2039-6&date=ge2021-01-01&date=lt2022-01-01": ("psa1", "cea", "local"),
        "code=2857-1&code=PSA&date=2021": ("local",),                 # repeated code: both must hold
        "code=2857-1&date=2021&date=ne2021-03-04": ("local",),
        "code=2857-1&date=2021,2022": ("psa1", "psa2", "local"),
    }
    for query, expected in queries.items():
        assert "fhir_token_date" in _plan("Observation", query), query
        assert fhir.ids(f"Observation?{query}") == _o(data, *expected), query
        code_part = "&".join(part for part in query.split("&") if part.startswith("code="))
        date_part = "&".join(part for part in query.split("&") if part.startswith("date="))
        alone = set(fhir.ids(f"Observation?{code_part}")) & set(fhir.ids(f"Observation?{date_part}"))
        assert sorted(alone) == _o(data, *expected), query
    # Modifiers and chains keep their own conditions: only a plain token value is joined to the dates.
    assert "fhir_token_date" not in _plan("Observation", "code:not=2857-1&date=2021")
    assert fhir.ids("Observation?code:not=2857-1&date=2021") == _o(data, "cea")
    assert fhir.ids("Observation?code:text=test&date=2021") == _o(data, "psa1", "cea")
    # The combined rows follow the resource: an update moves them, a delete removes them.
    moved = {**fhir.get(f"Observation/{both['id']}").json(), "effectiveDateTime": "2020-02-02"}
    assert fhir.put(f"Observation/{both['id']}", json=moved).status_code == 200
    assert fhir.ids("Observation?code=PSA&date=2021") == []
    assert fhir.ids("Observation?code=PSA&date=2020") == _o(data, "local")
    assert fhir.delete(f"Observation/{both['id']}").status_code in (200, 204)
    assert fhir.ids("Observation?code=PSA&date=2020") == []


def test_token_date_migration_fills_the_pairs_from_existing_rows(tmp_path: Any) -> None:
    """Revision 0009 builds fhir_token_date from the token and date rows a store already has."""
    from alembic import command
    from sqlalchemy import create_engine, text

    from gateway.store.db import alembic_config, upgrade_database

    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0008")
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO fhir_resource (pk, res_type, res_id, version_id, last_updated, deleted, "
                                "content) VALUES (1, 'Observation', 'o1', 1, '2021-01-01T00:00:00.000000', 0, '{}'), "
                                "(2, 'Condition', 'c1', 1, '2021-01-01T00:00:00.000000', 0, '{}')"))
        connection.execute(text("INSERT INTO fhir_token (res_pk, res_type, param, system, code) VALUES "
                                "(1, 'Observation', 'code', 'http://loinc.org', '2857-1'), "
                                "(1, 'Observation', 'code', 'urn:local', 'PSA'), "
                                "(1, 'Observation', 'category', NULL, 'laboratory'), "
                                "(2, 'Condition', 'code', NULL, 'C61')"))
        connection.execute(text("INSERT INTO fhir_date (res_pk, res_type, param, low, high, wide) VALUES "
                                "(1, 'Observation', 'date', '2021-03-04T00:00:00.000000', "
                                "'2021-03-04T23:59:59.999999', 0), "
                                "(2, 'Condition', 'recorded-date', '2021-03-04T00:00:00.000000', "
                                "'2021-03-04T23:59:59.999999', 0)"))
    upgrade_database(url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT res_pk, param, system, code, low FROM fhir_token_date "
                                       "ORDER BY code")).all()
    engine.dispose()
    assert [tuple(row) for row in rows] == [
        (1, "code+date", "http://loinc.org", "2857-1", "2021-03-04T00:00:00.000000"),
        (1, "code+date", "urn:local", "PSA", "2021-03-04T00:00:00.000000")]
