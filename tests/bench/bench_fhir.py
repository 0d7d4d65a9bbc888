"""FHIR benchmark: search latency and Bulk export throughput of the gateway at 100,000 patients' worth of data.

    python tests/bench/bench_fhir.py [--patients 100000] [--databases sqlite,postgresql] [--out bench-fhir.md]

No FHIR peer runs here (HAPI FHIR needs a Java FHIR server package that this machine does not have), so the
gateway is measured alone against the issue's target: p95 under 50 ms for indexed searches at that size.

Per database (SQLite, and PostgreSQL in a fresh database made through --postgres-url):

1. Data: per patient a Patient, 1 ImagingStudy, 2 Conditions and 10 Observations (synthetic, deterministic in
   --seed). They are bulk-loaded: each resource gets its stored form and its search-index rows from the
   gateway's own code (``repository.with_meta``, ``repository.index_rows``: the same extraction as a write
   through the service), and the rows go in with executemany (SQLite) or COPY (PostgreSQL) with the secondary
   indexes dropped and rebuilt afterwards. The rate of the service path (a transaction Bundle per patient) is
   measured on a small sample first, so the table shows why the bulk path was chosen.
2. `gateway serve --workers 2` on that database; every request goes over HTTP with keep-alive sessions.
3. Searches: Patient by identifier, ImagingStudy by patient and modality, Condition by code, Observation by
   code and date range (one quarter), and ``_summary=count`` over all Observations; each with rotating
   values, first sequential, then from 8 concurrent client processes. Every answer is checked against what
   the generator made (status and Bundle.total); a wrong answer is counted and fails the target.
4. Bulk export: system-level $export of every type, and a Group-level $export of a 1,000-member Group;
   resources per second from kick-off to the completed manifest (NDJSON written, not downloaded).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from _gateway import GatewayServer, default_database_url
from _process import exit_cleanly_on_termination, log
from _report import cpu_model, format_number

from gateway.fhir import repository
from gateway.fhir.models import FhirDate, FhirQuantity, FhirReference, FhirString, FhirToken, FhirTokenDate
from gateway.fhir.params import index_time
from gateway.store.db import upgrade_database

MRN_SYSTEM = "urn:oid:1.2.840.99999.1"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED = "http://snomed.info/sct"
TARGET_P95_MS = 50.0

ICD10_CODES = [("C34.1", "Malignant neoplasm of upper lobe, bronchus or lung"),
               ("C34.3", "Malignant neoplasm of lower lobe, bronchus or lung"),
               ("C50.9", "Malignant neoplasm of breast, unspecified"), ("C61", "Malignant neoplasm of prostate"),
               ("C18.9", "Malignant neoplasm of colon, unspecified"), ("C20", "Malignant neoplasm of rectum"),
               ("C25.9", "Malignant neoplasm of pancreas, unspecified"), ("C64.9", "Malignant neoplasm of kidney"),
               ("C67.9", "Malignant neoplasm of bladder, unspecified"), ("C71.9", "Malignant neoplasm of brain"),
               ("C22.0", "Liver cell carcinoma"), ("C16.9", "Malignant neoplasm of stomach, unspecified"),
               ("C43.9", "Malignant melanoma of skin, unspecified"), ("C56", "Malignant neoplasm of ovary"),
               ("C53.9", "Malignant neoplasm of cervix uteri"), ("C73", "Malignant neoplasm of thyroid gland"),
               ("C78.0", "Secondary malignant neoplasm of lung"), ("C79.5", "Secondary malignant neoplasm of bone"),
               ("C90.0", "Multiple myeloma"), ("C83.3", "Diffuse large B-cell lymphoma")]
LOINC_CODES = [("2857-1", "PSA", "ng/mL"), ("2039-6", "CEA", "ng/mL"), ("1834-1", "AFP", "ng/mL"),
               ("10334-1", "CA 125", "U/mL"), ("24108-3", "CA 19-9", "U/mL"), ("718-7", "Hemoglobin", "g/dL"),
               ("6690-2", "Leukocytes", "10*3/uL"), ("777-3", "Platelets", "10*3/uL"),
               ("2160-0", "Creatinine", "mg/dL"), ("1742-6", "ALT", "U/L")]
MODALITIES = [("CT", 0.45), ("MR", 0.35), ("PT", 0.20)]
BODY_SITES = [("51185008", "Thorax"), ("818983003", "Abdomen"), ("69536005", "Head"), ("12738006", "Brain")]
FAMILIES = ["García", "Müller", "Rossi", "Dubois", "Jansen", "Kowalski", "Novák", "Silva", "Nielsen", "Papadopoulos",
            "Horvát", "Ionescu", "Andersson", "Murphy", "Virtanen", "Schmidt", "Bianchi", "Martin", "Peeters"]
GIVEN = {"female": ["Anna", "Maria", "Sofia", "Elena", "Eva", "Laura", "Marta", "Ingrid"],
         "male": ["Jan", "Luca", "Pierre", "Miguel", "Tomas", "Lars", "Piotr", "Nikos"]}
FIRST_DAY = dt.date(2015, 1, 1)
DAYS = (dt.date(2024, 12, 31) - FIRST_DAY).days + 1
INDEX_TABLES = {FhirToken: ("system", "code", "text"), FhirString: ("value_norm", "value_exact"),
                FhirDate: ("low", "high", "wide"), FhirReference: ("target_type", "target_id", "url"),
                FhirQuantity: ("value", "system", "code", "unit"),
                FhirTokenDate: ("system", "code", "low", "high", "wide")}
FHIR_TABLES = ("fhir_resource", "fhir_resource_version", "fhir_token", "fhir_string", "fhir_date", "fhir_reference",
               "fhir_quantity", "fhir_token_date")
# What repository.count_current keeps per write, set once for the whole load (as migration 0008 does).
COUNT_SQL = ("INSERT INTO fhir_type_count (res_type, current) SELECT res_type, count(*) FROM fhir_resource "
             "WHERE NOT deleted GROUP BY res_type")


# ----------------------------------------------------------------------------------------------------------
# The synthetic data and what each search must answer


@dataclass
class Facts:
    """What the generator made, so that every answer can be checked."""

    patients: int = 0
    patient_ids: list[str] = field(default_factory=list)
    modality: list[str] = field(default_factory=list)  # per patient: the ImagingStudy's modality
    conditions: Counter[str] = field(default_factory=Counter)  # ICD-10 code -> Conditions
    observations: Counter[tuple[str, int, int]] = field(default_factory=Counter)  # (LOINC, year, quarter)
    by_type: Counter[str] = field(default_factory=Counter)

    @staticmethod
    def mrn(index: int) -> str:
        return f"MRN{index:07d}"


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _day(rng: random.Random) -> dt.date:
    return FIRST_DAY + dt.timedelta(days=rng.randrange(DAYS))


def patient_resources(index: int, rng: random.Random, facts: Facts) -> list[dict[str, Any]]:
    """One patient's resources (Patient, ImagingStudy, 2 Conditions, 10 Observations) as a hospital has them."""
    pid = _uuid(rng)
    gender = rng.choice(("female", "male"))
    birth = dt.date(1930, 1, 1) + dt.timedelta(days=rng.randrange(70 * 365))
    subject = {"reference": f"Patient/{pid}"}
    resources: list[dict[str, Any]] = [{
        "resourceType": "Patient", "id": pid,
        "identifier": [{"use": "usual", "system": MRN_SYSTEM, "value": Facts.mrn(index)}],
        "name": [{"family": rng.choice(FAMILIES), "given": [rng.choice(GIVEN[gender])]}],
        "gender": gender, "birthDate": birth.isoformat()}]
    modality = rng.choices([m for m, _ in MODALITIES], [w for _, w in MODALITIES])[0]
    site_code, site_display = rng.choice(BODY_SITES)
    study_uid = f"2.25.{rng.getrandbits(120)}"
    started = _day(rng)
    resources.append({
        "resourceType": "ImagingStudy", "id": study_uid,
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}],
        "status": "available", "modality": [{"system": DCM, "code": modality}], "subject": subject,
        "started": f"{started.isoformat()}T{rng.randrange(7, 19):02d}:{rng.randrange(60):02d}:00+01:00",
        "numberOfSeries": 1, "numberOfInstances": 120,
        "series": [{"uid": f"2.25.{rng.getrandbits(120)}", "number": 1, "modality": {"system": DCM, "code": modality},
                    "numberOfInstances": 120,
                    "bodySite": {"system": SNOMED, "code": site_code, "display": site_display}}]})
    for code, display in rng.sample(ICD10_CODES, 2):
        onset = _day(rng)
        resources.append({
            "resourceType": "Condition", "id": _uuid(rng),
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                           "code": "active"}]},
            "verificationStatus": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                      "code": "encounter-diagnosis"}]}],
            "code": {"coding": [{"system": ICD10, "code": code, "display": display}]},
            "subject": subject, "onsetDateTime": onset.isoformat(), "recordedDate": onset.isoformat()})
        facts.conditions[code] += 1
    for _ in range(10):
        code, display, unit = rng.choice(LOINC_CODES)
        day = _day(rng)
        resources.append({
            "resourceType": "Observation", "id": _uuid(rng), "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "laboratory"}]}],
            "code": {"coding": [{"system": LOINC, "code": code, "display": display}]}, "subject": subject,
            "effectiveDateTime": f"{day.isoformat()}T{rng.randrange(7, 19):02d}:{rng.randrange(60):02d}:00Z",
            "valueQuantity": {"value": round(rng.uniform(0.1, 200), 2), "unit": unit, "system": UCUM, "code": unit}})
        facts.observations[(code, day.year, (day.month - 1) // 3)] += 1
    facts.patients += 1
    facts.patient_ids.append(pid)
    facts.modality.append(modality)
    for resource in resources:
        facts.by_type[resource["resourceType"]] += 1
    return resources


def transaction_bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """The same patient as an EHR feed would send it: a transaction with the Patient as a urn:uuid."""
    patient_url = f"urn:uuid:{resources[0]['id']}"
    entries = []
    for resource in resources:
        body = {key: value for key, value in resource.items() if key != "id"}
        if body.get("subject"):
            body["subject"] = {"reference": patient_url}
        entries.append({"fullUrl": patient_url if resource["resourceType"] == "Patient" else None,
                        "resource": body, "request": {"method": "POST", "url": resource["resourceType"]}})
    return {"resourceType": "Bundle", "type": "transaction",
            "entry": [{k: v for k, v in entry.items() if v is not None} for entry in entries]}


# ----------------------------------------------------------------------------------------------------------
# Bulk loading through the gateway's index extraction


class Loader:
    """Rows for fhir_resource, fhir_resource_version and the index tables, written in large batches."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.next_pk = 1
        self.saved_indexes: list[tuple[str, str]] = []
        self.rows: dict[str, list[tuple[Any, ...]]] = {}
        self.clock = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)

    def add(self, resources: list[dict[str, Any]]) -> None:
        self.clock += dt.timedelta(milliseconds=1)
        stamp = index_time(self.clock)
        for resource in resources:
            pk = self.next_pk
            self.next_pk += 1
            document = repository.with_meta(resource, resource["id"], 1, self.clock)
            content = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
            self.rows.setdefault("fhir_resource", []).append(
                (pk, document["resourceType"], resource["id"], 1, stamp, False, content))
            self.rows.setdefault("fhir_resource_version", []).append((pk, 1, stamp, "POST", False, content))
            for model, values in repository.index_rows(document):
                columns = INDEX_TABLES[model]
                table = model.__tablename__  # type: ignore[attr-defined]
                bucket = self.rows.setdefault(table, [])
                for value in values:
                    bucket.append((pk, value["res_type"], value["param"], *(value.get(c) for c in columns)))

    @staticmethod
    def columns(table: str) -> tuple[str, ...]:
        if table == "fhir_resource":
            return ("pk", "res_type", "res_id", "version_id", "last_updated", "deleted", "content")
        if table == "fhir_resource_version":
            return ("res_pk", "version_id", "last_updated", "method", "deleted", "content")
        model = next(m for m in INDEX_TABLES if m.__tablename__ == table)  # type: ignore[attr-defined]
        return ("res_pk", "res_type", "param", *INDEX_TABLES[model])

    def flush(self) -> None:
        raise NotImplementedError

    def drop_indexes(self) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError


class SqliteLoader(Loader):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.connection = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        self.connection.execute("PRAGMA synchronous=OFF")  # a benchmark's data: a crash means run it again
        self.connection.execute("PRAGMA cache_size=-1000000")

    def drop_indexes(self) -> None:
        names = ", ".join(f"'{t}'" for t in FHIR_TABLES)
        self.saved_indexes = list(self.connection.execute(
            f"SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL AND tbl_name IN ({names})"))
        for name, _ in self.saved_indexes:
            self.connection.execute(f"DROP INDEX {name}")

    def flush(self) -> None:
        self.connection.execute("BEGIN")
        for table, rows in self.rows.items():
            columns = self.columns(table)
            self.connection.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", rows)
        self.connection.execute("COMMIT")
        self.rows = {}

    def finish(self) -> None:
        for _, sql in self.saved_indexes:
            self.connection.execute(sql)
        self.connection.execute("DELETE FROM fhir_type_count")
        self.connection.execute(COUNT_SQL)
        self.connection.close()


class PostgresLoader(Loader):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        import psycopg

        self.connection = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
        # The rows are consistent by construction; foreign-key triggers per row would only slow COPY down.
        self.connection.execute("SET session_replication_role = replica")

    def drop_indexes(self) -> None:
        self.saved_indexes = [(name, sql) for name, sql in self.connection.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = ANY(%s) AND indexname NOT LIKE %s "
            "AND indexname <> 'uq_fhir_resource_type_id'", (list(FHIR_TABLES), "%_pkey"))]
        for name, _ in self.saved_indexes:
            self.connection.execute(f"DROP INDEX {name}")

    def flush(self) -> None:
        with self.connection.transaction(), self.connection.cursor() as cursor:
            for table, rows in self.rows.items():
                with cursor.copy(f"COPY {table} ({', '.join(self.columns(table))}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
        self.rows = {}

    def finish(self) -> None:
        for _, sql in self.saved_indexes:
            self.connection.execute(sql)
        self.connection.execute("SELECT setval(pg_get_serial_sequence('fhir_resource', 'pk'), "
                                "(SELECT max(pk) FROM fhir_resource))")
        self.connection.execute("DELETE FROM fhir_type_count")
        self.connection.execute(COUNT_SQL)
        self.connection.execute("ANALYZE")
        self.connection.close()


def bulk_load(url: str, patients: int, seed: int, batch: int = 2000) -> tuple[Facts, dict[str, float]]:
    upgrade_database(url)
    loader: Loader = SqliteLoader(url) if url.startswith("sqlite") else PostgresLoader(url)
    facts = Facts()
    rng = random.Random(seed)
    times = {"generate+extract": 0.0, "insert": 0.0}
    started = time.perf_counter()
    loader.drop_indexes()
    for index in range(patients):
        moment = time.perf_counter()
        loader.add(patient_resources(index, rng, facts))
        times["generate+extract"] += time.perf_counter() - moment
        if (index + 1) % batch == 0 or index + 1 == patients:
            moment = time.perf_counter()
            loader.flush()
            times["insert"] += time.perf_counter() - moment
            if (index + 1) % (batch * 10) == 0:
                log(f"loaded {index + 1:,} patients ({time.perf_counter() - started:.0f} s)")
    moment = time.perf_counter()
    loader.finish()
    times["indexes"] = time.perf_counter() - moment
    times["total"] = time.perf_counter() - started
    return facts, times


def service_path_rate(url: str, work_dir: Path, patients: int, seed: int) -> float:
    """Resources/s through FhirService.transaction, one Bundle per patient (what an EHR import does)."""
    from gateway.config import load_settings
    from gateway.node import Node

    upgrade_database(url)
    node = Node.open(load_settings(None, {"data_dir": work_dir, "database_url": url}, environ={}), migrate=False)
    try:
        service = node.extensions["fhir"]
        service.search("Patient", [("_count", "1")])  # the first request's one-time work (Endpoint) not timed
        rng = random.Random(seed + 1)
        facts = Facts()
        bundles = [transaction_bundle(patient_resources(index, rng, facts)) for index in range(patients)]
        started = time.perf_counter()
        for bundle in bundles:
            service.transaction(bundle)
        elapsed = time.perf_counter() - started
    finally:
        node.close()
    return sum(facts.by_type.values()) / elapsed


# ----------------------------------------------------------------------------------------------------------
# Searches


@dataclass(frozen=True)
class Query:
    key: str
    label: str
    indexed: bool  # held to the target

    def request(self, facts: Facts, rng: random.Random) -> tuple[str, int]:
        """A path below /fhir and the Bundle.total it must answer."""
        if self.key == "patient-identifier":
            index = rng.randrange(facts.patients)
            return f"Patient?identifier={MRN_SYSTEM}|{Facts.mrn(index)}", 1
        if self.key == "imaging-patient-modality":
            index = rng.randrange(facts.patients)
            modality = facts.modality[index] if rng.random() < 0.8 else rng.choice([m for m, _ in MODALITIES])
            expected = int(modality == facts.modality[index])
            return f"ImagingStudy?patient={facts.patient_ids[index]}&modality={DCM}|{modality}", expected
        if self.key == "condition-code":
            code = rng.choice(ICD10_CODES)[0]
            return f"Condition?code={ICD10}|{code}", facts.conditions[code]
        if self.key == "observation-code-date":
            code = rng.choice(LOINC_CODES)[0]
            year, quarter = rng.randrange(2015, 2025), rng.randrange(4)
            start = dt.date(year, quarter * 3 + 1, 1)
            end = dt.date(year + (quarter == 3), (quarter * 3 + 3) % 12 + 1, 1)
            return (f"Observation?code={LOINC}|{code}&date=ge{start.isoformat()}&date=lt{end.isoformat()}",
                    facts.observations[(code, year, quarter)])
        if self.key == "observation-count":
            return "Observation?_summary=count", facts.by_type["Observation"]
        raise ValueError(self.key)


QUERIES = [Query("patient-identifier", "Patient by identifier", True),
           Query("imaging-patient-modality", "ImagingStudy by patient and modality", True),
           Query("condition-code", "Condition by code", True),
           Query("observation-code-date", "Observation by code and date range (a quarter)", True),
           Query("observation-count", "_summary=count over all Observations", True)]


def timed_requests(base: str, requests_to_make: list[tuple[str, int]]) -> dict[str, Any]:
    """Run the requests one after the other on one keep-alive session: latencies (ms) and wrong answers."""
    session = requests.Session()
    latencies, failures = [], []
    for path, expected in requests_to_make:
        started = time.perf_counter()
        response = session.get(f"{base}/{path}", headers={"Accept": "application/fhir+json"}, timeout=120)
        body = response.content
        latencies.append((time.perf_counter() - started) * 1000)
        total = json.loads(body).get("total") if response.status_code == 200 else None
        if total != expected:
            failures.append(f"{path}: HTTP {response.status_code}, total {total}, expected {expected}")
    session.close()
    return {"latencies": latencies, "failures": failures}


def _client_worker(arguments: tuple[str, list[tuple[str, int]]]) -> dict[str, Any]:
    return timed_requests(*arguments)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def measure_query(base: str, query: Query, facts: Facts, args: argparse.Namespace, pool: Any) -> dict[str, Any]:
    rng = random.Random(f"{args.seed}-{query.key}")
    timed_requests(base, [query.request(facts, rng) for _ in range(args.warmup)])
    sequential = timed_requests(base, [query.request(facts, rng) for _ in range(args.repeats)])
    per_client = max(1, args.concurrent_requests // args.clients)
    work = [(base, [query.request(facts, rng) for _ in range(per_client)]) for _ in range(args.clients)]
    started = time.perf_counter()
    results = pool.map(_client_worker, work)
    wall = time.perf_counter() - started
    concurrent = [latency for result in results for latency in result["latencies"]]
    failures = sequential["failures"] + [failure for result in results for failure in result["failures"]]
    return {"sequential_median_ms": statistics.median(sequential["latencies"]),
            "sequential_p95_ms": percentile(sequential["latencies"], 0.95),
            "concurrent_median_ms": statistics.median(concurrent),
            "concurrent_p95_ms": percentile(concurrent, 0.95),
            "concurrent_rps": len(concurrent) / wall, "requests": len(sequential["latencies"]) + len(concurrent),
            "failures": failures}


# ----------------------------------------------------------------------------------------------------------
# Bulk export


def run_export(base: str, path: str, timeout_s: float = 3600) -> dict[str, Any]:
    session = requests.Session()
    started = time.perf_counter()
    kick = session.get(f"{base}/{path}", headers={"Prefer": "respond-async"}, timeout=60)
    if kick.status_code != 202:
        raise RuntimeError(f"{path}: kick-off answered {kick.status_code}: {kick.text[:500]}")
    status_url = kick.headers["Content-Location"]
    while time.perf_counter() - started < timeout_s:
        status = session.get(status_url, timeout=60)
        if status.status_code == 200:
            elapsed = time.perf_counter() - started
            manifest = status.json()
            count = sum(item["count"] for item in manifest["output"])
            session.delete(status_url, timeout=60)  # the files are not needed: free the disk
            return {"resources": count, "seconds": elapsed, "rate": count / elapsed,
                    "by_type": {item["type"]: item["count"] for item in manifest["output"]}}
        if status.status_code != 202:
            raise RuntimeError(f"{path}: status answered {status.status_code}: {status.text[:500]}")
        time.sleep(0.2)
    raise RuntimeError(f"{path}: not finished after {timeout_s} s")


def measure_exports(base: str, facts: Facts, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    system = run_export(base, "$export")
    expected = dict(facts.by_type)
    # The gateway adds its own Endpoint (the DICOMweb address the ImagingStudy resources point to).
    got = {k: v for k, v in system["by_type"].items() if k != "Endpoint"}
    system["failures"] = [] if got == expected else [f"system export counts {got}, expected {expected}"]
    results["system"] = system
    members = list(range(0, facts.patients, max(1, facts.patients // args.group_members)))[:args.group_members]
    group = {"resourceType": "Group", "actual": True, "type": "person", "name": "benchmark cohort",
             "member": [{"entity": {"reference": f"Patient/{facts.patient_ids[index]}"}} for index in members]}
    response = requests.post(f"{base}/Group", data=json.dumps(group),
                             headers={"Content-Type": "application/fhir+json"}, timeout=300)
    response.raise_for_status()
    exported = run_export(base, f"Group/{response.json()['id']}/$export")
    # Per patient 1 Patient + 13 compartment resources.
    exported["failures"] = [] if exported["resources"] == 14 * len(members) else [
        f"group export: {exported['resources']} resources, expected {14 * len(members)}"]
    exported["members"] = len(members)
    results["group"] = exported
    return results


# ----------------------------------------------------------------------------------------------------------
# One database


def new_postgres_database(admin_url: str, stack: ExitStack, keep: bool) -> str:
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"bench_fhir_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")

    def drop() -> None:
        if keep:
            log(f"kept PostgreSQL database {name}")
            return
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    stack.callback(drop)
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def run_database(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    with ExitStack() as stack:
        work_dir = Path(tempfile.mkdtemp(prefix=f"bench-fhir-{kind}-", dir=args.work_dir))
        stack.callback(lambda: shutil.rmtree(work_dir, ignore_errors=True) if not args.keep_work_dir
                       else log(f"kept {work_dir}"))
        if kind == "sqlite":
            database_url = None
            scratch_url = f"sqlite:///{work_dir / 'service-path.db'}"
        else:
            database_url = new_postgres_database(args.postgres_url, stack, args.keep_work_dir)
            scratch_url = new_postgres_database(args.postgres_url, stack, False)
        server = GatewayServer(work_dir, command=args.gateway_command, database_url=database_url,
                               workers=args.workers)
        url = default_database_url(server.data_dir, database_url)
        server.data_dir.mkdir(parents=True, exist_ok=True)
        result: dict[str, Any] = {"kind": kind}
        if args.service_sample:
            log(f"{kind}: service path on {args.service_sample} patients")
            result["service_rate"] = service_path_rate(scratch_url, work_dir / "scratch", args.service_sample,
                                                       args.seed)
            if kind == "sqlite":
                (work_dir / "service-path.db").unlink(missing_ok=True)
        log(f"{kind}: bulk-loading {args.patients:,} patients")
        facts, times = bulk_load(url, args.patients, args.seed)
        result["load"] = times
        result["resources"] = sum(facts.by_type.values())
        log(f"{kind}: loaded {result['resources']:,} resources in {times['total']:.0f} s")
        with server:
            base = server.origin + "/fhir"
            requests.get(f"{base}/Patient?_count=1", timeout=600).raise_for_status()  # first request's sync
            context = multiprocessing.get_context("fork")
            with context.Pool(args.clients) as pool:
                result["queries"] = {}
                for query in QUERIES:
                    log(f"{kind}: {query.label}")
                    result["queries"][query.key] = measure_query(base, query, facts, args, pool)
            if args.exports:
                log(f"{kind}: bulk export")
                result["exports"] = measure_exports(base, facts, args)
        return result


# ----------------------------------------------------------------------------------------------------------
# Report


def render(results: list[dict[str, Any]], args: argparse.Namespace, command: str) -> str:
    names = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
    lines = [f"Command: `{command}`", "",
             f"- Run: {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, {cpu_model()}, {os.cpu_count()} cores, "
             f"load average {os.getloadavg()[0]:.1f} at the end, Python {platform.python_version()}; "
             f"`gateway serve --workers {args.workers}`, clients on the same machine.",
             f"- Data: {args.patients:,} patients × (1 Patient, 1 ImagingStudy, 2 Conditions, 10 Observations) = "
             f"{results[0]['resources']:,} resources (seed {args.seed}).",
             f"- Method: per search {args.warmup} warm-up requests, {args.repeats} sequential requests with "
             f"rotating values, then {args.concurrent_requests} from {args.clients} concurrent client processes "
             "(one keep-alive session each); every answer's status and Bundle.total checked.", ""]
    header = "| search | " + " | ".join(
        f"{names[r['kind']]} median | {names[r['kind']]} p95 | {names[r['kind']]} 8 clients p95 | "
        f"{names[r['kind']]} 8 clients req/s" for r in results) + " | target p95 < 50 ms |"
    lines += [header, "|---|" + "---:|" * (4 * len(results)) + "---|"]
    for query in QUERIES:
        cells, met = [], True
        for result in results:
            figures = result["queries"][query.key]
            failures = len(figures["failures"])
            warn = f" ⚠{failures}" if failures else ""
            cells += [format_number(figures["sequential_median_ms"]) + warn,
                      *(format_number(figures[key]) for key in ("sequential_p95_ms", "concurrent_p95_ms",
                                                                "concurrent_rps"))]
            met &= figures["sequential_p95_ms"] < TARGET_P95_MS and not failures
        verdict = ("✅" if met else "❌") if query.indexed else "—"
        lines.append(f"| {query.label} | " + " | ".join(cells) + f" | sequential {verdict} |")
    lines += ["", "| | " + " | ".join(names[r["kind"]] for r in results) + " |",
              "|---|" + "---:|" * len(results)]
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("bulk load (generate + index extraction + insert + index build), s",
         lambda r: f"{r['load']['total']:.0f} ({r['load']['generate+extract']:.0f} + {r['load']['insert']:.0f} + "
                   f"{r['load']['indexes']:.0f})"),
        ("bulk load, resources/s", lambda r: format_number(r["resources"] / r["load"]["total"]))]
    if all("service_rate" in r for r in results):
        rows.append((f"service path (FhirService.transaction, a Bundle per patient, {args.service_sample} "
                     "patients), resources/s", lambda r: format_number(r["service_rate"])))
    if all("exports" in r for r in results):
        rows += [("system $export, all types: resources (s)",
                  lambda r: f"{r['exports']['system']['resources']:,} ({r['exports']['system']['seconds']:.0f} s)"),
                 ("system $export, resources/s", lambda r: format_number(r["exports"]["system"]["rate"])),
                 (f"Group/$export, {args.group_members:,} members: resources (s)",
                  lambda r: f"{r['exports']['group']['resources']:,} ({r['exports']['group']['seconds']:.1f} s)"),
                 ("Group/$export, resources/s", lambda r: format_number(r["exports"]["group"]["rate"]))]
    for label, cell in rows:
        lines.append(f"| {label} | " + " | ".join(cell(r) for r in results) + " |")
    problems = [f"- {names[r['kind']]} {key}: {failure}" for r in results
                for key, figures in r.get("queries", {}).items() for failure in figures["failures"][:3]]
    problems += [f"- {names[r['kind']]} export: {failure}" for r in results
                 for export in r.get("exports", {}).values() for failure in export.get("failures", [])]
    if problems:
        lines += ["", "Wrong answers:", *problems]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--databases", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--postgres-url", default=os.environ.get("GATEWAY_TEST_POSTGRES_URL",
                                                                  "postgresql://postgres@127.0.0.1:55432/postgres"),
                        help="administrative URL; a fresh database is created (and dropped) for the run")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2, help="gateway serve --workers")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=100, help="sequential requests per search")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--concurrent-requests", type=int, default=400, help="per search, over all clients")
    parser.add_argument("--service-sample", type=int, default=200,
                        help="patients written through the service to compare its rate (0: skip)")
    parser.add_argument("--group-members", type=int, default=1000)
    parser.add_argument("--no-exports", dest="exports", action="store_false")
    parser.add_argument("--gateway-command", default="gateway")
    parser.add_argument("--work-dir", default=None, help="where the temporary folders go")
    parser.add_argument("--keep-work-dir", action="store_true", help="keep data folders and the PostgreSQL database")
    parser.add_argument("--out", help="write the markdown table here too")
    parser.add_argument("--json-out", help="write every figure as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_cleanly_on_termination()
    command = "python tests/bench/bench_fhir.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = [run_database(kind.strip(), args) for kind in args.databases.split(",") if kind.strip()]
    table = render(results, args, command.strip())
    print(table)
    if args.out:
        Path(args.out).write_text(table, encoding="utf-8")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

