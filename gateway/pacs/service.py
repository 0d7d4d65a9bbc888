"""Finding studies in an upstream PACS and pulling them into the gateway: resumable, idempotent, rate-limited.

A pull compares the PACS's inventory of each study with what the store holds and retrieves only the
difference: a series of which nothing is here yet is retrieved whole (and its instances listed only if fewer
than the PACS announced arrive), of the others the instances not here. Re-running a pull, or resuming one a
crash interrupted, therefore moves only what is missing.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydicom.uid import UID
from sqlalchemy import select

from gateway.config import ConfigError
from gateway.node import Node
from gateway.pacs.config import METHODS, TimeWindow, UpstreamPacs, upstream_pacs
from gateway.pacs.upstream import (
    STUDY_KEYS,
    STUDY_UID,
    DicomwebUpstream,
    DimseUpstream,
    RateLimiter,
    RetrieveOutcome,
    SeriesInventory,
    UpstreamError,
    UpstreamInstance,
    first_value,
    study_summary,
)
from gateway.services.jobs import JobContext, JobError, JobKind, register_job_kind
from gateway.store.models import Instance, Series

log = logging.getLogger(__name__)

PULL_JOB = "pacs-pull"
MAX_STUDIES_PER_JOB = 100_000
WINDOW_POLL_S = 30.0
_UID_CHUNK = 500


class PullError(Exception):
    """A pull cannot run as asked (configuration, unknown study); the message says what to fix."""


class UnknownPacs(PullError):
    """No upstream PACS of that name is configured."""


def _valid_uid(value: str) -> bool:
    return bool(value) and len(value) <= 64 and UID(value).is_valid


@dataclass
class _Pull:
    """What one pull job hands to each of its studies."""

    context: JobContext
    pacs: UpstreamPacs
    method: str
    limiter: RateLimiter
    paced: bool
    client: DimseUpstream | DicomwebUpstream  # finds and lists
    transport: DimseUpstream | DicomwebUpstream  # retrieves


class PacsService:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.pacs = upstream_pacs(node.settings)

    def get(self, name: str) -> UpstreamPacs:
        try:
            return self.pacs[name]
        except KeyError:
            known = ", ".join(sorted(self.pacs)) or "none is configured ([pacs.NAME] tables)"
            raise UnknownPacs(f"unknown PACS {name!r} (known: {known})") from None

    @contextlib.contextmanager
    def query_client(self, pacs: UpstreamPacs) -> Iterator[DimseUpstream | DicomwebUpstream]:
        """DIMSE when the PACS has it (C-FIND is what every PACS answers), else QIDO-RS."""
        client: DimseUpstream | DicomwebUpstream = (DimseUpstream(self.node, pacs) if pacs.has_dimse
                                                    else DicomwebUpstream(self.node, pacs))
        try:
            yield client
        finally:
            client.close()

    def echo(self, name: str) -> dict[str, Any]:
        pacs = self.get(name)
        report: dict[str, Any] = {"pacs": name}
        if pacs.has_dimse:
            started = time.perf_counter()
            try:
                DimseUpstream(self.node, pacs).echo()
                report["dimse"] = {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}
            except UpstreamError as exc:
                report["dimse"] = {"ok": False, "error": str(exc)}
        if pacs.has_dicomweb:
            client = DicomwebUpstream(self.node, pacs)
            try:
                started = time.perf_counter()
                client.client.search_for_studies(limit=1)
                report["dicomweb"] = {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}
            except Exception as exc:
                report["dicomweb"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            finally:
                client.close()
        return report

    def find_studies(self, name: str, filters: dict[str, str], limit: int | None = None) -> list[dict[str, Any]]:
        pacs = self.get(name)
        unknown = set(filters) - set(STUDY_KEYS)
        if unknown:
            raise PullError(f"unknown study search keys {', '.join(sorted(unknown))} "
                            f"(known: {', '.join(STUDY_KEYS)})")
        with self.query_client(pacs) as client:
            return [study_summary(match) for match in client.find_studies(filters, limit)]

    def missing(self, instances: list[UpstreamInstance]) -> list[UpstreamInstance]:
        """The instances the store does not hold (by SOP Instance UID)."""
        present: set[str] = set()
        uids = [instance.sop_uid for instance in instances]
        with self.node.engine.connect() as connection:
            for start in range(0, len(uids), _UID_CHUNK):
                chunk = uids[start:start + _UID_CHUNK]
                present.update(connection.execute(select(Instance.sop_instance_uid)
                                                  .where(Instance.sop_instance_uid.in_(chunk))).scalars())
        return [instance for instance in instances if instance.sop_uid not in present]

    # -- pulling ------------------------------------------------------------------------------------------

    def resolve_studies(self, pacs: UpstreamPacs, params: dict[str, Any]) -> tuple[list[str], list[str]]:
        """The Study Instance UIDs a pull covers, and the accession numbers the PACS did not know."""
        studies: list[str] = list(params.get("studies") or [])
        not_found: list[str] = []
        accessions = params.get("accession_numbers") or []
        query = params.get("query")
        if accessions or query:
            with self.query_client(pacs) as client:
                for accession in accessions:
                    matches = client.find_studies({"AccessionNumber": accession})
                    if not matches:
                        not_found.append(accession)
                    studies += [str(first_value(match.get(STUDY_UID))) for match in matches]
                if query:
                    studies += [str(first_value(match.get(STUDY_UID))) for match in client.find_studies(query)]
        return list(dict.fromkeys(uid for uid in studies if uid and uid != "None")), not_found

    def pull(self, context: JobContext, params: dict[str, Any]) -> dict[str, Any]:
        pacs = self.get(params["pacs"])
        method = params.get("method") or pacs.method
        rate = params.get("max_instances_per_second", pacs.max_instances_per_second)
        window = TimeWindow.parse(params["window"], "window") if params.get("window") else None
        limiter = RateLimiter(rate)
        context.progress(message=f"finding the studies in {pacs.name}", force=True)
        study_uids, not_found = self.resolve_studies(pacs, params)
        summary: dict[str, Any] = {"pacs": pacs.name, "method": method, "studies": [], "notFound": not_found,
                                   "totals": {"studies": len(study_uids), "instances": 0, "alreadyPresent": 0,
                                              "retrieved": 0, "failed": 0}}
        inventories: dict[str, list[SeriesInventory]] = {}
        done = total = 0
        paced = rate is not None
        with self.query_client(pacs) as client:
            for index, study_uid in enumerate(study_uids, 1):
                context.check_cancelled()
                inventories[study_uid] = client.series_inventory(study_uid)
                for series in inventories[study_uid]:
                    # Listed now unless it can be retrieved whole unlisted (see _needs_listing).
                    if self._needs_listing(series, method, paced):
                        client.list_series(series)
                total += sum(series.size for series in inventories[study_uid])
                context.progress(done=0, total=total, message=f"listing study {index}/{len(study_uids)}")
            receiver = self._move_receiver(pacs) if method == "c-move" else contextlib.nullcontext()
            transport: DimseUpstream | DicomwebUpstream = (DicomwebUpstream(self.node, pacs) if method == "wado-rs"
                                                           else DimseUpstream(self.node, pacs))
            run = _Pull(context, pacs, method, limiter, paced, client, transport)
            try:
                with receiver:
                    for index, study_uid in enumerate(study_uids, 1):
                        self._wait_for_window(context, window)
                        entry, done = self._pull_study(run, study_uid, inventories[study_uid], done,
                                                       f"study {index}/{len(study_uids)}: {study_uid}")
                        summary["studies"].append(entry)
                        for key in ("instances", "alreadyPresent", "retrieved", "failed"):
                            summary["totals"][key] += entry[key]
            finally:
                transport.close()
        failed = summary["totals"]["failed"]
        context.progress(done=done, total=total, force=True,
                         message=f"{summary['totals']['retrieved']} retrieved, {summary['totals']['alreadyPresent']} "
                                 f"already present, {failed} failed")
        if failed:
            # The job fails so it is visibly incomplete; resuming it retrieves just these.
            raise PullError(f"{failed} of {total} instances could not be retrieved from {pacs.name} "
                            f"(resume the job to retry them)")
        return summary

    def _pull_study(self, run: _Pull, study_uid: str, inventory: list[SeriesInventory], done: int,
                    label: str) -> tuple[dict[str, Any], int]:
        """Retrieve what of one study is missing and check it arrived; its report entry and the new done count."""
        listed = [instance for series in inventory if series.instances is not None for instance in series.instances]
        missing = self.missing(listed)
        unlisted = [series for series in inventory if series.instances is None]
        present = len(listed) - len(missing)
        wanted = len(missing) + sum(series.size for series in unlisted)
        done += present
        run.context.progress(done=done, message=label, force=True)
        deferred = (self.node.ingest.deferred(run.pacs.ae_title) if run.pacs.ae_title and run.method != "wado-rs"
                    else contextlib.nullcontext())
        with deferred:  # leaving it stores what is still queued, before the check below
            self._retrieve(run, study_uid, inventory, missing)
        # A series retrieved unlisted is complete when the store holds as many of its instances as the PACS
        # announced; otherwise its list says which are missing.
        expected = list(missing)
        for series in unlisted:
            if self.stored_in_series(series.series_uid) < series.size:
                expected += run.client.list_series(series)
        still_missing = self.missing(expected)
        retrieved = wanted - len(still_missing)
        done += retrieved
        run.context.progress(done=done, force=True)
        entry: dict[str, Any] = {"study": study_uid, "instances": present + wanted, "alreadyPresent": present,
                                 "retrieved": retrieved, "failed": len(still_missing)}
        if still_missing:
            entry["missing"] = [instance.sop_uid for instance in still_missing[:20]]
        return entry, done

    def _needs_listing(self, series: SeriesInventory, method: str, paced: bool) -> bool:
        """Whether a series' instances must be listed before retrieving it.

        Not when nothing of it is stored here and its size is announced: then it is retrieved whole and counted
        afterwards. Part of it here means retrieving just the rest; a C-GET proposes a context per SOP class
        (from the instances when the PACS does not name the study's classes); a paced C-MOVE asks for one
        instance at a time.
        """
        if series.instances is not None:
            return False
        return (series.announced is None or (method == "c-get" and not series.study_sop_classes)
                or (paced and method == "c-move") or self.stored_in_series(series.series_uid) > 0)

    def stored_in_series(self, series_uid: str) -> int:
        with self.node.engine.connect() as connection:
            return int(connection.execute(select(Series.num_instances).where(
                Series.series_instance_uid == series_uid)).scalar() or 0)

    def _retrieve(self, run: _Pull, study_uid: str, inventory: list[SeriesInventory],
                  missing: list[UpstreamInstance]) -> None:
        """Whole series where none of a listed series is here, or it is unlisted; single instances otherwise."""
        context, method, transport, limiter, paced = run.context, run.method, run.transport, run.limiter, run.paced
        missing_by_series: dict[str, list[UpstreamInstance]] = defaultdict(list)
        for instance in missing:
            missing_by_series[instance.series_uid].append(instance)

        def progress(count: int) -> None:
            context.progress(advance=count)
            context.check_cancelled()

        for series in inventory:
            context.check_cancelled()
            if series.instances is None:
                instances: list[UpstreamInstance] = []
                whole_series = True
            else:
                instances = missing_by_series.get(series.series_uid, [])
                if not instances:
                    continue
                whole_series = len(instances) == len(series.instances)
            series_uid = series.series_uid
            # Pacing a C-MOVE means one instance per request; C-GET and WADO-RS are paced as they stream.
            per_instance = not whole_series or (paced and method == "c-move")
            requests_: list[list[str] | None] = ([[i.sop_uid] for i in instances] if per_instance else [None])
            for sop_uids in requests_:
                outcome: RetrieveOutcome
                if method == "c-move":
                    assert isinstance(transport, DimseUpstream)
                    if paced:
                        limiter.wait()
                    outcome = transport.move(study_uid, series_uid, sop_uids, self._move_destination(transport.pacs),
                                             progress)
                elif method == "c-get":
                    assert isinstance(transport, DimseUpstream)
                    sop_classes = ({i.sop_class_uid for i in instances if i.sop_class_uid} if instances
                                   else set(series.study_sop_classes))
                    outcome = transport.get(study_uid, series_uid, sop_uids, sop_classes, progress, limiter)
                else:
                    assert isinstance(transport, DicomwebUpstream)
                    outcome = transport.retrieve(study_uid, series_uid, sop_uids[0] if sop_uids else None, progress,
                                                 limiter)
                if outcome.failed:
                    log.warning("%s of study %s series %s: %d sub-operations failed", method, study_uid, series_uid,
                                outcome.failed)

    def _move_destination(self, pacs: UpstreamPacs) -> str:
        return pacs.move_destination or self.node.settings.ae_title

    @contextlib.contextmanager
    def _move_receiver(self, pacs: UpstreamPacs) -> Iterator[None]:
        """Make sure this gateway's DIMSE SCP is listening, so the instances a C-MOVE sends arrive.

        Inside ``gateway serve --dimse-port`` it is; from the CLI a temporary one is started on the same port.
        """
        settings = self.node.settings
        if settings.dimse_port is None:
            raise PullError("C-MOVE needs this gateway's DIMSE port (dimse_port / --dimse-port), registered in "
                            f"PACS {pacs.name} as AE {self._move_destination(pacs)}; or pull with c-get or wado-rs")
        from gateway.dimse.server import DimseServer

        try:
            server = DimseServer(self.node)
        except OSError:
            if self._own_scp_answers():
                yield  # the serving process receives and stores
                return
            raise PullError(f"port {settings.dimse_port} is taken by something other than this gateway's SCP") \
                from None
        try:
            yield
        finally:
            server.close()

    def _own_scp_answers(self) -> bool:
        settings = self.node.settings
        ourselves = UpstreamPacs(name="this gateway", ae_title=settings.ae_title, host=settings.host,
                                 port=settings.dimse_port, timeout=5.0)
        try:
            DimseUpstream(self.node, ourselves).echo()
        except UpstreamError:
            return False
        return True

    @staticmethod
    def _wait_for_window(context: JobContext, window: TimeWindow | None) -> None:
        if window is None:
            return
        announced = False
        while not window.contains(datetime.now()):
            if not announced:
                context.progress(message=f"waiting for the pull window {window} (local time)", force=True)
                announced = True
            context.check_cancelled()
            time.sleep(min(WINDOW_POLL_S, 1.0 if announced else WINDOW_POLL_S))


def read_accession_numbers(path: Path, column: str | None = None) -> list[str]:
    """Accession numbers from a CSV file: the named column, the column called AccessionNumber (any case), or a
    headerless single column."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise PullError(f"{path}: no rows")
    header = [cell.strip() for cell in rows[0]]
    wanted = column or next((name for name in header if name.lower().replace("_", "").replace(" ", "")
                             in ("accessionnumber", "accession")), None)
    if wanted is not None:
        if wanted not in header:
            raise PullError(f"{path}: no column {wanted!r} (columns: {', '.join(header)})")
        position = header.index(wanted)
        values = [row[position].strip() for row in rows[1:] if len(row) > position]
    elif len(header) == 1:
        values = [row[0].strip() for row in rows]
    else:
        raise PullError(f"{path}: which column holds the accession numbers? (--column; columns: {', '.join(header)})")
    return list(dict.fromkeys(value for value in values if value))


def check_pull_params(node: Node, params: dict[str, Any]) -> dict[str, Any]:
    service: PacsService = node.extensions["pacs"]
    try:
        pacs = service.get(str(params.get("pacs", "")))
    except PullError as exc:
        raise JobError(str(exc)) from None
    method = params.get("method") or pacs.method
    if method not in METHODS:
        raise JobError(f"method {method!r} is not one of {', '.join(METHODS)}")
    if method not in pacs.available_methods():
        raise JobError(f"PACS {pacs.name} offers {', '.join(pacs.available_methods())}, not {method}")
    if method == "c-move" and node.settings.dimse_port is None:
        raise JobError("C-MOVE needs this gateway's DIMSE port (dimse_port / --dimse-port)")
    checked: dict[str, Any] = {"pacs": pacs.name, "method": method}
    studies = params.get("studies") or []
    if not isinstance(studies, list) or not all(isinstance(uid, str) and _valid_uid(uid) for uid in studies):
        raise JobError("studies must be a list of Study Instance UIDs")
    accessions = params.get("accession_numbers") or []
    if not isinstance(accessions, list) or not all(isinstance(a, str) and a.strip() and len(a) <= 16
                                                   for a in accessions):
        raise JobError("accession_numbers must be a list of accession numbers (at most 16 characters each)")
    query = params.get("query") or {}
    if not isinstance(query, dict) or not all(isinstance(v, str) for v in query.values()):
        raise JobError("query must be an object of study-level keys to strings")
    unknown = set(query) - set(STUDY_KEYS)
    if unknown:
        raise JobError(f"unknown query keys {', '.join(sorted(unknown))} (known: {', '.join(STUDY_KEYS)})")
    if not (studies or accessions or query):
        raise JobError("say what to pull: studies, accession_numbers or query")
    if len(studies) + len(accessions) > MAX_STUDIES_PER_JOB:
        raise JobError(f"at most {MAX_STUDIES_PER_JOB} studies per job")
    checked.update(studies=list(dict.fromkeys(studies)), accession_numbers=list(dict.fromkeys(accessions)),
                   query=query)
    rate = params.get("max_instances_per_second", pacs.max_instances_per_second)
    if rate is not None:
        if not isinstance(rate, int | float) or isinstance(rate, bool) or rate <= 0:
            raise JobError("max_instances_per_second must be a positive number")
        checked["max_instances_per_second"] = float(rate)
    window = params.get("window", str(pacs.window) if pacs.window and (accessions or query) else None)
    if window:
        try:
            TimeWindow.parse(str(window), "window")
        except ConfigError as exc:
            raise JobError(str(exc)) from None
        checked["window"] = str(window)
    return checked


def run_pull_job(node: Node, context: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    service: PacsService = node.extensions["pacs"]
    return service.pull(context, params)


PULL_JOB_KIND = register_job_kind(JobKind(PULL_JOB, run_pull_job, check_pull_params,
                                          "retrieve studies from an upstream PACS (only what is missing)"))
