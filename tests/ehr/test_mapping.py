"""HL7 v2 and CSV rows to FHIR, without a database: every Bundle must parse as FHIR R4 (fhir.resources R4B)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from gateway.ehr import hl7v2
from gateway.ehr.csv_mapping import RowError, RowMapper, load_mapping
from gateway.ehr.hl7_mapping import UnsupportedMessage, map_message
from gateway.ehr.resources import AJCC, EhrConfig, MappingError, hl7_datetime
from gateway.ehr.service import default_mappings_dir
from gateway.ehr.terminology import MappingTableError, Terminology, ajcc_category, coverage, load_terminology

MAPPINGS = default_mappings_dir()
CONFIG = EhrConfig(timezone="Europe/Madrid")

MSH = "MSH|^~\\&|HIS|HULA|GATEWAY|EUCAIM|20240102120000||{type}|{control}|P|{version}"
PID = "PID|1||12345678^^^HULA^MR~99999^^^NAT^NN||García López^María^José^^Dra.^^L||19580314|F|||" \
      "Calle Mayor 1^^Valdemora^^28999^ESP^H||^PRN^PH^^^^^^^^^600123456"
PV1 = "PV1|1|I|ONC^201^A^HULA||||1234^Pérez^Juan|||ONC|||||||||V0001|||||||||||||||||||||||||20240102110000"
DG1 = "DG1|1||C34.1^Malignant neoplasm: Upper lobe, bronchus or lung^I10^8140/3^Adenocarcinoma, NOS^ICDO3||20240101|F"


def seg(name: str, fields: dict[int, str]) -> str:
    """A segment from its fields by number (counting pipes by hand is how test messages go wrong)."""
    return "|".join([name, *(fields.get(number, "") for number in range(1, max(fields) + 1))])


def message(*segments: str, type_: str = "ADT^A01^ADT_A01", control: str = "MSG1", version: str = "2.5.1"
            ) -> hl7v2.Message:
    return hl7v2.parse("\r".join([MSH.format(type=type_, control=control, version=version), *segments]) + "\r")


@pytest.fixture(scope="module")
def term() -> Terminology:
    return load_terminology(MAPPINGS)


def resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def valid(bundle: dict[str, Any] | None) -> dict[str, Any]:
    assert bundle is not None
    Bundle.model_validate(bundle)
    return bundle


def codings(concept: dict[str, Any]) -> dict[str, str]:
    return {c["system"]: c["code"] for c in concept["coding"]}


def test_adt_a01_patient_encounter_condition(term: Terminology) -> None:
    mapped = map_message(message(PID, PV1, DG1, "PR1|1||QX-LOBECT^Lobectomía^L||20240105083000"), term, CONFIG)
    bundle = valid(mapped.bundle)
    assert mapped.counts == {"Patient": 1, "Encounter": 1, "Condition": 1, "Procedure": 1}
    assert bundle["entry"][0]["request"] == {"method": "PUT",
                                             "url": "Patient?identifier=urn:gateway:mrn|12345678"}
    (patient,) = resources(bundle, "Patient")
    assert patient["identifier"] == [{"system": "urn:gateway:mrn", "value": "12345678"}]
    assert patient["name"][0] == {"use": "official", "family": "García López", "given": ["María", "José"],
                                  "prefix": ["Dra."]}
    assert (patient["gender"], patient["birthDate"]) == ("female", "1958-03-14")
    patient_url = bundle["entry"][0]["fullUrl"]
    assert patient_url.startswith("urn:uuid:")
    (encounter,) = resources(bundle, "Encounter")
    assert encounter["class"]["code"] == "IMP" and encounter["status"] == "in-progress"
    assert encounter["period"]["start"] == "2024-01-02T11:00:00+01:00"  # Madrid in winter
    assert encounter["subject"]["reference"] == patient_url
    (condition,) = resources(bundle, "Condition")
    assert codings(condition["code"]) == {"http://hl7.org/fhir/sid/icd-10": "C34.1"}
    assert codings(condition["bodySite"][0]) == {"http://terminology.hl7.org/CodeSystem/icd-o-3": "C34.1"}
    (histology,) = condition["extension"]
    assert codings(histology["valueCodeableConcept"]) == {"http://terminology.hl7.org/CodeSystem/icd-o-3": "8140/3"}
    assert condition["verificationStatus"]["coding"][0]["code"] == "confirmed"
    (encounter_url,) = [e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Encounter"]
    assert condition["encounter"]["reference"] == encounter_url
    (procedure,) = resources(bundle, "Procedure")
    assert codings(procedure["code"]) == {"http://snomed.info/sct": "173171007",
                                          "urn:eucaim-gateway:local:procedure": "QX-LOBECT"}


def test_assigning_authority_picks_the_identifier_system(term: Terminology) -> None:
    config = EhrConfig(issuers=(("HULA", "urn:oid:1.2.3.4"),))
    mapped = map_message(message(PID), term, config)
    assert mapped.patients == [("urn:oid:1.2.3.4", "12345678")]


def test_oru_values_units_ranges_and_staging(term: Terminology) -> None:
    mapped = map_message(message(
        "PID|1||12345678^^^HULA^MR||García López^María||19580314|F",
        "OBR|1||ORD555|HEMO^Hemograma^L|||20240103080000|||||||||||||||20240103085959||LAB|F",
        "OBX|1|NM|HB^Hemoglobina^L||12,5|g/dl|12-16|N|||F|||20240103080000",
        "OBX|2|NM|CYFRA^Cyfra 21-1^L||3.1|ng/ml|<3.3|||F",
        "NTE|1||hemolysed sample",
        "OBX|3|SN|PSA^PSA^L||<^0.1|ng/ml||||F",
        "OBX|4|CWE|21905-5^Primary tumor.clinical^LN||T2a^T2a^L||||||F",
        "OBX|5|CWE|21908-9^Stage group^LN||EIIIA^Estadio IIIA^L||||||F",
        "OBX|6|ST|NOTE^Comment^L||free \\T\\ text||||||F",
        "OBX|7|NM|718-7^Hemoglobin^LN||13|mmHg of gold||||||F",
        type_="ORU^R01^ORU_R01"), term, CONFIG)
    bundle = valid(mapped.bundle)
    (report,) = resources(bundle, "DiagnosticReport")
    assert codings(report["code"])["http://loinc.org"] == "58410-2"
    assert report["issued"] == "2024-01-03T08:59:59+01:00"
    observations = resources(bundle, "Observation")
    assert len(report["result"]) == len(observations) == 7
    hb, cyfra, psa, tumour, stage, note, odd_unit = observations
    assert codings(hb["code"]) == {"http://loinc.org": "718-7", "urn:eucaim-gateway:local:lab": "HB"}
    assert hb["valueQuantity"] == {"value": 12.5, "unit": "g/dl", "system": "http://unitsofmeasure.org",
                                   "code": "g/dL"}
    assert hb["referenceRange"][0]["low"]["value"] == 12 and hb["interpretation"][0]["coding"][0]["code"] == "N"
    # Unmapped local code: kept as the only coding, its display as text; reported for coverage.
    assert cyfra["code"] == {"coding": [{"system": "urn:eucaim-gateway:local:lab", "code": "CYFRA",
                                         "display": "Cyfra 21-1"}], "text": "Cyfra 21-1"}
    assert cyfra["note"] == [{"text": "hemolysed sample"}]
    assert psa["valueQuantity"]["comparator"] == "<" and psa["valueQuantity"]["value"] == 0.1
    assert codings(tumour["code"]) == {"http://loinc.org": "21905-5"}
    assert tumour["valueCodeableConcept"]["coding"] == [{"system": AJCC, "code": "cT2a", "display": "cT2a"}]
    assert codings(stage["code"]) == {"http://loinc.org": "21908-9"}
    assert stage["valueCodeableConcept"]["coding"][0]["code"] == "IIIA"
    assert note["valueString"] == "free & text"
    assert odd_unit["valueQuantity"] == {"value": 13, "unit": "mmHg of gold"}  # no UCUM code invented
    assert {(c.system, c.code) for c in mapped.unmapped} == {("local-lab", "CYFRA"), ("local-lab", "NOTE")}
    assert all(e["request"]["method"] == "PUT" for e in bundle["entry"] if e["resource"]["resourceType"] != "Patient")
    (patient_entry,) = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    assert patient_entry["request"]["ifNoneExist"] == "identifier=urn:gateway:mrn|12345678"


@pytest.mark.parametrize(("segments", "location", "code"), [
    (("PID|1||123||Doe^Jane||19581332|F",), ("PID", 7), "102"),
    (("PID|1||||Doe^Jane||19580101|F",), ("PID", 3), "101"),
    (("PID|1||123||Doe^Jane||19580101|Q",), ("PID", 8), "103"),
    (("PID|1||123", "DG1|1||^^I10"), ("DG1", 3), "101"),
    ((DG1,), ("PID", None), "100"),
])
def test_adt_errors_say_where(term: Terminology, segments: tuple[str, ...], location: tuple[str, int | None],
                              code: str) -> None:
    with pytest.raises(MappingError) as caught:
        map_message(message(*segments), term, CONFIG)
    assert (caught.value.segment, caught.value.field_number) == location
    assert caught.value.code == code


@pytest.mark.parametrize(("segments", "fragment"), [
    (("PID|1||1", "OBX|1|NM|HB^^L||1|g/dl||||F"), "OBX outside an OBR"),
    (("PID|1||1", "OBR|1||O1|HEMO^^L", "OBX|1|NM|HB^^L||abc|g/dl||||F"), "not a number"),
    (("PID|1||1", "OBR|1||O1|HEMO^^L", "OBX|1|ED|HB^^L||x||||||F"), "value type ED is not supported"),
    (("PID|1||1", "OBR|1||O1|HEMO^^L", "OBX|1|CWE|21906-3^^LN||big^^L||||||F"), "not an AJCC N category"),
    (("PID|1||1", "OBR|1||O1|HEMO^^L", "OBX|1|NM|HB^^L||1|g/dl|||||Z"), "table 0085"),
    (("PID|1||1", "OBR|1||||"), "OBR-3"),
])
def test_oru_errors(term: Terminology, segments: tuple[str, ...], fragment: str) -> None:
    with pytest.raises(MappingError, match=fragment):
        map_message(message(*segments, type_="ORU^R01"), term, CONFIG)


def test_unsupported_types_and_events(term: Terminology) -> None:
    with pytest.raises(UnsupportedMessage) as caught:
        map_message(message(PID, type_="SIU^S12"), term, CONFIG)
    assert caught.value.code == "200"
    with pytest.raises(UnsupportedMessage) as caught:
        map_message(message(PID, type_="ADT^A99"), term, CONFIG)
    assert caught.value.code == "201"


def test_a40_merge(term: Terminology) -> None:
    mapped = map_message(message(PID, "MRG|OLD77^^^HULA^MR", type_="ADT^A40^ADT_A39"), term, CONFIG)
    valid(mapped.bundle)
    assert mapped.merges == [(("urn:gateway:mrn", "OLD77"), ("urn:gateway:mrn", "12345678"))]
    with pytest.raises(MappingError, match="itself"):
        map_message(message(PID, "MRG|12345678^^^HULA^MR", type_="ADT^A40"), term, CONFIG)
    with pytest.raises(MappingError, match="PID/MRG"):
        map_message(message(PID, type_="ADT^A40"), term, CONFIG)


def test_a08_update_and_v23_message(term: Terminology) -> None:
    pv1 = seg("PV1", {1: "1", 2: "O", 19: "V9", 44: "20230101", 45: "20230102"})
    mapped = map_message(message(PID, pv1, type_="ADT^A08", version="2.3"), term, CONFIG)
    (encounter,) = resources(valid(mapped.bundle), "Encounter")
    assert encounter["status"] == "finished" and encounter["class"]["code"] == "AMB"


def test_times_with_and_without_offset() -> None:
    assert hl7_datetime("20240701120000", None) is not None
    assert hl7_datetime("20240701120000", CONFIG.zone) == "2024-07-01T12:00:00+02:00"
    assert hl7_datetime("202407011200+0000", CONFIG.zone) == "2024-07-01T12:00:00+00:00"
    assert hl7_datetime("20240701", CONFIG.zone) == "2024-07-01"
    with pytest.raises(ValueError):
        hl7_datetime("20240230", CONFIG.zone)


@pytest.mark.parametrize(("value", "axis", "expected"), [
    ("T2a", "T", "cT2a"), ("cT2A", "T", "cT2a"), ("pN1mi", "N", "pN1mi"), ("M0", "M", "cM0"), ("tx", "T", "cTX"),
    ("Tis", "T", "cTis"), ("N2", "T", None), ("T", "T", None), ("stage II", "T", None),
])
def test_ajcc_categories(value: str, axis: str, expected: str | None) -> None:
    assert ajcc_category(value, axis) == expected


# --- CSV ---

def map_csv(term: Terminology, mapping: str, text: str) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    mapper = RowMapper(load_mapping(MAPPINGS, mapping, term), term, CONFIG)
    bundles, errors = [], []
    for line, row in mapper.open(io.StringIO(text)):
        try:
            bundles.append(valid(mapper.map_row(line, row).builder.bundle()))
        except RowError as exc:
            errors.append((line, str(exc)))
    return bundles, errors


def test_csv_patients(term: Terminology) -> None:
    bundles, errors = map_csv(term, "demo-patients", "NumHistoria;Apellidos;Nombre;FechaNacimiento;Sexo\n"
                              "1001;Ruiz;Ana María;03/02/1960;M\n1002;Gil;Juan;31/02/1960;H\n1003;X;Y;01/01/1970;Z\n"
                              ";Nadie;Sin;01/01/1970;H\n")
    (bundle,) = bundles
    (patient,) = resources(bundle, "Patient")
    assert patient["name"] == [{"use": "official", "family": "Ruiz", "given": ["Ana", "María"]}]
    assert (patient["gender"], patient["birthDate"]) == ("female", "1960-02-03")
    assert [line for line, _ in errors] == [3, 4, 5]
    assert "does not match the date format" in errors[0][1] and "'Z' is not one of H, M" in errors[1][1]
    assert "mrn (column 'NumHistoria') is empty" in errors[2][1]


def test_csv_diagnoses_local_codes(term: Terminology) -> None:
    bundles, errors = map_csv(term, "demo-diagnoses", "NumHistoria;CodDiagnostico;Diagnostico;FechaDiagnostico;"
                              "Lateralidad\n1001;ONC-PULM-ADC;Adenocarcinoma;05/03/2021;D\n"
                              "1002;ONC-RARE;Tumor raro;05/03/2021;\n")
    assert not errors
    condition = resources(bundles[0], "Condition")[0]
    assert codings(condition["code"]) == {"http://hl7.org/fhir/sid/icd-10": "C34.1",
                                          "urn:eucaim-gateway:local:diagnosis": "ONC-PULM-ADC"}
    assert condition["identifier"][0]["value"] == "1001:icd-10:C34.1"  # the same Condition as a DG1 with C34.1
    site = condition["bodySite"][0]
    assert codings(site) == {"http://terminology.hl7.org/CodeSystem/icd-o-3": "C34.1"}
    assert site["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "24028007"  # right
    assert codings(condition["extension"][0]["valueCodeableConcept"]) == {
        "http://terminology.hl7.org/CodeSystem/icd-o-3": "8140/3"}
    unmapped = resources(bundles[1], "Condition")[0]
    assert unmapped["code"] == {"coding": [{"system": "urn:eucaim-gateway:local:diagnosis", "code": "ONC-RARE",
                                            "display": "Tumor raro"}], "text": "Tumor raro"}
    # The patient of a diagnosis row is created only if missing (conditional create).
    assert bundles[0]["entry"][0]["request"]["ifNoneExist"] == "identifier=urn:gateway:mrn|1001"


def test_csv_labs_staging_treatments(term: Terminology) -> None:
    labs, errors = map_csv(term, "demo-labs", "NumHistoria;CodPrueba;Prueba;Resultado;Unidad;FechaMuestra;Rango;"
                           "Indicador\n1;PSA;PSA;4,2;ng/ml;02/03/2021 08:15;0-4;H\n1;PSA;PSA;<0.1;ng/ml;02/04/2021;;\n"
                           "1;PSA;PSA;hemolysed;;02/05/2021 08:00;;\n1;PSA;PSA;1;ng/ml;2021-05-02;;\n")
    assert [line for line, _ in errors] == [5]
    first, second, text = (resources(b, "Observation")[0] for b in labs)
    assert first["valueQuantity"]["value"] == 4.2 and first["effectiveDateTime"] == "2021-03-02T08:15:00+01:00"
    assert first["referenceRange"][0]["high"]["value"] == 4
    assert second["valueQuantity"]["comparator"] == "<" and second["effectiveDateTime"] == "2021-04-02"
    assert text["valueString"] == "hemolysed"
    staging, errors = map_csv(term, "demo-staging", "NumHistoria;FechaEstadificacion;T;N;M;Tipo\n"
                              "1;01/03/2021;T2a;N1;M0;C\n2;01/03/2021;T9z;N0;M0;C\n3;01/03/2021;;;;P\n")
    assert [line for line, _ in errors] == [3, 4]
    observations = resources(staging[0], "Observation")
    assert [(codings(o["code"])["http://loinc.org"], o["valueCodeableConcept"]["coding"][0]["code"])
            for o in observations] == [("21905-5", "cT2a"), ("21906-3", "cN1"), ("21907-1", "cM0")]
    treatments, errors = map_csv(term, "demo-treatments", "NumHistoria;CodTratamiento;Tratamiento;TipoTratamiento;"
                                 "FechaInicio;FechaFin\n1;RT-EXT;Radioterapia;radiotherapy;01/04/2021;05/05/2021\n")
    assert not errors
    (procedure,) = resources(treatments[0], "Procedure")
    assert codings(procedure["code"])["http://snomed.info/sct"] == "108290001"
    assert codings(procedure["category"])["http://snomed.info/sct"] == "108290001"
    assert procedure["performedPeriod"] == {"start": "2021-04-01", "end": "2021-05-05"}


def test_csv_header_must_hold_the_mapped_columns(term: Terminology) -> None:
    with pytest.raises(MappingTableError, match="lacks the columns"):
        map_csv(term, "demo-patients", "Numero;Apellidos\n1;X\n")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_broken_tables_are_reported_with_file_and_line(tmp_path: Path, term: Terminology) -> None:
    write(tmp_path / "code_systems.toml", (MAPPINGS / "code_systems.toml").read_text(encoding="utf-8"))
    write(tmp_path / "codes" / "x.csv", "source_system,source_code,target_system,target_code\n"
                                        "local-lab,A,loinc,1-1\nlocal-lab,B,nosuch,2\n")
    with pytest.raises(MappingTableError, match=r"x\.csv:3: target_system 'nosuch'"):
        load_terminology(tmp_path)
    write(tmp_path / "codes" / "x.csv", "source_system,code\n")
    with pytest.raises(MappingTableError, match="header lacks"):
        load_terminology(tmp_path)
    (tmp_path / "codes" / "x.csv").unlink()
    write(tmp_path / "csv" / "bad.toml", 'kind = "labs"\n[fields]\nmrn = "A"\n')
    with pytest.raises(MappingTableError, match="needs the fields code, value, date"):
        load_mapping(tmp_path, "bad", load_terminology(tmp_path))
    write(tmp_path / "csv" / "bad.toml", 'kind = "patients"\n[fields]\nmrn = "A"\nsex = { column = "S", '
                                         'values = { X = "robot" } }\n')
    with pytest.raises(MappingTableError, match="robot"):
        load_mapping(tmp_path, "bad", load_terminology(tmp_path))


def test_coverage_counts_local_codes(term: Terminology) -> None:
    stored = [
        {"resourceType": "Observation", "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"},
                                                            {"system": "urn:eucaim-gateway:local:lab", "code": "HB"}]},
         "valueQuantity": {"value": 1, "unit": "g/dl", "system": "http://unitsofmeasure.org", "code": "g/dL"}},
        {"resourceType": "Observation", "code": {"coding": [{"system": "urn:eucaim-gateway:local:lab",
                                                             "code": "CYFRA"}], "text": "Cyfra"},
         "valueQuantity": {"value": 1, "unit": "furlongs"}},
        {"resourceType": "Observation", "code": {"coding": [{"system": "urn:eucaim-gateway:local:lab",
                                                             "code": "CYFRA"}], "text": "Cyfra"}},
        {"resourceType": "Condition", "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10",
                                                           "code": "C61"}]}},
    ]
    report = {entry["system"]: entry for entry in coverage(term, stored)["systems"]}
    assert set(report) == {"local-lab", "ucum"}
    lab = report["local-lab"]
    assert (lab["mapped"], lab["unmapped"]) == (1, 2)
    assert lab["unmapped_codes"] == [{"code": "CYFRA", "display": "Cyfra", "count": 2, "in_tables_now": False}]
    assert (report["ucum"]["mapped"], report["ucum"]["unmapped"]) == (1, 1)
