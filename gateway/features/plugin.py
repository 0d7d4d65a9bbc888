"""The radiomics plug-in: `gateway features ...` commands, `/api/features` routes and the extraction job kind."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request

from gateway.features.cohort import CohortError
from gateway.features.params import ParamsError, load_params, preset_names
from gateway.features.service import FEATURES_JOB, FeatureService
from gateway.node import Node
from gateway.services.jobs import JobKind, register_job_kind
from gateway.web.auth import require_admin
from gateway.web.problems import Problem, json_response


def _service(node: Node) -> FeatureService:
    return node.extensions["features"]


def _check(node: Node, params: dict[str, Any]) -> dict[str, Any]:
    return _service(node).check_job_params(params)


def _run(node: Node, context: Any, params: dict[str, Any]) -> dict[str, Any]:
    return _service(node).run_job(context, params)


register_job_kind(JobKind(FEATURES_JOB, _run, _check,
                          "IBSI radiomics features of every segmented region of a cohort of series"))


def open(node: Node) -> None:
    node.extensions["features"] = FeatureService(node)


def register_web(app: Flask, node: Node) -> None:
    blueprint = Blueprint("features", __name__)

    @blueprint.post("/extract")
    @require_admin
    def extract() -> Response:
        from gateway.web.jobs import submit_job

        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise Problem(400, 'the body must be a JSON object such as {"cohort": "Modality=CT", '
                               '"params": "ct_default", "workers": 2, "sr": false}')
        return submit_job(FEATURES_JOB, body)

    @blueprint.get("")
    @require_admin
    def results() -> Response:
        try:
            limit = int(request.args.get("limit", "1000"))
        except ValueError:
            raise Problem(400, f"limit must be an integer, not {request.args['limit']!r}") from None
        if not 0 < limit <= 100000:
            raise Problem(400, "limit must be between 1 and 100000")
        service = _service(current_app.extensions["gateway.node"])
        return json_response(service.results(series_uid=request.args.get("series"), study_uid=request.args.get("study"),
                                     parameter_hash=request.args.get("parameter_hash"), limit=limit))

    @blueprint.get("/parameter-sets")
    @require_admin
    def parameter_sets() -> Response:
        return json_response(_service(current_app.extensions["gateway.node"]).parameter_sets())

    @blueprint.get("/presets")
    @require_admin
    def presets() -> Response:
        return json_response({name: load_params(name) for name in preset_names()})

    app.register_blueprint(blueprint, url_prefix="/api/features")



def register_commands(commands: Any, common: Callable[[str], argparse.ArgumentParser]) -> None:
    features = commands.add_parser("features", help="IBSI radiomics features of segmented regions: extract, list")
    actions = features.add_subparsers(dest="features_action", required=True, metavar="ACTION")

    extract = actions.add_parser("extract", parents=[common("./data")],
                                 help="compute features of every SEG/RTSTRUCT region of the series a query selects "
                                      "(a resumable job; only what is missing)")
    extract.add_argument("--cohort", default="", metavar="QUERY",
                         help="QIDO-RS-style series query, e.g. 'Modality=CT&StudyDate=20200101-20211231' "
                              "(default: every series)")
    extract.add_argument("--params", required=True, metavar="FILE|NAME",
                         help=f"settings file (TOML/YAML) or preset ({', '.join(preset_names())})")
    extract.add_argument("--workers", type=int, default=1, help="parallel processes across series (default 1)")
    extract.add_argument("--scheduler", default=None, metavar="ADDRESS",
                         help="run the tasks on a Dask distributed cluster (tcp://host:8786), or 'local' for a "
                              "local cluster of --workers processes")
    extract.add_argument("--backend", default=None, choices=["numpy", "numba", "cupy"],
                         help="compute backend (default: the best available)")
    extract.add_argument("--sr", action="store_true",
                         help="also store a DICOM SR TID 1500 measurement report per segmentation")
    extract.add_argument("--dry-run", action="store_true", help="list the regions to compute, compute nothing")
    extract.set_defaults(run=_extract)

    listing = actions.add_parser("list", parents=[common("./data")], help="stored feature results")
    listing.add_argument("--series", default=None, metavar="UID")
    listing.add_argument("--study", default=None, metavar="UID")
    listing.add_argument("--parameter-hash", default=None)
    listing.add_argument("--limit", type=int, default=1000)
    listing.add_argument("--json", action="store_true", help="print JSON with every feature value")
    listing.set_defaults(run=_list)

    presets = actions.add_parser("presets", parents=[common("./data")],
                                 help="the shipped settings presets and their parameter hashes")
    presets.add_argument("--json", action="store_true")
    presets.set_defaults(run=_presets)


def _extract(node: Node, args: argparse.Namespace) -> int:
    from gateway.cli import run_job

    params: dict[str, Any] = {"cohort": args.cohort, "params": args.params, "workers": args.workers,
                              "scheduler": args.scheduler, "sr": args.sr, "backend": args.backend}
    if args.dry_run:
        return _dry_run(node, params)
    return run_job(node, FEATURES_JOB, params, "extracting features", unit="region")


def _dry_run(node: Node, params: dict[str, Any]) -> int:
    from gateway.services.jobs import JobError

    service = _service(node)
    try:
        checked = service.check_job_params(params)
        plan = service.plan(checked["cohort"], checked["settings"])
    except (JobError, CohortError, ParamsError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    print(f"parameter hash {plan.parameter_hash} ({checked['settings'].get('name') or 'inline settings'})")
    for series in plan.cohort.series:
        for segmentation in series.segmentations:
            pending = plan.pending(series, segmentation)
            print(f"{series.series_uid} ({series.modality}): {segmentation.modality} {segmentation.series_uid}: "
                  f"{len(segmentation.regions)} region(s), {len(pending)} to compute")
            for region in pending:
                print(f"    {region.segment_number}: {region.label}")
    for skipped in plan.cohort.skipped:
        print(f"{skipped['series']} ({skipped['modality']}): skipped: {skipped['reason']}")
    pending_total = sum(len(plan.pending(s, g)) for s in plan.cohort.series for g in s.segmentations)
    print(f"{len(plan.cohort.series)} series, {plan.total} region(s), {pending_total} to compute, "
          f"{len(plan.cohort.skipped)} series skipped")
    return 0


def _list(node: Node, args: argparse.Namespace) -> int:
    results = _service(node).results(series_uid=args.series, study_uid=args.study,
                                     parameter_hash=args.parameter_hash, limit=args.limit)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for region in results:
        print(f"{region['series']}  {region['segmentation_modality']} {region['segment_number']:>3} "
              f"{region['label'][:30]:<30} {len(region['features']):>4} features  {region['parameter_hash'][:12]}  "
              f"{region['alg_system']}  {region['alg_datetime']}")
    print(f"{len(results)} region(s)")
    return 0


def _presets(node: Node, args: argparse.Namespace) -> int:
    from gateway.features.params import parameter_hash

    presets = {name: load_params(name) for name in preset_names()}
    if args.json:
        print(json.dumps({name: {"parameter_hash": parameter_hash(settings), "settings": settings}
                          for name, settings in presets.items()}, indent=2))
        return 0
    for name, settings in presets.items():
        print(f"{name:<16} {parameter_hash(settings)[:12]}  {settings['description']}")
    return 0
