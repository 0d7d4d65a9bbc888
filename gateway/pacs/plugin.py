"""The upstream-PACS plug-in: `gateway pacs ...` commands, `/api/pacs` routes and the pull job kind."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request

from gateway.node import Node
from gateway.pacs.service import PULL_JOB, PacsService, PullError, UnknownPacs, read_accession_numbers
from gateway.pacs.upstream import STUDY_KEYS, UpstreamError
from gateway.web.auth import require_admin
from gateway.web.problems import Problem, json_response

_FILTER_OPTIONS = {  # CLI option -> study-level key
    "patient_id": "PatientID", "patient_name": "PatientName", "study_date": "StudyDate",
    "modality": "ModalitiesInStudy", "accession_number": "AccessionNumber", "study_uid": "StudyInstanceUID",
    "study_description": "StudyDescription", "birth_date": "PatientBirthDate",
}


def open(node: Node) -> None:
    node.extensions["pacs"] = PacsService(node)


def _service() -> PacsService:
    return current_app.extensions["gateway.node"].extensions["pacs"]


def register_web(app: Flask, node: Node) -> None:
    blueprint = Blueprint("pacs", __name__)

    def call(function: Callable[..., Any], *args: Any) -> Any:
        try:
            return function(*args)
        except PullError as exc:
            raise Problem(404 if isinstance(exc, UnknownPacs) else 400, str(exc)) from exc
        except UpstreamError as exc:
            raise Problem(502, str(exc)) from exc

    @blueprint.get("")
    @require_admin
    def list_pacs() -> Response:
        return json_response([pacs.describe() for pacs in _service().pacs.values()])

    @blueprint.get("/<name>/echo")
    @require_admin
    def echo(name: str) -> Response:
        return json_response(call(_service().echo, name))

    @blueprint.get("/<name>/studies")
    @require_admin
    def find(name: str) -> Response:
        limit_text = request.args.get("limit")
        filters = {key: value for key, value in request.args.items() if key != "limit"}
        unknown = set(filters) - set(STUDY_KEYS)
        if unknown:
            raise Problem(400, f"unknown search keys {', '.join(sorted(unknown))} (known: {', '.join(STUDY_KEYS)})")
        try:
            limit = int(limit_text) if limit_text else None
        except ValueError:
            raise Problem(400, f"limit must be an integer, not {limit_text!r}") from None
        return json_response(call(_service().find_studies, name, filters, limit))

    @blueprint.post("/<name>/pull")
    @require_admin
    def pull(name: str) -> Response:
        from gateway.web.jobs import submit_job

        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise Problem(400, 'the body must be a JSON object such as {"studies": ["1.2.3"], "method": "c-get"}')
        call(_service().get, name)
        return submit_job(PULL_JOB, {**body, "pacs": name})

    app.register_blueprint(blueprint, url_prefix="/api/pacs")



def register_commands(commands: Any, common: Callable[[str], argparse.ArgumentParser]) -> None:
    pacs = commands.add_parser("pacs", help="upstream PACS: list, echo, find studies, pull studies into the gateway")
    actions = pacs.add_subparsers(dest="pacs_action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", parents=[common("./data")],
                                 help="the configured upstream PACS ([pacs.NAME] tables)")
    listing.set_defaults(run=_list)

    echo = actions.add_parser("echo", parents=[common("./data")],
                                 help="check that a PACS answers (C-ECHO and/or a QIDO-RS search)")
    echo.add_argument("--pacs", required=True)
    echo.set_defaults(run=_echo)

    find = actions.add_parser("find", parents=[common("./data")],
                                 help="list matching studies in a PACS (study-level C-FIND or QIDO-RS)")
    find.add_argument("--pacs", required=True, help="the PACS's name in the configuration")
    _filter_options(find)
    find.add_argument("--limit", type=int, default=None)
    find.add_argument("--json", action="store_true", help="print JSON instead of a table")
    find.set_defaults(run=_find)

    pull = actions.add_parser("pull", parents=[common("./data")],
                                 help="retrieve whole studies into the gateway (only what is missing)")
    pull.add_argument("--pacs", required=True, help="the PACS's name in the configuration")
    pull.add_argument("--study", action="append", default=[], metavar="UID", help="a Study Instance UID; repeatable")
    pull.add_argument("--accessions", type=Path, default=None, metavar="CSV",
                      help="a CSV of accession numbers (a cohort): every study they name")
    pull.add_argument("--column", default=None, help="the CSV column with the accession numbers")
    _filter_options(pull)
    pull.add_argument("--method", choices=["c-move", "c-get", "wado-rs"], default=None,
                      help="how to retrieve (default: the PACS's configured method)")
    pull.add_argument("--rate", type=float, default=None, metavar="N",
                      help="at most N instances per second (default: the PACS's max_instances_per_second)")
    pull.add_argument("--window", default=None, metavar="HH:MM-HH:MM",
                      help="retrieve only inside this daily local-time window (e.g. 20:00-06:00)")
    pull.add_argument("--dry-run", action="store_true", help="list what would be retrieved, retrieve nothing")
    pull.set_defaults(run=_pull)


def _filter_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patient-id", default=None)
    parser.add_argument("--patient-name", default=None, help="DICOM matching: wildcards * and ?")
    parser.add_argument("--birth-date", default=None)
    parser.add_argument("--study-date", default=None, help="YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
    parser.add_argument("--modality", default=None, help="a modality in the study (ModalitiesInStudy)")
    parser.add_argument("--accession-number", default=None)
    parser.add_argument("--study-uid", default=None)
    parser.add_argument("--study-description", default=None)


def _filters(args: argparse.Namespace) -> dict[str, str]:
    return {key: getattr(args, option) for option, key in _FILTER_OPTIONS.items() if getattr(args, option)}


def _guarded(function: Callable[[], int]) -> int:
    try:
        return function()
    except (PullError, UpstreamError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, PullError) else 1


def _list(node: Node, args: argparse.Namespace) -> int:
    service: PacsService = node.extensions["pacs"]
    if not service.pacs:
        print("no upstream PACS configured (add [pacs.NAME] tables to the configuration file)")
    for pacs in service.pacs.values():
        described = pacs.describe()
        print(f"{pacs.name}: DIMSE {described['dimse'] or '-'}, DICOMweb {described['dicomweb'] or '-'}, "
              f"method {pacs.method}, methods {', '.join(described['methods'])}")
    return 0


def _echo(node: Node, args: argparse.Namespace) -> int:
    def run() -> int:
        report = node.extensions["pacs"].echo(args.pacs)
        print(json.dumps(report, indent=2))
        return 0 if all(part.get("ok") for key, part in report.items() if key != "pacs") else 1

    return _guarded(run)


def _find(node: Node, args: argparse.Namespace) -> int:
    def run() -> int:
        studies = node.extensions["pacs"].find_studies(args.pacs, _filters(args), args.limit)
        if args.json:
            print(json.dumps(studies, indent=2))
            return 0
        print(f"{'date':<8}  {'patient id':<16} {'accession':<16} {'modalities':<10} {'series':>6} "
              f"{'inst.':>6}  description / Study Instance UID")
        for study in studies:
            print(f"{study['StudyDate'] or '':<8}  {study['PatientID'] or '':<16} {study['AccessionNumber'] or '':<16} "
                  f"{study['ModalitiesInStudy'] or '':<10} {study['NumberOfStudyRelatedSeries'] or '':>6} "
                  f"{study['NumberOfStudyRelatedInstances'] or '':>6}  {study['StudyDescription'] or ''}\n"
                  f"{'':>70}{study['StudyInstanceUID']}")
        print(f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'}")
        return 0

    return _guarded(run)


def _pull(node: Node, args: argparse.Namespace) -> int:
    from gateway.cli import run_job

    def run() -> int:
        params: dict[str, Any] = {"pacs": args.pacs, "studies": args.study, "query": _filters(args)}
        if args.accessions is not None:
            params["accession_numbers"] = read_accession_numbers(args.accessions, args.column)
        if args.method:
            params["method"] = args.method
        if args.rate is not None:
            params["max_instances_per_second"] = args.rate
        if args.window:
            params["window"] = args.window
        if args.dry_run:
            return _dry_run(node, params)
        return run_job(node, PULL_JOB, params, f"pulling from {args.pacs}")

    return _guarded(run)


def _dry_run(node: Node, params: dict[str, Any]) -> int:
    service: PacsService = node.extensions["pacs"]
    pacs = service.get(params["pacs"])
    studies, not_found = service.resolve_studies(pacs, params)
    with service.query_client(pacs) as client:
        for study_uid in studies:
            upstream = client.inventory(study_uid)
            missing = service.missing(upstream)
            print(f"{study_uid}: {len(upstream)} instances upstream, {len(missing)} to retrieve")
    for accession in not_found:
        print(f"accession number {accession}: no study in {pacs.name}")
    return 0
