"""Writing index rows for a group of instances in one transaction.

Existing instances, studies and series of the whole group are looked up once; study and series counters are
accumulated in memory and written once per group. With ``isolate`` every instance gets a savepoint of its
own, so one bad instance leaves the others of its group stored; without it the instance rows of the group are
inserted together at the end, which is several times faster and is what the ingest service tries first.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.dicom.index_fields import (
    IndexFields,
    series_attributes,
    series_qido_members,
    study_attributes,
    study_qido_members,
)
from gateway.dicom.json_model import dumps
from gateway.dicom.status import CANNOT_UNDERSTAND, InstanceRejected
from gateway.store.models import Instance, Patient, Series, Study, StudyModality, utcnow

_INSERT_STUDY = insert(Study)
_INSERT_SERIES = insert(Series)
_INSERT_INSTANCE = insert(Instance)
_INSERT_PATIENT = insert(Patient)


@dataclass
class IndexRecord:
    fields: IndexFields
    metadata: dict[str, Any]
    metadata_json: str
    transfer_syntax_uid: str
    file_path: str
    file_size: int
    sha256: str


@dataclass
class _StudyState:
    pk: int
    modalities: set[str]
    new_series: int = 0
    new_instances: int = 0
    new_modalities: set[str] = field(default_factory=set)


@dataclass
class _SeriesState:
    pk: int
    study_pk: int
    new_instances: int = 0


def _chunks(values: list[str], size: int = 500) -> Iterable[list[str]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


class GroupIndexWriter:
    def __init__(self, session: Session, fields: Iterable[IndexFields], isolate: bool = True) -> None:
        # Core statements on the session's connection: far cheaper per row than ORM units of work.
        self.session = session.connection()
        self.isolate = isolate
        fields = list(fields)
        self.sha_by_sop: dict[str, str] = {}
        self.studies: dict[str, _StudyState] = {}
        self.series: dict[str, _SeriesState] = {}
        self.patients: dict[tuple[str, str], int] = {}
        self.new_studies_by_patient: dict[int, int] = defaultdict(int)
        self.pending_instances: list[dict[str, Any]] = []
        for chunk in _chunks(sorted({f.sop_instance_uid for f in fields})):
            self.sha_by_sop.update(session.execute(select(Instance.sop_instance_uid, Instance.sha256)
                                                   .where(Instance.sop_instance_uid.in_(chunk))).tuples().all())
        for chunk in _chunks(sorted({f.study_instance_uid for f in fields})):
            for pk, uid, modalities in session.execute(select(Study.pk, Study.study_instance_uid, Study.modalities)
                                                       .where(Study.study_instance_uid.in_(chunk))):
                self.studies[uid] = _StudyState(pk, set(filter(None, modalities.split("\\"))))
        for chunk in _chunks(sorted({f.series_instance_uid for f in fields})):
            for pk, uid, study_pk in session.execute(select(Series.pk, Series.series_instance_uid, Series.study_pk)
                                                     .where(Series.series_instance_uid.in_(chunk))):
                self.series[uid] = _SeriesState(pk, study_pk)

    def stored_sha256(self, sop_instance_uid: str) -> str | None:
        return self.sha_by_sop.get(sop_instance_uid)

    def add(self, record: IndexRecord) -> None:
        """Index one instance; raises InstanceRejected or IntegrityError with nothing of it written."""
        if self.isolate:
            with self.session.begin_nested():
                created = self._write(record)
        else:
            created = self._write(record)
        self._remember(record, *created)

    def _write(self, record: IndexRecord) -> tuple[_StudyState | None, _SeriesState | None, int | None]:
        fields = record.fields
        study = self.studies.get(fields.study_instance_uid)
        series = self.series.get(fields.series_instance_uid)
        if series is not None and (study is None or series.study_pk != study.pk):
            raise InstanceRejected(CANNOT_UNDERSTAND, f"SeriesInstanceUID {fields.series_instance_uid} already "
                                                      "belongs to another study", conflict=True)
        new_study = new_series = None
        new_study_patient = None
        if study is None:
            new_study_patient = self._patient_pk(fields)
            pk = self.session.execute(_INSERT_STUDY, dict(
                study_instance_uid=fields.study_instance_uid, patient_pk=new_study_patient,
                patient_id=fields.patient_id, issuer=fields.issuer, patient_name=fields.patient_name,
                patient_name_match=fields.patient_name_match, patient_name_fuzzy=fields.patient_name_fuzzy,
                patient_birth_date=fields.patient_birth_date, patient_sex=fields.patient_sex,
                study_date=fields.study_date, study_time=fields.study_time,
                accession_number=fields.accession_number, study_id=fields.study_id,
                study_description=fields.study_description,
                referring_physician_match=fields.referring_physician_name.upper(), modalities="",
                num_series=0, num_instances=0, attributes_json=dumps(study_json := study_attributes(record.metadata)),
                qido_json=study_qido_members(study_json),
                created_at=utcnow(), updated_at=utcnow())).inserted_primary_key[0]
            study = new_study = _StudyState(pk, set())
        if series is None:
            pk = self.session.execute(_INSERT_SERIES, dict(
                series_instance_uid=fields.series_instance_uid, study_pk=study.pk, modality=fields.modality,
                series_number=fields.series_number, series_description=fields.series_description,
                body_part_examined=fields.body_part_examined, series_date=fields.series_date,
                pps_start_date=fields.pps_start_date, pps_start_time=fields.pps_start_time, num_instances=0,
                attributes_json=dumps(series_json := series_attributes(record.metadata)),
                qido_json=series_qido_members(series_json),
                created_at=utcnow())).inserted_primary_key[0]
            series = new_series = _SeriesState(pk, study.pk)
        row = dict(sop_instance_uid=fields.sop_instance_uid, series_pk=series.pk, study_pk=study.pk,
                   sop_class_uid=fields.sop_class_uid, instance_number=fields.instance_number, rows=fields.rows,
                   columns=fields.columns, bits_allocated=fields.bits_allocated,
                   number_of_frames=fields.number_of_frames, transfer_syntax_uid=record.transfer_syntax_uid[:64],
                   file_path=record.file_path, file_size=record.file_size, sha256=record.sha256,
                   metadata_json=record.metadata_json, created_at=utcnow())
        if self.isolate:
            self.session.execute(_INSERT_INSTANCE, row)
        else:
            self.pending_instances.append(row)
        return new_study, new_series, new_study_patient

    def _remember(self, record: IndexRecord, new_study: _StudyState | None, new_series: _SeriesState | None,
                  patient_pk: int | None) -> None:
        """Caches and counters change only once an instance's rows are safely written."""
        fields = record.fields
        if new_study is not None:
            self.studies[fields.study_instance_uid] = new_study
            assert patient_pk is not None
            self.new_studies_by_patient[patient_pk] += 1
        study = self.studies[fields.study_instance_uid]
        if new_series is not None:
            self.series[fields.series_instance_uid] = new_series
            study.new_series += 1
            if fields.modality and fields.modality not in study.modalities:
                study.modalities.add(fields.modality)
                study.new_modalities.add(fields.modality)
        self.series[fields.series_instance_uid].new_instances += 1
        study.new_instances += 1
        self.sha_by_sop[fields.sop_instance_uid] = record.sha256

    def _patient_pk(self, fields: IndexFields) -> int:
        key = (fields.patient_id, fields.issuer)
        if key in self.patients:
            return self.patients[key]
        pk = self.session.execute(select(Patient.pk).where(Patient.patient_id == key[0],
                                                           Patient.issuer == key[1])).scalar()
        if pk is None:
            values = dict(patient_id=key[0], issuer=key[1], patient_name=fields.patient_name,
                          patient_name_match=fields.patient_name_match,
                          patient_birth_date=fields.patient_birth_date, patient_sex=fields.patient_sex,
                          num_studies=0, created_at=utcnow())
            try:
                # Another writer may create the same patient concurrently; then its row is the one to use.
                with self.session.begin_nested():
                    pk = self.session.execute(_INSERT_PATIENT, values).inserted_primary_key[0]
            except IntegrityError:
                pk = self.session.execute(select(Patient.pk).where(Patient.patient_id == key[0],
                                                                   Patient.issuer == key[1])).scalar_one()
        self.patients[key] = pk
        return pk

    def finish(self) -> None:
        """Write the accumulated counters (and, without isolation, the instance rows)."""
        if self.pending_instances:
            self.session.execute(_INSERT_INSTANCE, self.pending_instances)
            self.pending_instances = []
        now = utcnow()
        for state in self.series.values():
            if state.new_instances:
                self.session.execute(update(Series).where(Series.pk == state.pk).values(
                    num_instances=Series.num_instances + state.new_instances))
                state.new_instances = 0
        modality_rows = []
        for state in self.studies.values():
            if state.new_instances:
                self.session.execute(update(Study).where(Study.pk == state.pk).values(
                    num_instances=Study.num_instances + state.new_instances,
                    num_series=Study.num_series + state.new_series,
                    modalities="\\".join(sorted(state.modalities)), updated_at=now))
                modality_rows += [{"study_pk": state.pk, "modality": m} for m in sorted(state.new_modalities)]
                state.new_instances = state.new_series = 0
                state.new_modalities = set()
        if modality_rows:
            self.session.execute(insert(StudyModality), modality_rows)
        for patient_pk, count in self.new_studies_by_patient.items():
            self.session.execute(update(Patient).where(Patient.pk == patient_pk).values(
                num_studies=Patient.num_studies + count))
        self.new_studies_by_patient.clear()
