"""What the benchmark asks each server, and what a correct server must answer.

Query strings are built here, already encoded, and sent verbatim (no wildcards: Orthanc 1.10 matches
nothing for a percent-encoded `*`, which `requests` would produce). Expected result counts come from the
data set description, so a server that answers fast but wrongly shows up as a failure, not as a win.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from _dataset import FIRST_STUDY_YEAR, LAST_STUDY_YEAR, Manifest, study_plan

PAGE_LIMIT = 100


@dataclass(frozen=True)
class StudyFacts:
    patient_id: str
    study_date: str
    modalities: tuple[str, ...]


@dataclass(frozen=True)
class QueryCase:
    query_string: str
    expected_results: int


@dataclass(frozen=True)
class QuerySpec:
    key: str
    label: str
    cases: list[QueryCase]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> QuerySpec:
        return cls(key=document["key"], label=document["label"],
                   cases=[QueryCase(**case) for case in document["cases"]])


def facts_from_manifest(manifest: Manifest) -> list[StudyFacts]:
    return [StudyFacts(study.patient_id, study.study_date, tuple(study.modalities))
            for study in manifest.studies]


def facts_from_plans(seed: int, study_count: int) -> list[StudyFacts]:
    """Facts of studies [0, study_count) as generated (also for bulk-filled studies that have no files)."""
    facts: list[StudyFacts] = []
    for index in range(study_count):
        plan = study_plan(seed, index)
        facts.append(StudyFacts(plan.patient.patient_id, plan.study_date, tuple(plan.modalities)))
    return facts


def _spread(values: list[Any], count: int) -> list[Any]:
    """`count` values evenly spread over `values` (all of them if there are fewer)."""
    if len(values) <= count:
        return list(values)
    return [values[index * len(values) // count] for index in range(count)]


def qido_study_queries(facts: list[StudyFacts], variety: int = 40, limit_every_query: bool = False,
                       patient_ids: list[str] | None = None) -> list[QuerySpec]:
    """The five study searches of the comparison, each with `variety` parameter values used in rotation.

    `limit_every_query` (the `--scale` curve) adds `limit=100` to the searches whose match count grows
    with the index, so that the curve shows the cost of searching, not the size of the response.
    `patient_ids` pins the patients searched for (the `--scale` curve keeps the same ones at every size).
    """
    studies_by_patient = Counter(fact.patient_id for fact in facts)
    studies_by_year = Counter(fact.study_date[:4] for fact in facts)
    studies_by_modality = Counter(modality for fact in facts for modality in fact.modalities)

    def capped(count: int) -> int:
        return min(count, PAGE_LIMIT) if limit_every_query else count

    limit_suffix = f"&limit={PAGE_LIMIT}" if limit_every_query else ""
    chosen_patients = patient_ids or _spread(sorted(studies_by_patient), variety)
    years = [str(year) for year in range(FIRST_STUDY_YEAR, LAST_STUDY_YEAR + 1)]
    modalities = ["CT", "MR", "PT"]
    return [
        QuerySpec("patient_id", "QIDO studies by PatientID", [
            QueryCase(f"PatientID={patient_id}", studies_by_patient[patient_id])
            for patient_id in chosen_patients]),
        QuerySpec("date_range", "QIDO studies by StudyDate range (1 year)", [
            QueryCase(f"StudyDate={year}0101-{year}1231{limit_suffix}", capped(studies_by_year[year]))
            for year in years]),
        QuerySpec("modality", "QIDO studies by ModalitiesInStudy", [
            QueryCase(f"ModalitiesInStudy={modality}{limit_suffix}", capped(studies_by_modality[modality]))
            for modality in modalities]),
        QuerySpec("includefield_all", "QIDO studies by date range, includefield=all", [
            QueryCase(f"StudyDate={year}0101-{year}1231&includefield=all{limit_suffix}",
                      capped(studies_by_year[year]))
            for year in years]),
        QuerySpec("limit_100", f"QIDO all studies, limit={PAGE_LIMIT}", [
            QueryCase(f"limit={PAGE_LIMIT}", min(PAGE_LIMIT, len(facts)))]),
    ]


def patients_for_scale_curve(facts: list[StudyFacts], variety: int = 40) -> list[str]:
    return _spread(sorted({fact.patient_id for fact in facts}), variety)
