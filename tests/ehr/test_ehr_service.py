"""End to end: HL7 v2 over a real MLLP TCP connection, CSV and Bundle imports, coverage and the demo data, into
the node's FHIR store, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.ehr import hl7v2
from gateway.ehr.mllp import MllpConfig, MllpListener
from gateway.ehr.service import EhrService
from gateway.node import Node

MSH = "MSH|^~\\&|HIS|HULA|GATEWAY|EUCAIM|20240102120000||{type}|{control}|P|2.5.1"
PID = "PID|1||{mrn}^^^HULA^MR||García^Ana||19600101|F"


def msg(type_: str, control: str, *segments: str) -> bytes:
    return ("\r".join([MSH.format(type=type_, control=control), *segments]) + "\r").encode("utf-8")


def seg(name: str, fields: dict[int, str]) -> str:
    return "|".join([name, *(fields.get(number, "") for number in range(1, max(fields) + 1))])


ADT = msg("ADT^A01^ADT_A01", "ADT1", PID.format(mrn="1001"), seg("PV1", {1: "1", 2: "I", 19: "V1",
                                                                          44: "20240102080000"}),
          "DG1|1||C61^Malignant neoplasm of prostate^I10^8140/3^Adenocarcinoma^ICDO3||20240101|F")
ORU = msg("ORU^R01^ORU_R01", "ORU1", PID.format(mrn="1001"),
          "OBR|1||L77|BIOQ^Bioquimica^L|||20240103080000|||||||||||||||||LAB|F",
          "OBX|1|NM|PSA^PSA total^L||12.4|ng/ml|0-4|H|||F",
          "OBX|2|NM|CYFRA^CYFRA 21-1^L||2.0|ng/ml||||F")


class Client:
    """An HL7 sender over MLLP: it writes frames and reads one ACK per message."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.decoder = hl7v2.MLLPDecoder(1 << 24)
        self.pending: list[bytes] = []

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def ack(self) -> hl7v2.Message:
        while not self.pending:
            data = self.sock.recv(65536)
            assert data, "the listener closed the connection without an ACK"
            self.pending.extend(event.data for event in self.decoder.feed(data) if event.kind == "message")
        return hl7v2.parse(self.pending.pop(0))

    def send(self, message: bytes) -> hl7v2.Message:
        self.send_raw(hl7v2.frame(message))
        return self.ack()

    def close(self) -> None:
        self.sock.close()


def msa(ack: hl7v2.Message) -> tuple[str, str]:
    segment = ack.first("MSA")
    assert segment is not None
    return segment.get(1), segment.get(2)


def err_text(ack: hl7v2.Message) -> str:
    segment = ack.first("ERR")
    assert segment is not None
    return segment.get(8)


@pytest.fixture
def ehr(node: Node) -> EhrService:
    return node.extensions["ehr"]  # type: ignore[no-any-return]


@pytest.fixture
def listener(ehr: EhrService) -> Iterator[MllpListener]:
    with MllpListener(ehr, MllpConfig(port=0, max_message_bytes=64 * 1024)) as running:
        yield running


def search(node: Node, kind: str, *params: tuple[str, str]) -> list[dict[str, Any]]:
    result = node.extensions["fhir"].search(kind, list(params))
    return [e["resource"] for e in result.get("entry", []) if (e.get("search") or {}).get("mode", "match") == "match"]


def stored_counts(node: Node) -> dict[str, int]:
    fhir = node.extensions["fhir"]
    return {kind: sum(1 for _ in fhir.iter_resources(kind)) for kind in
            ("Patient", "Encounter", "Condition", "Observation", "DiagnosticReport", "Procedure")}


def test_mllp_adt_then_oru_are_linked_in_fhir(node: Node, listener: MllpListener,
                                              caplog: pytest.LogCaptureFixture) -> None:
    client = Client(listener.port)
    with caplog.at_level(logging.INFO, logger="gateway.audit"):
        assert msa(client.send(ADT)) == ("AA", "ADT1")
        assert msa(client.send(ORU)) == ("AA", "ORU1")  # a second message on the same connection
    client.close()
    (patient,) = search(node, "Patient", ("identifier", "urn:gateway:mrn|1001"))
    subject = f"Patient/{patient['id']}"
    (condition,) = search(node, "Condition", ("code", "http://hl7.org/fhir/sid/icd-10|C61"))
    assert condition["subject"]["reference"] == subject
    (encounter,) = search(node, "Encounter", ("subject", subject))
    assert condition["encounter"]["reference"] == f"Encounter/{encounter['id']}"
    (psa,) = search(node, "Observation", ("code", "http://loinc.org|2857-1"))
    assert psa["subject"]["reference"] == subject and psa["valueQuantity"]["code"] == "ng/mL"
    (cyfra,) = search(node, "Observation", ("code", "urn:eucaim-gateway:local:lab|CYFRA"))
    assert cyfra["code"]["text"] == "CYFRA 21-1"
    (report,) = search(node, "DiagnosticReport", ("subject", subject))
    assert sorted(r["reference"] for r in report["result"]) == sorted(f"Observation/{o['id']}" for o in (psa, cyfra))
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.audit" and "hl7-message" in r.getMessage()]
    assert len(lines) == 2
    assert "sending_facility=HULA" in lines[0] and "message_type=ADT^A01" in lines[0]
    assert "control_id=ADT1" in lines[0] and "outcome=AA" in lines[0] and "peer=127.0.0.1:" in lines[0]
    # Sent again (a sender that missed the ACK): the same resources are updated, not duplicated.
    again = Client(listener.port)
    assert msa(again.send(ADT))[0] == "AA" and msa(again.send(ORU))[0] == "AA"
    again.close()
    assert stored_counts(node) == {"Patient": 1, "Encounter": 1, "Condition": 1, "Observation": 2,
                                   "DiagnosticReport": 1, "Procedure": 0}


def test_split_and_joined_frames(node: Node, listener: MllpListener) -> None:
    client = Client(listener.port)
    stream = hl7v2.frame(ADT) + hl7v2.frame(ORU)
    for index in range(0, len(stream), 5):  # both messages, five bytes at a time
        client.send_raw(stream[index:index + 5])
    assert [msa(client.ack()) for _ in range(2)] == [("AA", "ADT1"), ("AA", "ORU1")]
    client.close()


def test_bad_input_is_refused_and_stores_nothing(node: Node, listener: MllpListener) -> None:
    client = Client(listener.port)
    before = stored_counts(node)
    bad_date = msg("ADT^A01", "BAD1", "PID|1||1002^^^HULA^MR||X^Y||19601399|F")
    ack = client.send(bad_date)
    assert msa(ack) == ("AE", "BAD1")
    err = ack.first("ERR")
    assert err is not None and (err.get(2, 1), err.get(2, 3), err.get(3, 1)) == ("PID", "7", "102")
    assert "PID-7" in err_text(ack)
    # A bad OBX after good segments: the whole message is refused, its good parts too.
    half_good = msg("ORU^R01", "BAD2", PID.format(mrn="1003"), "OBR|1||L1|BIOQ^^L",
                    "OBX|1|NM|PSA^^L||1.0|ng/ml||||F", "OBX|2|NM|CEA^^L||lots|ng/ml||||F")
    ack = client.send(half_good)
    assert msa(ack) == ("AE", "BAD2") and "not a number" in err_text(ack)
    ack = client.send(msg("SIU^S12", "BAD3", PID.format(mrn="1004")))
    assert msa(ack) == ("AR", "BAD3") and ack.first("ERR").get(3, 1) == "200"  # type: ignore[union-attr]
    ack = client.send(msg("ADT^A01", "BAD4", PID.format(mrn="1005")).replace(b"|2.5.1", b"|2.7"))
    assert msa(ack) == ("AR", "BAD4") and "version" in err_text(ack)
    ack = client.send(b"PID|1||1006\r")  # no MSH at all
    assert msa(ack)[0] == "AR" and "MSH" in err_text(ack)
    client.send_raw(b"hello\r\n")  # bytes outside a frame: an AR, and the connection goes on
    assert msa(client.ack())[0] == "AR"
    big = msg("ADT^A01", "BIG1", PID.format(mrn="1007"), "NTE|1||" + "x" * 100_000)
    ack = client.send(big)
    assert msa(ack) == ("AR", "BIG1") and "limit" in err_text(ack)
    assert msa(client.send(ADT)) == ("AA", "ADT1")  # still usable
    client.close()
    after = stored_counts(node)
    assert after["Observation"] == before["Observation"] == 0
    assert {p["identifier"][0]["value"] for p in search(node, "Patient")} == {"1001"}


def test_allowed_facilities(ehr: EhrService) -> None:
    ehr.allowed_facilities = {"LAB"}
    outcome = ehr.handle_hl7(ADT, "test")
    assert outcome.ack_code == "AR" and "HULA" in outcome.text


def test_a40_merge_repoints_references(node: Node, ehr: EhrService) -> None:
    old = msg("ADT^A04", "M1", PID.format(mrn="OLD1"), "DG1|1||C61^^I10||20240101|F")
    assert ehr.handle_hl7(old).ack_code == "AA"
    unknown = ehr.handle_hl7(msg("ADT^A40^ADT_A39", "M2", PID.format(mrn="NEW1"), "MRG|NOSUCH^^^HULA^MR"))
    assert unknown.ack_code == "AE" and "NOSUCH" in unknown.text
    assert not search(node, "Patient", ("identifier", "urn:gateway:mrn|NEW1"))  # nothing stored
    merge = msg("ADT^A40^ADT_A39", "M3", PID.format(mrn="NEW1"), "MRG|OLD1^^^HULA^MR")
    assert ehr.handle_hl7(merge).ack_code == "AA"
    (new,) = search(node, "Patient", ("identifier", "urn:gateway:mrn|NEW1"))
    (old_patient,) = search(node, "Patient", ("identifier", "urn:gateway:mrn|OLD1"))
    assert {"other": {"reference": f"Patient/{new['id']}"}, "type": "replaced-by"} in old_patient["link"]
    (condition,) = search(node, "Condition")
    assert condition["subject"]["reference"] == f"Patient/{new['id']}"
    assert ehr.handle_hl7(merge).ack_code == "AA"  # a repeated A40 is already done


def test_csv_import_cli_reports_rows_that_did_not_map(node: Node, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    path = tmp_path / "labs.csv"
    path.write_text("NumHistoria;CodPrueba;Prueba;Resultado;Unidad;FechaMuestra;Rango;Indicador\n"
                    "2001;PSA;PSA;4,2;ng/ml;02/03/2021 08:15;0-4;H\n"
                    "2001;CYFRA;CYFRA 21-1;2.5;ng/ml;02/03/2021 08:15;;\n"
                    "2002;PSA;PSA;1.0;ng/ml;31/02/2021 08:15;;\n"
                    ";PSA;PSA;1.0;ng/ml;01/02/2021 08:15;;\n", encoding="utf-8")
    settings = node.settings
    node.close()  # the command opens the node itself
    args = ["ehr", "import", str(path), "--mapping", "demo-labs", "--data-dir", str(settings.data_dir),
            "--database-url", settings.effective_database_url]
    assert main(args) == 1  # some rows did not map
    out = capsys.readouterr().out
    assert "4 rows: 2 stored (2 Observation)" in out and "2 did not map" in out  # stub Patients not counted
    assert "line 4: date" in out and "line 5: mrn" in out
    assert "local-lab CYFRA 'CYFRA 21-1': 1 row(s)" in out
    reopened = Node.open(settings)
    try:
        assert len(search(reopened, "Observation")) == 2
        assert len(search(reopened, "Patient")) == 1  # created from the MRN alone
        (job,) = reopened.jobs.list(kind="ehr-csv-import")
        assert job["state"] == "completed" and job["progress"]["done"] == 4
        assert main(["mappings", "coverage", "--json", "--data-dir", str(settings.data_dir),
                     "--database-url", settings.effective_database_url]) == 0
        report = {entry["system"]: entry for entry in json.loads(capsys.readouterr().out)["systems"]}
        assert (report["local-lab"]["mapped"], report["local-lab"]["unmapped"]) == (1, 1)
        assert report["local-lab"]["unmapped_codes"][0]["code"] == "CYFRA"
    finally:
        reopened.close()


def test_csv_batch_refused_by_the_store_is_retried_row_by_row(node: Node, ehr: EhrService, tmp_path: Path) -> None:
    fhir = node.extensions["fhir"]
    refuse = {"9002"}
    original = fhir.transaction

    def picky(bundle: dict[str, Any]) -> dict[str, Any]:
        if any(e["resource"].get("identifier", [{}])[0].get("value") in refuse for e in bundle["entry"]):
            from gateway.fhir.errors import FhirError

            raise FhirError(422, "patient 9002 is locked")
        return original(bundle)

    fhir.transaction = picky
    path = tmp_path / "patients.csv"
    path.write_text("NumHistoria;Apellidos;Nombre;FechaNacimiento;Sexo\n9001;A;B;01/01/1960;H\n"
                    "9002;C;D;01/01/1961;M\n9003;E;F;01/01/1962;M\n", encoding="utf-8")
    report = ehr.import_csv(path, "demo-patients")
    assert (report["stored"], report["rejected"]) == (2, 1)
    assert report["rejected_rows"] == [{"line": 3, "reason": "the FHIR store refused the row: patient 9002 is "
                                                            "locked"}]
    assert {p["identifier"][0]["value"] for p in search(node, "Patient")} == {"9001", "9003"}


def test_bundle_and_hl7_file_imports(node: Node, ehr: EhrService, tmp_path: Path) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111",
         "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:gateway:mrn", "value": "3001"}]},
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:gateway:mrn|3001"}},
        {"resource": {"resourceType": "Observation", "status": "final",
                      "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
                      "subject": {"reference": "urn:uuid:11111111-1111-4111-8111-111111111111"},
                      "valueQuantity": {"value": 70, "unit": "kg", "system": "http://unitsofmeasure.org",
                                        "code": "kg"}},
         "request": {"method": "POST", "url": "Observation"}}]}
    response = ehr.import_bundle(bundle)
    assert [e["response"]["status"][:3] for e in response["entry"]] == ["201", "201"]
    hl7_file = tmp_path / "messages.hl7"
    hl7_file.write_bytes(ADT.replace(b"\r", b"\n") + b"\n" + msg("ADT^A01", "X2", "PID|1||4001||X^Y||2024|Q"))
    report = ehr.import_hl7_file(hl7_file)
    assert (report["accepted"], report["errors"]) == (1, 1)
    assert "PID-8" in report["failures"][0]["reason"]


def test_demo_ehr_data_links_to_imaging_studies(node: Node) -> None:
    from gateway.demo.ehr import ingest_demo_ehr
    from gateway.demo.synth import plan_demo
    from tests.dicom_factory import make_instance

    plan = plan_demo(seed=3, patients=3)
    first = plan[0]
    node.ingest.store_uploads([node.files.upload_from_bytes(make_instance(patient_id=first.patient_id,
                                                                           study_uid=first.studies[0]
                                                                           .study_instance_uid))])
    summary = ingest_demo_ehr(node, plan)
    assert all(not summary[name].get("failures") and not summary[name].get("rejected")
               for name in summary if name != "bundle.json")
    examples = node.settings.data_dir / "ehr-examples"
    assert {p.name for p in examples.iterdir()} >= {"adt.hl7", "oru.hl7", "patients.csv", "diagnoses.csv",
                                                    "labs.csv", "treatments.csv", "staging.csv", "bundle.json"}
    patients = search(node, "Patient")
    assert sorted(p["identifier"][0]["value"] for p in patients) == sorted(p.patient_id for p in plan)
    (patient,) = search(node, "Patient", ("identifier", f"urn:gateway:mrn|{first.patient_id}"))
    subject = f"Patient/{patient['id']}"
    (study,) = search(node, "ImagingStudy", ("subject", subject))
    assert study["subject"]["reference"] == subject
    (condition,) = search(node, "Condition", ("subject", subject))
    assert condition["code"]["coding"][0]["code"] == first.diagnosis.icd10_code
    assert {c["code"] for c in condition["extension"][0]["valueCodeableConcept"]["coding"]} == \
        {first.diagnosis.icdo3_morphology}
    staging = [o for o in search(node, "Observation", ("subject", subject))
               if o["code"]["coding"][0]["code"] in ("21905-5", "21906-3", "21907-1")]
    assert sorted(o["valueCodeableConcept"]["coding"][0]["code"] for o in staging) == \
        sorted(first.diagnosis.clinical_tnm.split())
    # Importing the demo again (a restarted demo) changes nothing.
    before = stored_counts(node)
    ingest_demo_ehr(node, plan)
    assert stored_counts(node) == before
