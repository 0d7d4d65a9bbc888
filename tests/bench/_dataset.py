"""Synthetic DICOM data set for the DICOMweb benchmark, generated once into a cache folder.

Every study is derived deterministically from (seed, study index), so the same description drives both the
DICOM files that are sent over STOW-RS and the index rows that `--scale` bulk-inserts into the gateway's
database without files. Layout: `studies × 4 series × 10 instances` of 64×64 int16 images, explicit VR
little endian, with PatientID/PatientName/StudyDate/Modality/AccessionNumber varying plausibly.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import random
import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

DATASET_FORMAT_VERSION = 1
SERIES_PER_STUDY = 4
INSTANCES_PER_SERIES = 10
INSTANCES_PER_STUDY = SERIES_PER_STUDY * INSTANCES_PER_SERIES
IMAGE_SIZE = 64
# On average 2.5 studies per patient: patient of study k is k * 2 // 5.
STUDIES_PER_PATIENT_NUMERATOR, STUDIES_PER_PATIENT_DENOMINATOR = 5, 2
FIRST_STUDY_YEAR, LAST_STUDY_YEAR = 2005, 2024

SOP_CLASS_BY_MODALITY = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
}
# (study modality, probability, study description, [(series modality, series description, body part)] × 4)
STUDY_KINDS: list[tuple[str, float, str, list[tuple[str, str, str]]]] = [
    ("CT", 0.45, "CT THORAX ABDOMEN WITH CONTRAST", [
        ("CT", "TOPOGRAM", "CHEST"), ("CT", "THORAX AX 1.0 B70f", "CHEST"),
        ("CT", "ABDOMEN AX 3.0 PV", "ABDOMEN"), ("CT", "THORAX COR MPR", "CHEST")]),
    ("MR", 0.35, "MR PROSTATE MULTIPARAMETRIC", [
        ("MR", "T2 TSE AX", "PROSTATE"), ("MR", "T2 TSE SAG", "PROSTATE"),
        ("MR", "DWI b50-800 ADC", "PROSTATE"), ("MR", "T1 VIBE DCE", "PROSTATE")]),
    ("PT", 0.20, "PET-CT FDG WHOLE BODY", [
        ("CT", "CT AC WB 3.0", "WHOLEBODY"), ("PT", "PET AC WB", "WHOLEBODY"),
        ("PT", "PET NAC WB", "WHOLEBODY"), ("CT", "CT DIAG THORAX 1.0", "CHEST")]),
]
FAMILY_NAMES = ["GARCIA", "MULLER", "ROSSI", "MARTIN", "SILVA", "NOWAK", "JANSEN", "DUBOIS", "BERG",
                "KOWALSKI", "FERRARI", "LOPEZ", "SCHMIDT", "PEETERS", "NIELSEN", "PAPADOPOULOS",
                "HORVATH", "NOVAK", "OLSEN", "MURPHY", "COSTA", "FISCHER", "ROMANO", "LAURENT"]
GIVEN_NAMES = ["ANNA", "MARIA", "ELENA", "SOFIA", "LUCIA", "EVA", "CLARA", "JOHANNES", "LUCA", "MARCO",
               "PIETER", "JAN", "CARLOS", "PIERRE", "NIKOS", "LARS", "TOMAS", "SEAN", "MIGUEL", "PAUL"]
REFERRING_PHYSICIANS = ["ONCOLOGY^CLINIC", "UROLOGY^DEPT", "RADIOTHERAPY^UNIT", "PULMONOLOGY^WARD"]


def _uid(seed: int, *path: int) -> str:
    """Deterministic UID under the 2.25 (UUID-derived) root; at most 44 characters."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, '/'.join(map(str, (seed, *path)))).int}"


@dataclass(frozen=True)
class PatientPlan:
    patient_id: str
    patient_name: str
    birth_date: str
    sex: str


@dataclass(frozen=True)
class SeriesPlan:
    uid: str
    number: int
    modality: str
    description: str
    body_part: str
    instance_uids: list[str]
    frame_of_reference_uid: str


@dataclass(frozen=True)
class StudyPlan:
    index: int
    uid: str
    patient: PatientPlan
    study_date: str
    study_time: str
    accession_number: str
    description: str
    referring_physician: str
    series: list[SeriesPlan]

    @property
    def modalities(self) -> list[str]:
        return sorted({series.modality for series in self.series})


def patient_plan(seed: int, patient_index: int) -> PatientPlan:
    rng = random.Random(f"patient/{seed}/{patient_index}")
    birth = dt.date(1930, 1, 1) + dt.timedelta(days=rng.randrange(365 * 60))
    return PatientPlan(
        patient_id=f"P{patient_index:08d}",
        patient_name=f"{rng.choice(FAMILY_NAMES)}^{rng.choice(GIVEN_NAMES)}",
        birth_date=birth.strftime("%Y%m%d"),
        sex=rng.choice("FM"),
    )


def study_plan(seed: int, study_index: int) -> StudyPlan:
    rng = random.Random(f"study/{seed}/{study_index}")
    _, _, description, series_kinds = rng.choices(STUDY_KINDS, weights=[kind[1] for kind in STUDY_KINDS])[0]
    first_day = dt.date(FIRST_STUDY_YEAR, 1, 1)
    span_days = (dt.date(LAST_STUDY_YEAR, 12, 31) - first_day).days + 1
    study_date = first_day + dt.timedelta(days=rng.randrange(span_days))
    patient_index = study_index * STUDIES_PER_PATIENT_DENOMINATOR // STUDIES_PER_PATIENT_NUMERATOR
    series = [
        SeriesPlan(
            uid=_uid(seed, study_index, series_number),
            number=series_number,
            modality=modality,
            description=series_description,
            body_part=body_part,
            instance_uids=[_uid(seed, study_index, series_number, instance_number)
                           for instance_number in range(1, INSTANCES_PER_SERIES + 1)],
            frame_of_reference_uid=_uid(seed, study_index, 0, 0, series_number),
        )
        for series_number, (modality, series_description, body_part) in enumerate(series_kinds, start=1)
    ]
    return StudyPlan(
        index=study_index,
        uid=_uid(seed, study_index),
        patient=patient_plan(seed, patient_index),
        study_date=study_date.strftime("%Y%m%d"),
        study_time=f"{rng.randrange(7, 19):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}",
        accession_number=f"ACC{seed % 100:02d}{study_index:09d}",
        description=description,
        referring_physician=rng.choice(REFERRING_PHYSICIANS),
        series=series,
    )


def iter_index_rows(seed: int, first_study_index: int, study_count: int) -> Iterator[dict[str, Any]]:
    """One row per instance (DICOM keywords → values) for studies [first, first + count): the bulk-fill feed.

    The rows describe exactly what the DICOM files of those studies would contain, without the files.
    """
    for study_index in range(first_study_index, first_study_index + study_count):
        study = study_plan(seed, study_index)
        for series in study.series:
            for instance_number, sop_instance_uid in enumerate(series.instance_uids, start=1):
                yield {
                    "PatientID": study.patient.patient_id,
                    "PatientName": study.patient.patient_name,
                    "PatientBirthDate": study.patient.birth_date,
                    "PatientSex": study.patient.sex,
                    "StudyInstanceUID": study.uid,
                    "StudyDate": study.study_date,
                    "StudyTime": study.study_time,
                    "AccessionNumber": study.accession_number,
                    "StudyID": str(study_index),
                    "StudyDescription": study.description,
                    "ReferringPhysicianName": study.referring_physician,
                    "SeriesInstanceUID": series.uid,
                    "SeriesNumber": series.number,
                    "SeriesDescription": series.description,
                    "Modality": series.modality,
                    "BodyPartExamined": series.body_part,
                    "SOPInstanceUID": sop_instance_uid,
                    "SOPClassUID": SOP_CLASS_BY_MODALITY[series.modality],
                    "InstanceNumber": instance_number,
                    "Rows": IMAGE_SIZE,
                    "Columns": IMAGE_SIZE,
                    "TransferSyntaxUID": ExplicitVRLittleEndian,
                }


# ----------------------------------------------------------------------------------------------------------
# Manifest of a generated data set (what the clients send and what the queries must return)


@dataclass
class SeriesEntry:
    uid: str
    modality: str
    instance_count: int
    byte_count: int
    files: list[str]  # relative to the data set folder


@dataclass
class StudyEntry:
    uid: str
    patient_id: str
    patient_name: str
    study_date: str
    accession_number: str
    modalities: list[str]
    series: list[SeriesEntry] = field(default_factory=list)


@dataclass
class Manifest:
    folder: Path
    seed: int
    studies: list[StudyEntry]

    @property
    def instance_count(self) -> int:
        return sum(series.instance_count for study in self.studies for series in study.series)

    @property
    def byte_count(self) -> int:
        return sum(series.byte_count for study in self.studies for series in study.series)

    def all_series(self) -> list[tuple[StudyEntry, SeriesEntry]]:
        return [(study, series) for study in self.studies for series in study.series]

    def save(self) -> None:
        document = {"format": DATASET_FORMAT_VERSION, "seed": self.seed,
                    "studies": [asdict(study) for study in self.studies]}
        (self.folder / "manifest.json").write_text(json.dumps(document), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        document = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        if document.get("format") != DATASET_FORMAT_VERSION:
            raise ValueError(f"{folder}: data set format {document.get('format')}, expected "
                             f"{DATASET_FORMAT_VERSION}; delete the folder to regenerate it")
        studies = [StudyEntry(**{**study, "series": [SeriesEntry(**series) for series in study["series"]]})
                   for study in document["studies"]]
        return cls(folder=folder, seed=document["seed"], studies=studies)


# ----------------------------------------------------------------------------------------------------------
# Writing the DICOM files


def _instance_dataset(study: StudyPlan, series: SeriesPlan) -> Dataset:
    """Everything but the per-instance attributes; mutated in place for each instance of the series."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SOP_CLASS_BY_MODALITY[series.modality]
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = SOP_CLASS_BY_MODALITY[series.modality]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = study.study_time
    ds.AccessionNumber = study.accession_number
    ds.Modality = series.modality
    ds.Manufacturer = "EUCAIM BENCH"
    ds.InstitutionName = "BENCHMARK HOSPITAL"
    ds.ReferringPhysicianName = study.referring_physician
    ds.StudyDescription = study.description
    ds.SeriesDescription = series.description
    ds.PatientName = study.patient.patient_name
    ds.PatientID = study.patient.patient_id
    ds.PatientBirthDate = study.patient.birth_date
    ds.PatientSex = study.patient.sex
    ds.BodyPartExamined = series.body_part
    ds.SliceThickness = "3.0"
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = series.uid
    ds.StudyID = str(study.index)
    ds.SeriesNumber = series.number
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = IMAGE_SIZE
    ds.PixelSpacing = ["0.8", "0.8"]
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if series.modality in ("CT", "PT"):
        ds.RescaleIntercept = "-1024" if series.modality == "CT" else "0"
        ds.RescaleSlope = "1"
    return ds


def _write_study(folder: Path, seed: int, study_index: int) -> dict[str, Any]:
    study = study_plan(seed, study_index)
    entry = StudyEntry(uid=study.uid, patient_id=study.patient.patient_id,
                       patient_name=study.patient.patient_name, study_date=study.study_date,
                       accession_number=study.accession_number, modalities=study.modalities)
    rng = np.random.default_rng([seed, study_index])
    gradient = np.add.outer(np.arange(IMAGE_SIZE), np.arange(IMAGE_SIZE)).astype(np.int16) * 8
    for series in study.series:
        series_folder = folder / "files" / f"{study_index:06d}" / f"{series.number}"
        series_folder.mkdir(parents=True, exist_ok=True)
        ds = _instance_dataset(study, series)
        noise = rng.integers(-200, 200, size=(len(series.instance_uids), IMAGE_SIZE, IMAGE_SIZE),
                             dtype=np.int16)
        files: list[str] = []
        byte_count = 0
        for offset, sop_instance_uid in enumerate(series.instance_uids):
            ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
            ds.SOPInstanceUID = sop_instance_uid
            ds.InstanceNumber = offset + 1
            ds.ImagePositionPatient = [-25.6, -25.6, 3.0 * offset]
            ds.SliceLocation = 3.0 * offset
            ds.PixelData = (gradient + noise[offset]).tobytes()
            path = series_folder / f"{offset + 1:03d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(str(path.relative_to(folder)))
            byte_count += path.stat().st_size
        entry.series.append(SeriesEntry(uid=series.uid, modality=series.modality,
                                        instance_count=len(files), byte_count=byte_count, files=files))
    return asdict(entry)


def study_count_for(instances: int) -> int:
    return max(1, math.ceil(instances / INSTANCES_PER_STUDY))


def ensure_dataset(cache_root: Path, instances: int, seed: int, workers: int | None = None,
                   log: Any = print) -> Manifest:
    """The cached data set for (instances rounded up to whole studies, seed), generated if absent."""
    studies = study_count_for(instances)
    folder = cache_root / f"dataset-v{DATASET_FORMAT_VERSION}-{studies}studies-seed{seed}"
    if (folder / "manifest.json").exists():
        return Manifest.load(folder)
    cache_root.mkdir(parents=True, exist_ok=True)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    log(f"generating {studies * INSTANCES_PER_STUDY} instances ({studies} studies) into {folder} ...")
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        study_documents = list(pool.map(_write_study, [partial] * studies, [seed] * studies,
                                        range(studies), chunksize=8))
    manifest = Manifest(folder=partial, seed=seed, studies=[
        StudyEntry(**{**document, "series": [SeriesEntry(**series) for series in document["series"]]})
        for document in study_documents])
    manifest.save()
    partial.rename(folder)  # the manifest exists only in a complete data set
    return Manifest.load(folder)
