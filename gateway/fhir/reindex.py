"""Rebuilding the search indexes from the stored resources (job kind ``fhir-reindex``, ``gateway fhir reindex``).

Needed when ``search_parameters.toml`` changes (a parameter added, a path corrected, a token+date pair
declared): what a search matches is extracted at write time, so resources stored before the change are not
found by it until they are reindexed. Each batch is replaced in one transaction under the FHIR write lock, so
searches never see a resource without its index rows, and writes go on between batches. Reindexing is
idempotent: a resumed job simply starts again.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from gateway.fhir import repository
from gateway.fhir.params import resource_types

if TYPE_CHECKING:
    from gateway.node import Node
    from gateway.services.jobs import JobContext

REINDEX_JOB = "fhir-reindex"
BATCH = 500


def register_job_kind() -> None:
    from gateway.services.jobs import JobKind, job_kinds, register_job_kind

    if REINDEX_JOB not in job_kinds():
        register_job_kind(JobKind(REINDEX_JOB, run_reindex, check_reindex_params,
                                  "rebuild the FHIR search indexes of stored resources (after a search-parameter "
                                  "change)"))


def check_reindex_params(node: Node, params: dict[str, Any]) -> dict[str, Any]:
    from gateway.services.jobs import JobError

    types = params.get("types") or []
    if isinstance(types, str):
        types = [part.strip() for part in types.split(",") if part.strip()]
    if not isinstance(types, list) or not all(isinstance(item, str) for item in types):
        raise JobError("types must be a list of FHIR resource types")
    unknown = sorted(set(types) - set(resource_types()))
    if unknown:
        raise JobError(f"unknown resource type(s) {', '.join(unknown)} (supported: {', '.join(resource_types())})")
    return {"types": sorted(set(types))}


def run_reindex(node: Node, context: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    service = node.extensions["fhir"]
    types = params["types"] or resource_types()
    with service.reading() as session:
        total = sum(repository.current_count(session, res_type) for res_type in types)
    context.progress(done=0, total=total, message="reindexing " + ", ".join(types), force=True)
    after, done = 0, 0
    while True:
        context.check_cancelled()
        with service.writing() as session:
            batch = repository.current_batch(session, types, after, BATCH)
            repository.reindex_many(session, [(pk, json.loads(content)) for pk, content in batch])
        if not batch:
            break
        after = batch[-1][0]
        done += len(batch)
        context.progress(done=done, total=max(total, done))
    context.progress(done=done, total=done, force=True)
    return {"types": types, "reindexed": done}
