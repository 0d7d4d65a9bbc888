"""The EHR plug-in: ``EhrService`` at ``node.extensions["ehr"]``, the MLLP listener, ``gateway ehr import`` and
``gateway mappings coverage|check``, the CSV import job kind, and the demo data set's EHR part.

Configuration: ``[ehr]`` (``mrn_system``, ``identifier_base``, ``timezone``, ``default_charset``,
``mappings_dir``, ``batch_size``; the MRN system falls back to ``[fhir] mrn_system``) and ``[mllp]`` (see
``gateway.ehr.mllp``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config import ConfigError, Settings
from gateway.listener_process import ListenerProcess

if TYPE_CHECKING:
    from gateway.ehr.service import EhrService
    from gateway.node import Node

CSV_IMPORT_JOB = "ehr-csv-import"


def _mappings_dir(settings: Settings) -> Path:
    from gateway.ehr.service import default_mappings_dir

    configured = settings.section("ehr").get("mappings_dir")
    return Path(configured).expanduser().resolve() if configured else default_mappings_dir()


def open(node: Node) -> None:
    from gateway.ehr.mllp import MllpConfig
    from gateway.ehr.resources import EhrConfig
    from gateway.ehr.service import DEFAULT_BATCH_ROWS, EhrService

    settings = node.settings
    batch = settings.section("ehr").get("batch_size", DEFAULT_BATCH_ROWS)
    if not isinstance(batch, int) or batch < 1:
        raise ConfigError("[ehr] batch_size must be a positive integer (rows per transaction)")
    mllp = MllpConfig.from_settings(settings)
    node.extensions["ehr"] = EhrService(node, EhrConfig.from_settings(settings), _mappings_dir(settings), batch,
                                        mllp.allowed_facilities)
    _register_job_kind()


def close(node: Node) -> None:
    node.extensions.pop("ehr", None)


def start_listeners(node: Node) -> list[Any]:
    from gateway.ehr.mllp import MllpConfig, MllpListener

    config = MllpConfig.from_settings(node.settings)
    if config.port is None:
        return []
    return [MllpListener(node.extensions["ehr"], config)]


def start_listener_processes(settings: Settings) -> list[Any]:
    """``gateway serve --workers N``: the gunicorn master must not run listener threads, so a process."""
    from gateway.ehr.mllp import MllpConfig

    return [ListenerProcess("gateway.ehr", settings)] if MllpConfig.from_settings(settings).port is not None else []


# --- the CSV import job --------------------------------------------------------------------------------

def _register_job_kind() -> None:
    from gateway.services.jobs import JobKind, job_kinds, register_job_kind

    if CSV_IMPORT_JOB not in job_kinds():
        register_job_kind(JobKind(CSV_IMPORT_JOB, _run_csv_import, _check_csv_import,
                                  "a CSV extract (patients, diagnoses, labs, treatments, staging) into the FHIR store"))


def _check_csv_import(node: Node, params: dict[str, Any]) -> dict[str, Any]:
    from gateway.ehr.csv_mapping import load_mapping
    from gateway.ehr.terminology import MappingTableError
    from gateway.services.jobs import JobError

    service: EhrService = node.extensions["ehr"]
    path = Path(str(params.get("path", ""))).expanduser().resolve()
    if not path.is_file():
        raise JobError(f"{path} is not a file")
    name = str(params.get("mapping") or "")
    try:
        load_mapping(service.mappings_dir, name, service.terminology)
    except MappingTableError as exc:
        raise JobError(str(exc)) from None
    return {"path": str(path), "mapping": name}


def _run_csv_import(node: Node, context: Any, params: dict[str, Any]) -> dict[str, Any]:
    service: EhrService = node.extensions["ehr"]
    path = Path(params["path"])
    _, total = service.csv_rows(path, params["mapping"])
    context.progress(total=total, message=f"{path.name} with {params['mapping']}", force=True)
    result = service.import_csv(path, params["mapping"], start_row=context.done,
                                on_batch=lambda rows: context.progress(advance=rows),
                                check=context.check_cancelled)
    context.progress(force=True)
    return result


# --- commands ------------------------------------------------------------------------------------------

def register_commands(commands: Any, common: Any) -> None:
    # The options live on the action (gateway ehr import FILE --data-dir ...): on both levels, the action's
    # defaults would overwrite what was given before it.
    ehr = commands.add_parser("ehr", help="EHR integration: import HL7 v2, CSV, FHIR")
    actions = ehr.add_subparsers(dest="ehr_action", required=True, metavar="ACTION")
    importer = actions.add_parser("import", parents=[common("./data")],
                                  help="import a CSV extract (--mapping NAME), an HL7 v2 file (.hl7) or a FHIR "
                                       "transaction Bundle (.json)")
    importer.add_argument("file", type=Path)
    importer.add_argument("--mapping", default=None, help="the column mapping of a CSV file (mappings/csv/NAME.toml)")
    importer.add_argument("--format", choices=["csv", "hl7", "bundle"], default=None,
                          help="what the file holds (default: from its extension)")
    importer.add_argument("--json", action="store_true", help="print the report as JSON")
    importer.set_defaults(run=_import_command)

    mappings = commands.add_parser("mappings", parents=[common("./data")],
                                   help="code mapping tables: coverage of the stored data, consistency check")
    mappings.add_argument("action", choices=["coverage", "check"],
                          help="coverage: mapped/unmapped local codes per code system; check: read every table")
    mappings.add_argument("--json", action="store_true", help="print JSON")
    mappings.set_defaults(run=_mappings_command)


def _file_format(args: argparse.Namespace) -> str:
    if args.format:
        return str(args.format)
    suffix = args.file.suffix.lower()
    if suffix in (".hl7", ".er7", ".txt"):
        return "hl7"
    if suffix == ".json":
        return "bundle"
    return "csv"


def _import_command(node: Node, args: argparse.Namespace) -> int:
    from gateway.ehr.resources import MappingError
    from gateway.ehr.service import EhrUnavailable, fhir_error_text, fhir_error_type
    from gateway.ehr.terminology import MappingTableError

    service: EhrService = node.extensions["ehr"]
    if not args.file.is_file():
        print(f"gateway: {args.file} is not a file", file=sys.stderr)
        return 2
    kind = _file_format(args)
    try:
        if kind == "csv":
            if not args.mapping:
                print("gateway: a CSV file needs --mapping NAME (one of mappings/csv/*.toml)", file=sys.stderr)
                return 2
            return _import_csv(node, args)
        if kind == "hl7":
            return _import_hl7(service, args)
        try:
            bundle = json.loads(args.file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            print(f"gateway: {args.file} is not JSON: {exc}", file=sys.stderr)
            return 1
        response = service.import_bundle(bundle)
        statuses = [entry.get("response", {}).get("status", "") for entry in response.get("entry", [])]
        if args.json:
            print(json.dumps(response, indent=2))
        else:
            print(f"transaction of {len(statuses)} entries committed: " + ", ".join(
                f"{statuses.count(s)} × {s}" for s in sorted(set(statuses))))
        return 0
    except (MappingError, MappingTableError, EhrUnavailable) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    except fhir_error_type() as exc:
        print(f"gateway: the FHIR store refused the Bundle, nothing was stored: {fhir_error_text(exc)}",
              file=sys.stderr)
        return 1


def _import_hl7(service: EhrService, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    with tqdm(desc=args.file.name, unit="message", disable=None) as progress:
        report = service.import_hl7_file(args.file, lambda outcome: progress.update(1))
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(f"{report['messages']} messages: {report['accepted']} accepted, {report['errors']} with errors (AE), "
              f"{report['rejected']} rejected (AR)")
        for failure in report["failures"]:
            print(f"  message {failure['message']} ({failure['control_id']}): {failure['ack']} {failure['reason']}")
    return 0 if not report["failures"] else 1


def _import_csv(node: Node, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from gateway.services.jobs import COMPLETED, JobError

    try:
        job = node.jobs.create(node, CSV_IMPORT_JOB, {"path": str(args.file), "mapping": args.mapping})
    except JobError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    with tqdm(desc=args.file.name, unit="row", disable=None) as progress:
        def on_progress(done: int, total: int | None, message: str) -> None:
            if total is not None and progress.total != total:
                progress.total = total
            progress.n = done
            progress.refresh()

        try:
            final = node.jobs.run(node, job["id"], on_progress)
        except KeyboardInterrupt:
            node.jobs.fail(job["id"], "interrupted from the keyboard", state="interrupted")
            print(f"\ninterrupted; resume with: gateway jobs resume {job['id']}", file=sys.stderr)
            return 130
    if final["state"] != COMPLETED:
        print(f"gateway: import {final['state']}: {final['error']}", file=sys.stderr)
        print(f"resume with: gateway jobs resume {job['id']}", file=sys.stderr)
        return 1
    report = final["result"]
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0 if not report["rejected"] else 1
    resources = ", ".join(f"{count} {kind}" for kind, count in sorted(report["resources"].items()))
    print(f"{report['rows']} rows: {report['stored']} stored ({resources or 'nothing'}), "
          f"{report['rejected']} did not map")
    for row in report["rejected_rows"]:
        print(f"  line {row['line']}: {row['reason']}")
    if report["rejected_rows_truncated"]:
        print(f"  ... and {report['rejected'] - len(report['rejected_rows'])} more")
    if report["unmapped_codes"]:
        print("local codes without a standard translation (stored as sent; add them to mappings/codes/):")
        for code in report["unmapped_codes"]:
            print(f"  {code['system']} {code['code']} {code['display']!r}: {code['rows']} row(s)")
    return 0 if not report["rejected"] else 1


def _mappings_command(node: Node, args: argparse.Namespace) -> int:
    from gateway.ehr.csv_mapping import load_mapping, mapping_names
    from gateway.ehr.service import EhrUnavailable
    from gateway.ehr.terminology import MappingTableError

    service: EhrService = node.extensions["ehr"]
    try:
        terminology = service.reload()
        if args.action == "check":
            mappings = [load_mapping(service.mappings_dir, name, terminology) for name in
                        mapping_names(service.mappings_dir)]
            summary = {"mappings_dir": str(service.mappings_dir), "systems": len(terminology.systems),
                       "translations": sum(len(t) for t in terminology.tables.values()),
                       "units": len(terminology.units),
                       "csv_mappings": {m.name: m.kind for m in mappings}}
            print(json.dumps(summary, indent=2) if args.json else
                  f"{summary['mappings_dir']}: {summary['systems']} code systems, {summary['translations']} "
                  f"translations, {summary['units']} units, CSV mappings: "
                  + ", ".join(f"{name} ({kind})" for name, kind in summary["csv_mappings"].items()))
            return 0
        report = service.coverage()
    except (MappingTableError, EhrUnavailable) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    if not report["systems"]:
        print("no local codes in the stored data")
    for entry in report["systems"]:
        share = "-" if entry["coverage"] is None else f"{entry['coverage']:.0%}"
        print(f"{entry['system']} ({entry['uri']}): {entry['mapped']} mapped, {entry['unmapped']} unmapped "
              f"({share} covered)")
        for code in entry["unmapped_codes"]:
            note = "  [in the tables now: re-import to apply]" if code["in_tables_now"] else ""
            print(f"    {code['count']:>6} × {code['code']} {code['display']!r}{note}")
    return 0


# --- the demo data set ---------------------------------------------------------------------------------

def ingest_demo(node: Node, plan: Any) -> None:
    from gateway.demo.ehr import ingest_demo_ehr

    ingest_demo_ehr(node, plan)
