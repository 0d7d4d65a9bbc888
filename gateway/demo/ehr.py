"""The demo data set's EHR part: HL7 v2 messages, CSV extracts and a FHIR Bundle for the demo patients.

Same MRNs as the DICOM studies' PatientIDs, the cancers of the plan (ICD-10, ICD-O-3, TNM from the lesions at
diagnosis), labs and treatments that fit them, dated around the studies. The files are written to
``DATA_DIR/ehr-examples`` (one of each format a hospital sends, with the mappings that read them) and then
imported through the same paths as real data: the HL7 files message by message as over MLLP, the CSV files
with their column mappings in ``mappings/csv/demo-*.toml``, the Bundle as a transaction. A few local codes
have no translation on purpose, so that ``gateway mappings coverage`` has something to show.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import random
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.demo.model import DemoPatient

log = logging.getLogger(__name__)

EXAMPLES_DIR = "ehr-examples"

# The hospital information system's oncology codes for the plan's (ICD-10, morphology) pairs.
LOCAL_DIAGNOSIS = {
    ("C34.1", "8140/3"): "ONC-PULM-ADC", ("C34.1", "8070/3"): "ONC-PULM-SCC", ("C50.4", "8500/3"): "ONC-MAMA-CDI",
    ("C50.4", "8520/3"): "ONC-MAMA-CLI", ("C61", "8140/3"): "ONC-PROST-ADC", ("C20", "8140/3"): "ONC-RECTO-ADC",
    ("C32.0", "8070/3"): "ONC-GLOTIS-SCC", ("C09.9", "8070/3"): "ONC-AMIG-SCC", ("C22.0", "8170/3"): "ONC-HCC",
    ("C64", "8312/3"): "ONC-RENAL-CCR",
}
# (local code, name, unit, reference range, low, high) of the tests drawn for every patient.
BLOOD_COUNT = (("HB", "Hemoglobina", "g/dl", (12.0, 16.0), 10.5, 15.5), ("LEUC", "Leucocitos", "10^9/l", (4.0, 11.0),
               3.5, 10.5), ("PLT", "Plaquetas", "10^9/l", (150.0, 400.0), 140.0, 420.0))
CHEMISTRY = (("CREA", "Creatinina", "mg/dl", (0.6, 1.2), 0.6, 1.4), ("ALT", "ALT/GPT", "U/l", (7.0, 40.0), 10.0, 55.0),
             ("AST", "AST/GOT", "U/l", (8.0, 40.0), 12.0, 50.0), ("BILT", "Bilirrubina total", "mg/dl", (0.2, 1.2),
                                                                   0.3, 1.4))
# Tumour markers by cancer; CYFRA 21-1 and SCC have no row in mappings/codes (they show in the coverage report).
MARKERS = {
    "lung": ("CYFRA", "CYFRA 21-1", "ng/ml", (0.0, 3.3), 1.5, 12.0),
    "breast": ("CA153", "CA 15-3", "U/ml", (0.0, 30.0), 10.0, 60.0),
    "prostate": ("PSA", "PSA total", "ng/ml", (0.0, 4.0), 4.5, 40.0),
    "colorectal": ("CEA", "CEA", "ng/ml", (0.0, 5.0), 2.0, 30.0),
    "head_and_neck": ("SCC", "Antígeno SCC", "ng/ml", (0.0, 1.5), 0.8, 6.0),
    "liver": ("AFP", "Alfa-fetoproteína", "ng/ml", (0.0, 10.0), 8.0, 800.0),
    "kidney": ("LDH", "LDH", "U/l", (135.0, 225.0), 150.0, 320.0),
}
# (local code, name, type, start day after diagnosis, days long) by cancer; TACE and QX-NEFRECT are not in
# the tables either.
TREATMENTS = {
    "lung": (("QX-LOBECT", "Lobectomía pulmonar", "surgery", 30, 0), ("QT-CARBO-PEME", "Carboplatino + pemetrexed",
                                                                        "chemotherapy", 60, 84)),
    "breast": (("QX-MAST-PARC", "Mastectomía parcial", "surgery", 28, 0), ("RT-EXT", "Radioterapia externa",
                                                                          "radiotherapy", 70, 35)),
    "prostate": (("QX-PROSTATECT", "Prostatectomía radical", "surgery", 45, 0),),
    "colorectal": (("QT-FOLFOX", "FOLFOX", "chemotherapy", 21, 42), ("QX-RECTO-RA", "Resección anterior de recto",
                                                                       "surgery", 90, 0)),
    "head_and_neck": (("RT-EXT", "Radioterapia externa", "radiotherapy", 25, 49), ("QT-CDDP", "Cisplatino",
                                                                                   "chemotherapy", 25, 49)),
    "liver": (("TACE", "Quimioembolización transarterial", "chemotherapy", 35, 0),),
    "kidney": (("QX-NEFRECT", "Nefrectomía radical", "surgery", 40, 0),),
}
LATERALITY = {"left": "I", "right": "D"}  # izquierda / derecha, as the HIS writes it


def _rng(patient: DemoPatient, purpose: str) -> random.Random:
    return random.Random(zlib.crc32(f"{patient.patient_id}|{purpose}".encode()))


def _day(text: str) -> dt.date:
    return dt.datetime.strptime(text, "%Y%m%d").date()


def _er7(value: str) -> str:
    return value.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\").replace("&", "\\T\\") \
        .replace("~", "\\R\\")


def _split_name(name: str) -> tuple[str, str]:
    family, _, given = name.partition("^")
    return family, given


def _value(rng: random.Random, low: float, high: float) -> float:
    value = rng.uniform(low, high)
    return round(value, 1 if value < 100 else 0)


def _flag(value: float, reference: tuple[float, float]) -> str:
    return "H" if value > reference[1] else "L" if value < reference[0] else "N"


def hl7_messages(plan: Sequence[DemoPatient]) -> tuple[str, str]:
    """ADT^A04 registrations (PID, PV1, DG1) and ORU^R01 results (blood count, chemistry, marker)."""
    adt, oru = [], []
    for number, patient in enumerate(plan, start=1):
        first = patient.studies[0]
        family, given = _split_name(patient.name)
        pid = (f"PID|1||{patient.patient_id}^^^{patient.issuer}^MR||{_er7(family)}^{_er7(given)}^^^^^L||"
               f"{patient.birth_date}|{patient.sex}")
        dx = patient.diagnosis
        facility = patient.issuer
        visit_time = f"{first.study_date}0830"
        adt.append("\r".join([
            f"MSH|^~\\&|HIS|{facility}|GATEWAY|EUCAIM|{visit_time}||ADT^A04^ADT_A01|ADT{number:05d}|P|2.5.1|||AL|NE||"
            "UNICODE UTF-8",
            f"EVN|A04|{visit_time}",
            pid,
            f"PV1|1|O|ONCO^^^{facility}||||||||ONC|||||||||V{first.accession_number}|||||||||||||||||||||||||"
            f"{visit_time}",
            f"DG1|1||{dx.icd10_code}^{_er7(dx.icd10_display)}^I10^{dx.icdo3_morphology}^"
            f"{_er7(dx.icdo3_morphology_display)}^ICDO3||{dx.diagnosis_date}|W",
        ]) + "\r")
        rng = _rng(patient, "labs-at-diagnosis")
        sample = f"{first.study_date}0745"
        order = f"LAB{first.accession_number}"
        segments = [
            f"MSH|^~\\&|LIS|{facility}|GATEWAY|EUCAIM|{first.study_date}1130||ORU^R01^ORU_R01|LAB{number:05d}|P|2.5.1"
            "|||AL|NE||UNICODE UTF-8",
            pid,
            f"OBR|1||{order}H|HEMO^Hemograma^L|||{sample}|||||||||||||||{first.study_date}1030||LAB|F",
        ]
        for index, (code, name, unit, reference, low, high) in enumerate(BLOOD_COUNT, start=1):
            value = _value(rng, low, high)
            segments.append(f"OBX|{index}|NM|{code}^{_er7(name)}^L||{value}|{_er7(unit)}|{reference[0]}-{reference[1]}|"
                            f"{_flag(value, reference)}|||F|||{sample}")
        segments.append(f"OBR|2||{order}B|BIOQ^Bioquimica^L|||{sample}|||||||||||||||{first.study_date}1100||LAB|F")
        marker = MARKERS[dx.site]
        for index, (code, name, unit, reference, low, high) in enumerate((*CHEMISTRY, marker), start=1):
            value = _value(rng, low, high)
            segments.append(f"OBX|{index}|NM|{code}^{_er7(name)}^L||{value}|{_er7(unit)}|{reference[0]}-{reference[1]}|"
                            f"{_flag(value, reference)}|||F|||{sample}")
        oru.append("\r".join(segments) + "\r")
    return "\n".join(adt), "\n".join(oru)


def _csv(header: Sequence[str], rows: list[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=";", lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def csv_files(plan: Sequence[DemoPatient]) -> dict[str, str]:
    """The HIS extracts: patients, diagnoses, staging, labs (follow-up markers), treatments; ';'-separated,
    dates as dd/mm/yyyy like most European exports."""
    patients, diagnoses, staging, labs, treatments = [], [], [], [], []
    for patient in plan:
        family, given = _split_name(patient.name)
        birth = _day(patient.birth_date)
        patients.append((patient.patient_id, family, given, f"{birth:%d/%m/%Y}", "H" if patient.sex == "M" else "M"))
        dx = patient.diagnosis
        diagnosed = _day(dx.diagnosis_date)
        local = LOCAL_DIAGNOSIS[(dx.icd10_code, dx.icdo3_morphology)]
        diagnoses.append((patient.patient_id, local, dx.icd10_display, f"{diagnosed:%d/%m/%Y}",
                          LATERALITY.get(dx.laterality or "", "")))
        staged = next((study for study in patient.studies if study.purpose == "staging"), patient.studies[0])
        t, n, m = (part[1:] for part in dx.clinical_tnm.split())  # "cT2a" -> "T2a": the HIS drops the prefix
        staging.append((patient.patient_id, f"{max(_day(staged.study_date), diagnosed):%d/%m/%Y}", t, n, m, "C"))
        code, name, unit, reference, low, high = MARKERS[dx.site]
        rng = _rng(patient, "follow-up-labs")
        for study in patient.studies[1:]:
            value = _value(rng, low, high)
            labs.append((patient.patient_id, code, name, value, unit, f"{_day(study.study_date):%d/%m/%Y} 08:00",
                         f"{reference[0]}-{reference[1]}", _flag(value, reference)))
        for code, name, kind, start_day, length in TREATMENTS[dx.site]:
            start = diagnosed + dt.timedelta(days=start_day)
            end = start + dt.timedelta(days=length) if length else None
            treatments.append((patient.patient_id, code, name, kind, f"{start:%d/%m/%Y}",
                               f"{end:%d/%m/%Y}" if end else ""))
    return {
        "patients.csv": _csv(("NumHistoria", "Apellidos", "Nombre", "FechaNacimiento", "Sexo"), patients),
        "diagnoses.csv": _csv(("NumHistoria", "CodDiagnostico", "Diagnostico", "FechaDiagnostico", "Lateralidad"),
                              diagnoses),
        "staging.csv": _csv(("NumHistoria", "FechaEstadificacion", "T", "N", "M", "Tipo"), staging),
        "labs.csv": _csv(("NumHistoria", "CodPrueba", "Prueba", "Resultado", "Unidad", "FechaMuestra", "Rango",
                          "Indicador"), labs),
        "treatments.csv": _csv(("NumHistoria", "CodTratamiento", "Tratamiento", "TipoTratamiento", "FechaInicio",
                                "FechaFin"), treatments),
    }


CSV_MAPPINGS = (("patients.csv", "demo-patients"), ("diagnoses.csv", "demo-diagnoses"),
                ("staging.csv", "demo-staging"), ("labs.csv", "demo-labs"), ("treatments.csv", "demo-treatments"))


def fhir_bundle(plan: Sequence[DemoPatient], mrn_system: str) -> dict[str, Any]:
    """Body weight and height at the first study, as another FHIR system would send them: a transaction."""
    entries = []
    for patient in plan:
        first = patient.studies[0]
        patient_url = f"urn:uuid:{_uuid(patient.patient_id)}"
        entries.append({"fullUrl": patient_url,
                        "resource": {"resourceType": "Patient",
                                     "identifier": [{"system": mrn_system, "value": patient.patient_id}]},
                        "request": {"method": "POST", "url": "Patient",
                                    "ifNoneExist": f"identifier={mrn_system}|{patient.patient_id}"}})
        when = f"{_day(first.study_date).isoformat()}"
        for code, display, value, unit in (("29463-7", "Body weight", round(first.patient_weight_kg, 1), "kg"),
                                           ("8302-2", "Body height", round(first.patient_size_m * 100), "cm")):
            key = f"{patient.patient_id}:{code}:{first.study_date}"
            entries.append({
                "fullUrl": f"urn:uuid:{_uuid(key)}",
                "resource": {
                    "resourceType": "Observation", "status": "final",
                    "identifier": [{"system": "urn:eucaim-gateway:demo:vital-signs", "value": key}],
                    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                              "code": "vital-signs"}]}],
                    "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}],
                             "text": display},
                    "subject": {"reference": patient_url}, "effectiveDateTime": when,
                    "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org",
                                      "code": unit}},
                "request": {"method": "PUT",
                            "url": f"Observation?identifier=urn:eucaim-gateway:demo:vital-signs|{key}"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _uuid(key: str) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"eucaim-gateway-demo:{key}"))


README = """Examples of the EHR data the gateway takes, for the demo patients (same MRNs as the DICOM studies).

adt.hl7        HL7 v2.5.1 ADT^A04 registrations (PID, PV1, DG1): what the HIS sends over MLLP
oru.hl7        HL7 v2.5.1 ORU^R01 lab results (OBR/OBX) with the lab's local test codes
patients.csv   patient extract                 gateway ehr import patients.csv --mapping demo-patients
diagnoses.csv  oncology diagnoses (local codes) gateway ehr import diagnoses.csv --mapping demo-diagnoses
staging.csv    clinical TNM                    gateway ehr import staging.csv --mapping demo-staging
labs.csv       follow-up tumour markers        gateway ehr import labs.csv --mapping demo-labs
treatments.csv surgery, chemo, radiotherapy    gateway ehr import treatments.csv --mapping demo-treatments
bundle.json    a FHIR transaction Bundle        gateway ehr import bundle.json

The HL7 files import with `gateway ehr import adt.hl7`, or send them to the MLLP port (`[mllp] port`).
Column mappings: mappings/csv/demo-*.toml; code translations: mappings/codes/*.csv. Local codes without a
translation are stored as sent and listed by `gateway mappings coverage`.
"""


def write_demo_files(plan: Sequence[DemoPatient], directory: Path, mrn_system: str) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    adt, oru = hl7_messages(plan)
    contents: dict[str, str] = {"adt.hl7": adt, "oru.hl7": oru, **csv_files(plan),
                                "bundle.json": json.dumps(fhir_bundle(plan, mrn_system), indent=2),
                                "README.txt": README}
    paths = {}
    for name, text in contents.items():
        path = directory / name
        path.write_text(text, encoding="utf-8", newline="")
        paths[name] = path
    return paths


def ingest_demo_ehr(node: Any, plan: Sequence[DemoPatient]) -> dict[str, Any]:
    """Write the example files and import them; a summary of what each import did."""
    service = node.extensions["ehr"]
    paths = write_demo_files(plan, node.settings.data_dir / EXAMPLES_DIR, service.config.mrn_system)
    if "fhir" not in node.extensions:
        log.warning("no FHIR store on this node: EHR examples written to %s but not imported",
                    paths["adt.hl7"].parent)
        return {}
    summary: dict[str, Any] = {}
    for name in ("adt.hl7", "oru.hl7"):
        report = service.import_hl7_file(paths[name])
        summary[name] = report
        if report["failures"]:
            log.error("demo EHR data: %s: %s", name, report["failures"])
    for name, mapping in CSV_MAPPINGS:
        report = service.import_csv(paths[name], mapping)
        summary[name] = report
        if report["rejected"]:
            log.error("demo EHR data: %s: %s", name, report["rejected_rows"])
    response = service.import_bundle(json.loads(paths["bundle.json"].read_text(encoding="utf-8")))
    summary["bundle.json"] = {"entries": len(response.get("entry", []))}
    log.info("demo EHR data imported from %s: %d HL7 messages, %d CSV rows, %d Bundle entries",
             paths["adt.hl7"].parent, sum(summary[n]["accepted"] for n in ("adt.hl7", "oru.hl7")),
             sum(summary[n]["stored"] for n, _ in CSV_MAPPINGS), summary["bundle.json"]["entries"])
    return summary
