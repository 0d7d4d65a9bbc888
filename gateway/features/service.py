"""Batch radiomics extraction: the ``features-extract`` job kind, result storage, FHIR Observations, DICOM SR.

A job's work is one task per (image series, segmentation region). A run plans the cohort, leaves out every
task that already has a stored result for the same parameter hash and algorithm version, and computes the
rest series by series (here, on a process pool or on a Dask cluster; see ``executor``). Each series' results
are committed together as they arrive, so a job stopped at any point (a crash, a restart, a cancel) loses at
most the series in progress, and running it again (``gateway jobs resume``) or submitting the same extraction
again does only what is missing. The same holds for the optional outputs, which are written from the stored
results after the computation: a FHIR Observation per region (conditional create on an identifier made of
series, segment, parameter hash and algorithm version) and a DICOM SR TID 1500 measurement report per
segmentation (deterministic UIDs; made once all of its regions have results).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway import __version__
from gateway.compute.backend import BackendUnavailable, resolve_backend
from gateway.features.codes import FeatureCodes, feature_codes
from gateway.features.cohort import Cohort, CohortError, CohortSeries, Region, Segmentation, parse_cohort, select_cohort
from gateway.features.compute import RegionSpec, SeriesOutcome, SeriesTask
from gateway.features.models import ImageFeature, ImageFeatureParameterSet, ImageFeatureRegion
from gateway.features.params import ParamsError, canonical_json, load_params, parameter_hash
from gateway.services.jobs import JobContext, JobError
from gateway.store.db import write_session

if TYPE_CHECKING:
    from gateway.node import Node

log = logging.getLogger(__name__)

FEATURES_JOB = "features-extract"
ALG_VERSION = __version__
MAX_WORKERS = 256
MAX_LISTED_FAILURES = 200
BODY_PART_TABLE = Path(__file__).resolve().parents[2] / "mappings" / "body_part_snomed.csv"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
FEATURE_SET_CODE = "radiomics-feature-set"


def alg_system(backend: str) -> str:
    """MI-CDM ``alg_system``: who computed the values, to which standard, on which kernels."""
    return f"eucaim-gateway {ALG_VERSION} IBSI-1 {backend}"


TaskKey = tuple[str, str, int]  # (image series UID, segmentation series UID, segment number)


@dataclass
class Plan:
    cohort: Cohort
    settings: dict[str, Any]
    parameter_hash: str
    done: set[TaskKey]

    @property
    def total(self) -> int:
        return self.cohort.region_count

    def pending(self, series: CohortSeries, segmentation: Segmentation) -> list[Region]:
        return [region for region in segmentation.regions
                if (series.series_uid, segmentation.series_uid, region.segment_number) not in self.done]


@dataclass
class _RunState:
    computed: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    failed_count: int = 0
    backends: set[str] = field(default_factory=set)


def _load_body_parts() -> dict[str, tuple[str, str]]:
    with open(BODY_PART_TABLE, encoding="utf-8", newline="") as handle:
        return {row["body_part_examined"].strip().upper(): (row["snomed_code"].strip(), row["display"].strip())
                for row in csv.DictReader(handle)}


def _site_source_value(region: Region, series: CohortSeries, body_parts: dict[str, tuple[str, str]]) -> str:
    """``DESIGNATOR|code|meaning`` of the region's anatomic site: the segment's own, else BodyPartExamined."""
    if region.anatomic_site is not None:
        code, designator, meaning = region.anatomic_site
        return f"{designator}|{code}|{meaning}"[:255]
    mapped = body_parts.get(series.body_part_examined.strip().upper())
    if mapped:
        return f"SCT|{mapped[0]}|{mapped[1]}"
    return ""


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class FeatureService:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.codes: FeatureCodes = feature_codes()
        self.body_parts = _load_body_parts()

    # -- parameters ----------------------------------------------------------------------------------------

    def check_job_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Validate a submission (cohort, settings, workers, scheduler, sr, backend); JobError says what is wrong.

        The validated settings themselves are stored with the job, so a resumed job computes with the same
        settings even if the file changed since.
        """
        unknown = sorted(set(params) - {"cohort", "params", "settings", "workers", "scheduler", "sr", "backend",
                                        "parameter_hash"})
        if unknown:
            raise JobError(f"unknown parameter(s) {', '.join(unknown)} (known: cohort, params, workers, scheduler, "
                           f"sr, backend)")
        cohort = params.get("cohort", "")
        if not isinstance(cohort, str):
            raise JobError("cohort must be a query string such as 'Modality=CT&StudyDate=20200101-20211231'")
        try:
            parse_cohort(cohort)
        except CohortError as exc:
            raise JobError(str(exc)) from exc
        source = params.get("settings") if params.get("settings") is not None else params.get("params")
        if source is None:
            raise JobError("params is required: a preset name, a settings file or an inline settings object")
        if not isinstance(source, str | dict):
            raise JobError("params must be a preset name, a settings file path or a settings object")
        try:
            settings = load_params(source)
        except ParamsError as exc:
            raise JobError(f"params: {exc}") from exc
        workers = params.get("workers", 1)
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
            raise JobError(f"workers must be a whole number from 1 to {MAX_WORKERS}")
        scheduler = params.get("scheduler") or None
        if scheduler is not None and not isinstance(scheduler, str):
            raise JobError("scheduler must be a Dask scheduler address (tcp://host:8786) or 'local'")
        if scheduler is not None:
            try:
                import distributed  # noqa: F401
            except ImportError:
                raise JobError("scheduler: Dask distributed is not installed (pip install "
                               "'eucaim-gateway[cluster]')") from None
        sr = params.get("sr", False)
        if not isinstance(sr, bool):
            raise JobError("sr must be true or false")
        backend = params.get("backend") or None
        if backend is not None:
            try:
                resolve_backend(backend)
            except (ValueError, BackendUnavailable) as exc:
                raise JobError(f"backend: {exc}") from exc
        return {"cohort": cohort, "settings": settings, "parameter_hash": parameter_hash(settings),
                "workers": workers, "scheduler": scheduler, "sr": sr, "backend": backend}

    # -- planning ------------------------------------------------------------------------------------------

    def plan(self, cohort_text: str, settings: dict[str, Any]) -> Plan:
        cohort = select_cohort(self.node, cohort_text)
        digest = parameter_hash(settings)
        return Plan(cohort, settings, digest, self._done(cohort, digest))

    def _done(self, cohort: Cohort, digest: str) -> set[TaskKey]:
        table = ImageFeatureRegion.__table__  # type: ignore[attr-defined]
        uids = [series.series_uid for series in cohort.series]
        done: set[TaskKey] = set()
        with self.node.engine.connect() as connection:
            for start in range(0, len(uids), 500):
                rows = connection.execute(
                    select(table.c.series_instance_uid, table.c.segmentation_series_uid, table.c.segment_number)
                    .where(table.c.series_instance_uid.in_(uids[start:start + 500]),
                           table.c.parameter_hash == digest, table.c.alg_version == ALG_VERSION))
                done.update((row[0], row[1], int(row[2])) for row in rows)
        return done

    def _tasks(self, plan: Plan, backend: str | None) -> Iterator[tuple[SeriesTask, CohortSeries, Segmentation]]:
        for series in plan.cohort.series:
            image_paths: tuple[str, ...] | None = None
            for segmentation in series.segmentations:
                pending = plan.pending(series, segmentation)
                if not pending:
                    continue
                if image_paths is None:
                    image_paths = tuple(str(self.node.retrieve.path(instance)) for instance in
                                        self.node.retrieve.instances(series.study_uid, series.series_uid))
                yield (SeriesTask(study_uid=series.study_uid, series_uid=series.series_uid, image_paths=image_paths,
                                  segmentation_modality=segmentation.modality,
                                  segmentation_series_uid=segmentation.series_uid,
                                  segmentation_paths=tuple(segmentation.paths),
                                  regions=tuple(RegionSpec(r.segment_number, r.label) for r in pending),
                                  settings=plan.settings, backend=backend), series, segmentation)

    # -- the job -------------------------------------------------------------------------------------------

    def run_job(self, context: JobContext, params: dict[str, Any]) -> dict[str, Any]:
        from gateway.features.executor import run_tasks

        settings = params["settings"]
        digest = parameter_hash(settings)
        if digest != params.get("parameter_hash", digest):
            raise JobError("the job's settings do not match its parameter hash")
        self._ensure_parameter_set(settings, digest)
        context.progress(message="selecting the cohort", force=True)
        plan = self.plan(params["cohort"], settings)
        already = len(plan.done & {(s.series_uid, g.series_uid, r.segment_number) for s in plan.cohort.series
                                   for g in s.segmentations for r in g.regions})
        context.progress(done=already, total=plan.total, message=f"{plan.total - already} region(s) to compute",
                         force=True)
        state = _RunState()
        places: dict[tuple[str, str], tuple[CohortSeries, Segmentation]] = {}

        def tasks() -> Iterator[SeriesTask]:
            for task, series, segmentation in self._tasks(plan, params.get("backend")):
                places[(task.series_uid, task.segmentation_series_uid)] = (series, segmentation)
                yield task

        def on_result(task: SeriesTask, outcome: SeriesOutcome) -> None:
            series, segmentation = places.pop((task.series_uid, task.segmentation_series_uid))
            stored = self._store(context.job_id, plan, series, segmentation, task, outcome, state)
            context.progress(advance=len(task.regions),
                             message=f"series {task.series_uid}: {stored}/{len(task.regions)} region(s) stored")

        run_tasks(tasks(), on_result, context.check_cancelled, workers=params.get("workers", 1),
                  scheduler=params.get("scheduler"))
        result: dict[str, Any] = {
            "parameter_hash": digest, "parameter_set": settings.get("name", ""),
            "alg_system": sorted(alg_system(backend) for backend in state.backends),
            "series": len(plan.cohort.series), "regions": plan.total, "already_done": already,
            "computed": state.computed, "failed_count": state.failed_count, "failed": state.failed,
            "skipped": plan.cohort.skipped,
        }
        context.progress(message="writing FHIR Observations", force=True)
        result["fhir"] = self.write_observations(plan)
        if params.get("sr"):
            context.progress(message="writing DICOM SR measurement reports", force=True)
            result["sr"] = self.write_reports(plan)
        context.progress(message=f"{state.computed} region(s) computed, {already} already done, "
                                 f"{state.failed_count} failed", force=True)
        return result

    def _ensure_parameter_set(self, settings: dict[str, Any], digest: str) -> None:
        table = ImageFeatureParameterSet.__table__  # type: ignore[attr-defined]
        with self.node.engine.connect() as connection:
            if connection.execute(select(table.c.parameter_hash).where(table.c.parameter_hash == digest)).first():
                return
        try:
            with self.node.engine.begin() as connection:
                connection.execute(insert(table).values(parameter_hash=digest, name=str(settings.get("name", ""))[:128],
                                                        settings_json=canonical_json(settings),
                                                        created_at=datetime.now(UTC)))
        except IntegrityError:  # another job stored the same settings first
            pass

    # -- storing -------------------------------------------------------------------------------------------

    def _store(self, job_id: str, plan: Plan, series: CohortSeries, segmentation: Segmentation, task: SeriesTask,
               outcome: SeriesOutcome, state: _RunState) -> int:
        labels = {spec.segment_number: spec.label for spec in task.regions}
        regions = {region.segment_number: region for region in segmentation.regions}
        if outcome.error is not None:
            for number in labels:
                self._failure(state, series, segmentation, number, labels[number], outcome.error)
            return 0
        state.backends.add(outcome.backend)
        intensity_unit = self.codes.intensity_unit(series.modality, series.units)
        stored = 0
        for result in outcome.regions:
            label = labels.get(result.segment_number, "")
            if result.error is not None:
                self._failure(state, series, segmentation, result.segment_number, label, result.error)
                continue
            region = regions[result.segment_number]
            if self._store_region(job_id, plan.parameter_hash, series, segmentation, region, result.features,
                                  result.voxel_count, outcome.backend, intensity_unit):
                stored += 1
                state.computed += 1
        return stored

    def _failure(self, state: _RunState, series: CohortSeries, segmentation: Segmentation, number: int, label: str,
                 error: str) -> None:
        state.failed_count += 1
        log.warning("features of series %s, %s segment %d (%s) not computed: %s", series.series_uid,
                    segmentation.modality, number, label, error)
        if len(state.failed) < MAX_LISTED_FAILURES:
            state.failed.append({"series": series.series_uid, "segmentation": segmentation.series_uid,
                                 "segment": number, "label": label, "error": error[:1000]})

    def _store_region(self, job_id: str, digest: str, series: CohortSeries, segmentation: Segmentation,
                      region: Region, features: list[tuple[str, str, str, str, str | None, float]], voxels: int,
                      backend: str, intensity_unit: str) -> bool:
        """One region's row and its feature rows in one transaction; False if another run stored it first."""
        now = datetime.now(UTC)
        system = alg_system(backend)
        site = _site_source_value(region, series, self.body_parts)
        region_table = ImageFeatureRegion.__table__  # type: ignore[attr-defined]
        feature_table = ImageFeature.__table__  # type: ignore[attr-defined]
        common = {"person_id": series.patient_pk, "image_occurrence_id": series.series_pk,
                  "study_instance_uid": series.study_uid, "series_instance_uid": series.series_uid,
                  "segmentation_series_uid": segmentation.series_uid, "segment_number": region.segment_number,
                  "parameter_hash": digest, "alg_system": system, "alg_datetime": now,
                  "anatomic_site_source_value": site}
        try:
            with write_session(self.node.engine) as session:
                region_id = session.execute(insert(region_table).values(
                    **common, segmentation_sop_instance_uid=segmentation.sop_instance_uids[0],
                    segmentation_modality=segmentation.modality, segment_label=region.label,
                    tracking_uid=region.tracking_uid, alg_version=ALG_VERSION, voxel_count=voxels,
                    feature_count=len(features), job_id=job_id)).inserted_primary_key[0]
                rows = []
                for family, name, code, key, aggregation, value in features:
                    rows.append({**common, "image_feature_region_id": region_id,
                                 "image_feature_event_field_concept_id": 0, "image_feature_event_id": None,
                                 "image_feature_concept_id": 0, "image_feature_type_concept_id": 0,
                                 "anatomic_site_concept_id": 0, "value_as_number": _finite(value),
                                 "unit_concept_id": 0, "unit_source_value": self.codes.unit(key, intensity_unit),
                                 "image_feature_source_value": code, "image_feature_source_name": name,
                                 "image_feature_source_key": key if aggregation is None else f"{key} [{aggregation}]",
                                 "feature_family": family, "aggregation": aggregation or "",
                                 "aggregation_source_value": self.codes.aggregation_code(aggregation)})
                if rows:
                    session.execute(insert(feature_table), rows)
        except IntegrityError:
            log.info("features of series %s segment %d were stored by another run", series.series_uid,
                     region.segment_number)
            return False
        return True

    # -- reading -------------------------------------------------------------------------------------------

    def results(self, *, series_uid: str | None = None, study_uid: str | None = None,
                parameter_hash: str | None = None, segmentation_uid: str | None = None,
                alg_version: str | None = None, without_observation: bool = False,
                limit: int = 1000) -> list[dict[str, Any]]:
        """Stored regions with their features, newest first."""
        region_table = ImageFeatureRegion.__table__  # type: ignore[attr-defined]
        feature_table = ImageFeature.__table__  # type: ignore[attr-defined]
        query = select(region_table).order_by(region_table.c.id.desc()).limit(limit)
        if segmentation_uid:
            query = query.where(region_table.c.segmentation_series_uid == segmentation_uid)
        if alg_version:
            query = query.where(region_table.c.alg_version == alg_version)
        if without_observation:
            query = query.where(region_table.c.observation_id.is_(None))
        if series_uid:
            query = query.where(region_table.c.series_instance_uid == series_uid)
        if study_uid:
            query = query.where(region_table.c.study_instance_uid == study_uid)
        if parameter_hash:
            query = query.where(region_table.c.parameter_hash == parameter_hash)
        with self.node.engine.connect() as connection:
            regions = connection.execute(query).mappings().all()
            features: dict[int, list[dict[str, Any]]] = {}
            ids = [row["id"] for row in regions]
            for start in range(0, len(ids), 500):
                for row in connection.execute(select(feature_table).where(
                        feature_table.c.image_feature_region_id.in_(ids[start:start + 500]))
                        .order_by(feature_table.c.image_feature_id)).mappings():
                    features.setdefault(row["image_feature_region_id"], []).append({
                        "key": row["image_feature_source_key"], "ibsi_code": row["image_feature_source_value"],
                        "name": row["image_feature_source_name"], "family": row["feature_family"],
                        "aggregation": row["aggregation"] or None, "value": row["value_as_number"],
                        "unit": row["unit_source_value"]})
        return [{"study": row["study_instance_uid"], "series": row["series_instance_uid"],
                 "segmentation": row["segmentation_series_uid"], "segmentation_modality": row["segmentation_modality"],
                 "segment_number": row["segment_number"], "label": row["segment_label"],
                 "person_id": row["person_id"], "image_occurrence_id": row["image_occurrence_id"],
                 "parameter_hash": row["parameter_hash"], "alg_system": row["alg_system"],
                 "alg_version": row["alg_version"],
                 "alg_datetime": _iso(row["alg_datetime"]), "voxel_count": row["voxel_count"],
                 "anatomic_site": row["anatomic_site_source_value"] or None, "job": row["job_id"] or None,
                 "observation": f"Observation/{row['observation_id']}" if row["observation_id"] else None,
                 "features": features.get(row["id"], [])} for row in regions]

    def parameter_sets(self) -> list[dict[str, Any]]:
        table = ImageFeatureParameterSet.__table__  # type: ignore[attr-defined]
        with self.node.engine.connect() as connection:
            rows = connection.execute(select(table).order_by(table.c.created_at)).mappings().all()
        return [{"parameter_hash": row["parameter_hash"], "name": row["name"],
                 "settings": json.loads(row["settings_json"]), "created": _iso(row["created_at"])} for row in rows]

    def _stored_regions(self, plan: Plan, series: CohortSeries, segmentation: Segmentation | None = None,
                        without_observation: bool = False) -> list[dict[str, Any]]:
        """Stored results of the plan's regions of one series (this run's and earlier ones)."""
        keys = {(g.series_uid, r.segment_number) for g in series.segmentations for r in g.regions}
        return [region for region in self.results(
            series_uid=series.series_uid, segmentation_uid=segmentation.series_uid if segmentation else None,
            parameter_hash=plan.parameter_hash, alg_version=ALG_VERSION, without_observation=without_observation,
            limit=len(keys) + 1) if (region["segmentation"], region["segment_number"]) in keys]

    # -- FHIR ----------------------------------------------------------------------------------------------

    def observation_identifier(self, series_uid: str, segmentation_uid: str, segment: int, digest: str) -> str:
        return f"{series_uid}/{segmentation_uid}/{segment}/{digest}/{ALG_VERSION}"

    def write_observations(self, plan: Plan) -> dict[str, Any]:
        """An Observation per stored region of the plan that has none yet; skipped without the FHIR plug-in."""
        fhir = self.node.extensions.get("fhir")
        if fhir is None:
            log.info("no FHIR service on this node: feature Observations not written")
            return {"written": 0, "note": "no FHIR service on this node"}
        by_study: dict[str, list[dict[str, Any]]] = {}
        for series in plan.cohort.series:
            for region in self._stored_regions(plan, series, without_observation=True):
                by_study.setdefault(region["study"], []).append(region)
        written, errors = 0, []
        for study_uid, regions in by_study.items():
            try:
                written += self._observations_for_study(fhir, study_uid, regions, plan)
            except Exception as exc:  # FhirError, or a study FHIR does not know: the features stay stored
                log.warning("Observations of study %s not written: %s", study_uid, exc)
                errors.append({"study": study_uid, "error": str(exc)[:1000]})
        return {"written": written, "errors": errors}

    def _observations_for_study(self, fhir: Any, study_uid: str, regions: list[dict[str, Any]], plan: Plan) -> int:
        found = fhir.search("ImagingStudy", [("identifier", f"urn:dicom:uid|urn:oid:{study_uid}")])
        studies = [entry["resource"] for entry in found.get("entry", [])
                   if entry.get("resource", {}).get("resourceType") == "ImagingStudy"]
        if not studies:
            raise LookupError(f"FHIR has no ImagingStudy for study {study_uid}")
        imaging_study = studies[0]
        system = self.codes.systems["observation_identifier"]
        entries = []
        for region in regions:
            value = self.observation_identifier(region["series"], region["segmentation"], region["segment_number"],
                                                plan.parameter_hash)
            resource = self._observation(region, imaging_study, system, value, plan)
            entries.append({"resource": resource, "request": {"method": "POST", "url": "Observation",
                                                              "ifNoneExist": f"identifier={system}|{value}"}})
        response = fhir.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries})
        table = ImageFeatureRegion.__table__  # type: ignore[attr-defined]
        with write_session(self.node.engine) as session:
            for region, entry in zip(regions, response.get("entry", []), strict=True):
                observation_id = (entry.get("resource") or {}).get("id")
                session.execute(update(table).where(and_(
                    table.c.series_instance_uid == region["series"],
                    table.c.segmentation_series_uid == region["segmentation"],
                    table.c.segment_number == region["segment_number"],
                    table.c.parameter_hash == plan.parameter_hash, table.c.alg_version == ALG_VERSION))
                    .values(observation_id=observation_id))
        return len(regions)

    def _observation(self, region: dict[str, Any], imaging_study: dict[str, Any], system: str, value: str,
                     plan: Plan) -> dict[str, Any]:
        ibsi = self.codes.ibsi_system
        feature_system = self.codes.systems["gateway_feature"]
        components = []
        for feature in region["features"]:
            title = feature["name"] if not feature["aggregation"] else f"{feature['name']} ({feature['aggregation']})"
            component: dict[str, Any] = {"code": {"coding": [
                {"system": ibsi, "code": feature["ibsi_code"], "display": feature["name"]},
                {"system": feature_system, "code": feature["key"]}], "text": title}}
            if feature["value"] is None:
                component["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT, "code": "not-a-number"}],
                                                 "text": "undefined for this region (IBSI)"}
            else:
                component["valueQuantity"] = {"value": feature["value"], "unit": feature["unit"], "system": UCUM,
                                              "code": feature["unit"]}
            components.append(component)
        observation: dict[str, Any] = {
            "resourceType": "Observation",
            "identifier": [{"system": system, "value": value}],
            "status": "final",
            "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "imaging", "display": "Imaging"}]}],
            "code": {"coding": [{"system": self.codes.systems["gateway_feature"], "code": FEATURE_SET_CODE,
                                 "display": "Radiomics feature set (IBSI 1)"}], "text": "Radiomics feature set"},
            "subject": imaging_study["subject"],
            "issued": region["alg_datetime"],
            "method": {"text": f"{region['alg_system']}; parameter set {plan.settings.get('name') or '-'} "
                               f"(sha256 {plan.parameter_hash})"},
            "derivedFrom": [{"reference": f"ImagingStudy/{imaging_study['id']}"}],
            "note": [{"text": f"Region '{region['label']}': {region['segmentation_modality']} segment "
                              f"{region['segment_number']} of series {region['segmentation']} on image series "
                              f"{region['series']} ({region['voxel_count']} voxels)"}],
            "component": components,
        }
        if imaging_study.get("started"):
            observation["effectiveDateTime"] = imaging_study["started"]
        site = region["anatomic_site"]
        if site:
            designator, code, meaning = [*site.split("|"), "", ""][:3]
            coding = {"code": code, "display": meaning}
            if designator in ("SCT", "SRT"):
                coding["system"] = SNOMED
            observation["bodySite"] = {"coding": [coding], "text": meaning}
        return observation

    # -- DICOM SR ------------------------------------------------------------------------------------------

    def write_reports(self, plan: Plan) -> dict[str, Any]:
        """A TID 1500 measurement report per (image series, segmentation) whose regions all have results."""
        from gateway.features import report

        made, present, incomplete, errors = [], 0, [], []
        for series in plan.cohort.series:
            for segmentation in series.segmentations:
                if report.is_stored(self.node, series, segmentation, plan.parameter_hash):
                    present += 1
                    continue
                regions = self._stored_regions(plan, series, segmentation)
                if len(regions) < len(segmentation.regions):
                    incomplete.append({"series": series.series_uid, "segmentation": segmentation.series_uid,
                                       "missing": len(segmentation.regions) - len(regions)})
                    continue
                try:
                    made.append(report.store_report(self.node, series, segmentation, regions, plan))
                except Exception as exc:  # a report that cannot be built must not lose the stored features
                    log.exception("SR for series %s not written", series.series_uid)
                    errors.append({"series": series.series_uid, "segmentation": segmentation.series_uid,
                                   "error": f"{type(exc).__name__}: {exc}"[:1000]})
        return {"written": made, "already_present": present, "incomplete": incomplete, "errors": errors}


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite hands back naive datetimes; they were written in UTC
        value = value.replace(tzinfo=UTC)
    return value.isoformat().replace("+00:00", "Z")

