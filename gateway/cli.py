"""The `gateway` console script. Every subcommand takes --data-dir and --config."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.config import ConfigError, Settings, load_settings

log = logging.getLogger("gateway")


def _common(default_data_dir: str | None) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--data-dir", type=Path, default=None,
                        help=f"where the database and instance files live (default: {default_data_dir or './data'})")
    parent.add_argument("--config", type=Path, default=None, help="TOML configuration file")
    parent.add_argument("--database-url", default=None,
                        help="SQLAlchemy URL, e.g. postgresql://user:pass@host/db (default: SQLite in the data dir)")
    parent.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR")
    return parent


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="HTTP port (default 8042)")
    parser.add_argument("--threads", type=int, default=None, help="worker threads per process (default 16)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes (default 1: one process; more use gunicorn's pre-fork model)")
    parser.add_argument("--dimse-port", type=int, default=None,
                        help="also serve DICOM over DIMSE (C-ECHO/STORE/FIND/MOVE/GET) on this port (default: off)")
    parser.add_argument("--ae-title", default=None, help="this node's DIMSE AE title (default GATEWAY)")
    parser.add_argument("--peer", action="append", default=None, metavar="NAME=AETITLE@HOST:PORT",
                        help="a known DICOM node, the only kind of C-MOVE destination; repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="EUCAIM hospital gateway")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[_common("./data")],
                                help="run the HTTP server (and the DIMSE service provider with --dimse-port)")
    _server_options(serve)

    demo = commands.add_parser("demo", parents=[_common("./demo-data")],
                               help="build a synthetic cancer-imaging data set, ingest it and serve it")
    _server_options(demo)
    demo.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data set)")
    demo.add_argument("--patients", type=int, default=8, help="number of synthetic patients")
    demo.add_argument("--no-serve", action="store_true", help="build and ingest only, then exit")

    importer = commands.add_parser("import", parents=[_common("./data")],
                                   help="store DICOM files or folders (recursively) into the gateway")
    importer.add_argument("paths", nargs="+", type=Path)

    db = commands.add_parser("db", parents=[_common("./data")], help="database maintenance")
    db.add_argument("action", choices=["upgrade", "current"], help="apply migrations / show the revision")

    jobs = commands.add_parser("jobs", parents=[_common("./data")],
                               help="long-running jobs (pulls, extractions, exports): list, show, cancel, resume")
    jobs.add_argument("action", choices=["list", "show", "cancel", "resume"])
    jobs.add_argument("job_id", nargs="?", help="the job (show, cancel, resume)")
    jobs.add_argument("--kind", default=None, help="list: only jobs of this kind")
    jobs.add_argument("--state", default=None, help="list: only jobs in this state (queued, running, completed, "
                                                     "failed, cancelled, interrupted)")
    jobs.add_argument("--json", action="store_true", help="print JSON")
    jobs.set_defaults(run=_jobs_command)

    from gateway.plugins import call_hook

    call_hook("register_commands", commands, _common)
    return parser


def _settings(args: argparse.Namespace, default_data_dir: str) -> Settings:
    overrides: dict[str, Any] = {
        "data_dir": args.data_dir, "database_url": args.database_url, "log_level": args.log_level,
        "host": getattr(args, "host", None), "port": getattr(args, "port", None),
        "threads": getattr(args, "threads", None), "dimse_port": getattr(args, "dimse_port", None),
        "ae_title": getattr(args, "ae_title", None), "peers": getattr(args, "peer", None),
    }
    return load_settings(args.config, overrides, defaults={"data_dir": default_data_dir})


def _iter_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"gateway: {path} does not exist")
    return files


GROUP_SIZE = 64


def ingest_files(node: Any, files: Sequence[Path], description: str = "storing") -> dict[str, int]:
    """Store files in groups with a progress bar; returns counts by outcome."""
    return _ingest_stream(node, ((str(path), path.read_bytes()) for path in files), description, len(files))


def _ingest_stream(node: Any, items: Iterable[tuple[str, bytes]], description: str,
                   total: int | None = None) -> dict[str, int]:
    from tqdm import tqdm

    counts = {"stored": 0, "duplicate": 0, "failed": 0}
    group: list[tuple[str, Path]] = []

    def flush() -> None:
        results = node.ingest.store_uploads([upload for _, upload in group])
        for (label, _), result in zip(group, results, strict=True):
            counts[result.status] += 1
            if not result.ok:
                log.warning("%s: not stored: %s", label, result.message)
        progress.update(len(group))
        progress.set_postfix(counts, refresh=False)
        group.clear()

    with tqdm(total=total, desc=description, unit="instance", disable=None) as progress:
        for label, data in items:
            group.append((label, node.files.upload_from_bytes(data)))
            if len(group) >= GROUP_SIZE:
                flush()
        if group:
            flush()
    return counts


def _serve(node: Any, workers: int = 1) -> None:
    settings = node.settings
    if workers > 1:
        from gateway.dimse import start_dimse_process, stop_dimse_process
        from gateway.web.server import run_workers

        node.close()
        # DIMSE gets a process of its own: the gunicorn master forks workers and must not run listener threads.
        dimse_process = start_dimse_process(settings) if settings.dimse_port is not None else None
        from gateway.plugins import call_hook

        # Likewise the plug-ins' listeners (MLLP, ...): hook start_listener_processes(settings) returns objects
        # with close() that run them in processes of their own.
        processes = [process for started in call_hook("start_listener_processes", settings) for process in
                     started or ()]
        try:
            run_workers(settings, workers)
        finally:
            for process in processes:
                process.close()
            if dimse_process is not None:
                stop_dimse_process(dimse_process)
        return
    from gateway.web.app import create_app
    from gateway.web.server import create_server

    app = create_app(node=node)
    server = create_server(app, settings)
    log.info("gateway %s serving %s on http://%s:%s/ (DICOMweb at /dicomweb)", __version__, settings.data_dir,
             settings.host, server.effective_port)
    dimse = None
    if settings.dimse_port is not None:
        from gateway.dimse import DimseServer

        dimse = DimseServer(node)
    from gateway.plugins import call_hook

    listeners = [listener for started in call_hook("start_listeners", node) for listener in started or ()]
    try:
        server.run()
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        app.extensions["gateway.jobs"].close()
        for listener in listeners:
            listener.close()
        if dimse is not None:
            dimse.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    default_data_dir = "./demo-data" if args.command == "demo" else "./data"
    try:
        settings = _settings(args, default_data_dir)
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Alembic lists each of its own plug-ins at INFO on every start; the migrations it runs stay visible.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    from gateway.node import Node

    if args.command == "db":
        from gateway.store.db import upgrade_database

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade_database(settings.effective_database_url)
        print("database is at the newest schema revision")
        return 0
    try:
        node = Node.open(settings)
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        if getattr(args, "run", None) is not None:
            return int(args.run(node, args))
        if args.command == "import":
            counts = ingest_files(node, _iter_files(args.paths))
            print(f"stored {counts['stored']}, already present {counts['duplicate']}, failed {counts['failed']}")
            return 1 if counts["failed"] else 0
        if args.command == "demo":
            from gateway.demo.synth import plan_demo

            plan = plan_demo(seed=args.seed, patients=args.patients)
            _ingest_demo(node, plan)
            from gateway.plugins import call_hook

            call_hook("ingest_demo", node, plan)
            if args.no_serve:
                return 0
        _serve(node, args.workers)
        return 0
    finally:
        node.close()


def run_job(node: Any, kind: str, params: dict[str, Any], description: str, unit: str = "instance") -> int:
    """Create a job and run it here with a progress bar; the same job the API would run. Exit status 0/1."""
    from gateway.services.jobs import JobError

    try:
        job = node.jobs.create(node, kind, params)
    except JobError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    print(f"job {job['id']} ({kind})", file=sys.stderr)
    return _follow_job(node, job["id"], description, unit)


def _follow_job(node: Any, job_id: str, description: str, unit: str) -> int:
    import json

    from tqdm import tqdm

    from gateway.services.jobs import COMPLETED

    # Also when not on a terminal (cron, systemd): a line every few seconds shows a long pull is alive.
    interactive = sys.stderr.isatty()
    with tqdm(desc=description, unit=unit, mininterval=0.1 if interactive else 5.0, ascii=not interactive) as progress:
        def on_progress(done: int, total: int | None, message: str) -> None:
            if total is not None and progress.total != total:
                progress.total = total
            progress.n = done
            if message:
                progress.set_postfix_str(message[:60], refresh=False)
            progress.refresh()

        try:
            final = node.jobs.run(node, job_id, on_progress)
        except KeyboardInterrupt:
            node.jobs.fail(job_id, "interrupted from the keyboard", state="interrupted")
            print(f"\ninterrupted; resume with: gateway jobs resume {job_id}", file=sys.stderr)
            return 130
    if final["state"] != COMPLETED:
        print(f"gateway: job {job_id} {final['state']}: {final['error'] or final['progress']['message']}",
              file=sys.stderr)
        print(f"resume with: gateway jobs resume {job_id}", file=sys.stderr)
        return 1
    print(json.dumps(final["result"], indent=2))
    return 0


def _jobs_command(node: Any, args: argparse.Namespace) -> int:
    import json

    from gateway.services.jobs import JobError

    try:
        if args.action == "list":
            jobs = node.jobs.list(args.kind, args.state)
            if args.json:
                print(json.dumps(jobs, indent=2))
            for job in [] if args.json else jobs:
                progress = job["progress"]
                total = "?" if progress["total"] is None else progress["total"]
                print(f"{job['id']}  {job['kind']:<20} {job['state']:<11} {progress['done']}/{total}  "
                      f"{job['created']}  {progress['message'][:50]}")
            return 0
        if not args.job_id:
            print(f"gateway: jobs {args.action} needs a job id", file=sys.stderr)
            return 2
        if args.action == "show":
            print(json.dumps(node.jobs.get(args.job_id), indent=2))
            return 0
        if args.action == "cancel":
            job = node.jobs.request_cancel(args.job_id)
            note = " (stops at its next check)" if job["state"] == "running" else ""
            print(f"job {args.job_id}: {job['state']}{note}")
            return 0
        node.jobs.recover_orphans()
        job = node.jobs.make_resumable(args.job_id)
        return _follow_job(node, args.job_id, job["kind"], "item")
    except JobError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2 if exc.status != 404 else 1


def _missing_series_only(node: Any, plan: Any) -> Any:
    """The plan without the series that are already completely stored (a restart need not re-render)."""
    import dataclasses

    from sqlalchemy import select

    from gateway.demo.segmentations import segmentation_series_uid, series_has_segmentation
    from gateway.store.models import Series

    with node.engine.connect() as connection:
        stored = dict(connection.execute(select(Series.series_instance_uid, Series.num_instances)).all())

    def complete(series: Any) -> bool:
        images_stored = stored.get(series.series_instance_uid) == len(series.sop_instance_uids)
        return images_stored and (not series_has_segmentation(series)
                                  or segmentation_series_uid(series) in stored)

    patients = []
    for patient in plan:
        studies = []
        for study in patient.studies:
            missing = tuple(series for series in study.series if not complete(series))
            if missing:
                studies.append(dataclasses.replace(study, series=missing))
        if studies:
            patients.append(dataclasses.replace(patient, studies=tuple(studies)))
    return patients


def _ingest_demo(node: Any, plan: Any) -> None:
    import io

    from gateway.demo.synth import iter_demo_instances

    plan = _missing_series_only(node, plan)
    if not plan:
        log.info("demo data set already stored")
        return

    def encoded() -> Iterator[tuple[str, bytes]]:
        for dataset in iter_demo_instances(plan):
            buffer = io.BytesIO()
            dataset.save_as(buffer, enforce_file_format=True)
            yield str(dataset.SOPInstanceUID), buffer.getvalue()

    from gateway.demo.segmentations import series_has_segmentation

    total = sum(len(series.sop_instance_uids) + series_has_segmentation(series) for patient in plan
                for study in patient.studies for series in study.series)
    counts = _ingest_stream(node, encoded(), "demo data set", total)
    log.info("demo data set: %d stored, %d already present, %d failed", counts["stored"], counts["duplicate"],
             counts["failed"])


if __name__ == "__main__":
    raise SystemExit(main())
