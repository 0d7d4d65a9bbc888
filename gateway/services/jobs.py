"""Jobs: long-running tasks (PACS pulls, feature extraction, exports) with progress, cancellation and resume.

A job kind is a function ``run(node, context, params) -> result`` registered under a name, plus a function
that checks its parameters before the job is accepted. The job's row in the database is its whole state, so
the CLI and every HTTP worker report the same progress, and a job whose process died (a crash, a restart) is
resumed by running it again: every kind is written to be idempotent, redoing only what is not yet done.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select, update

from gateway.store.models import Job

if TYPE_CHECKING:
    from gateway.node import Node

log = logging.getLogger(__name__)

QUEUED = "queued"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
INTERRUPTED = "interrupted"  # its process stopped while it ran; resumable
FINISHED_STATES = (COMPLETED, FAILED, CANCELLED)
STARTABLE_STATES = (QUEUED, INTERRUPTED)

# Progress is written at most this often per job: a pull reports per instance, the database need not.
PROGRESS_INTERVAL_S = 0.5


class JobError(Exception):
    """A job cannot be created or run as asked; the message says why (HTTP 400/404/409 on the API)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class JobCancelled(Exception):
    """Raised inside a running job when cancellation was requested; the job stops where it is."""


class JobInterrupted(Exception):
    """Raised inside a running job when its process is stopping; the job is resumed at the next start."""


JobFunction = Callable[["Node", "JobContext", dict[str, Any]], dict[str, Any]]
ParamsChecker = Callable[["Node", dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class JobKind:
    name: str
    run: JobFunction
    # Checks and normalises parameters at submission, so a bad request fails then, not minutes later.
    check_params: ParamsChecker
    description: str = ""


_KINDS: dict[str, JobKind] = {}


def register_job_kind(kind: JobKind) -> JobKind:
    _KINDS[kind.name] = kind
    return kind


def job_kind(name: str) -> JobKind:
    try:
        return _KINDS[name]
    except KeyError:
        known = ", ".join(sorted(_KINDS)) or "none"
        raise JobError(f"unknown job kind {name!r} (known: {known})") from None


def job_kinds() -> dict[str, JobKind]:
    return dict(_KINDS)


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_alive(owner: str) -> bool:
    host, _, pid_text = owner.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return True  # another machine's process: it answers for its own jobs
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> datetime:
    return datetime.now(UTC)


def job_view(job: Job) -> dict[str, Any]:
    """The job as the API and the CLI show it."""
    fraction = None
    if job.total:
        fraction = round(min(job.done / job.total, 1.0), 4)
    return {
        "id": job.id, "kind": job.kind, "state": job.state,
        "progress": {"done": job.done, "total": job.total, "fraction": fraction, "message": job.message},
        "params": json.loads(job.params_json or "{}"),
        "result": json.loads(job.result_json) if job.result_json else None,
        "error": job.error or None, "attempts": job.attempts, "cancelRequested": job.cancel_requested,
        "created": _iso(job.created_at), "started": _iso(job.started_at), "updated": _iso(job.updated_at),
        "finished": _iso(job.finished_at),
    }


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite hands back naive datetimes; they were written in UTC
        value = value.replace(tzinfo=UTC)
    return value.isoformat().replace("+00:00", "Z")


class JobContext:
    """What a running job sees: progress reporting and the cancellation check."""

    def __init__(self, jobs: JobService, job_id: str,
                 on_progress: Callable[[int, int | None, str], None] | None = None) -> None:
        self._jobs = jobs
        self.job_id = job_id
        self._on_progress = on_progress
        self._last_write = 0.0
        self._last_cancel_check = 0.0
        self.done = 0
        self.total: int | None = None
        self.message = ""

    def progress(self, done: int | None = None, total: int | None = None, message: str | None = None,
                 advance: int = 0, force: bool = False) -> None:
        if done is not None:
            self.done = done
        self.done += advance
        if total is not None:
            self.total = total
        if message is not None:
            self.message = message
        if self._on_progress is not None:
            self._on_progress(self.done, self.total, self.message)
        now = time.monotonic()
        if force or now - self._last_write >= PROGRESS_INTERVAL_S:
            self._last_write = now
            self._jobs.record_progress(self.job_id, self.done, self.total, self.message)

    def check_cancelled(self) -> None:
        if self._jobs.stopping.is_set():
            raise JobInterrupted("the gateway is stopping")
        now = time.monotonic()
        if now - self._last_cancel_check < PROGRESS_INTERVAL_S:
            return
        self._last_cancel_check = now
        if self._jobs.cancel_requested(self.job_id):
            raise JobCancelled(f"job {self.job_id} was cancelled")


class JobService:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Set when this process stops: running jobs end at their next check and are resumed later.
        self.stopping = threading.Event()

    def create(self, node: Node, kind: str, params: dict[str, Any]) -> dict[str, Any]:
        checked = job_kind(kind).check_params(node, dict(params))
        job = Job(id=uuid.uuid4().hex, kind=kind, state=QUEUED, params_json=json.dumps(checked, sort_keys=True))
        with self.engine.begin() as connection:
            connection.execute(Job.__table__.insert().values(**job.model_dump()))  # type: ignore[attr-defined]
        return self.get(job.id)

    def _row(self, job_id: str) -> Job:
        with self.engine.connect() as connection:
            row = connection.execute(select(Job.__table__).where(Job.__table__.c.id == job_id)).mappings().first()  # type: ignore[attr-defined]
        if row is None:
            raise JobError(f"there is no job {job_id!r}", status=404)
        return Job(**row)

    def get(self, job_id: str) -> dict[str, Any]:
        return job_view(self._row(job_id))

    def list(self, kind: str | None = None, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        table = Job.__table__  # type: ignore[attr-defined]
        query = select(table).order_by(table.c.created_at.desc()).limit(limit)
        if kind:
            query = query.where(table.c.kind == kind)
        if state:
            query = query.where(table.c.state == state)
        with self.engine.connect() as connection:
            return [job_view(Job(**row)) for row in connection.execute(query).mappings()]

    def _update(self, job_id: str, *conditions: Any, **values: Any) -> bool:
        table = Job.__table__  # type: ignore[attr-defined]
        values.setdefault("updated_at", _now())
        with self.engine.begin() as connection:
            result = connection.execute(update(table).where(table.c.id == job_id, *conditions).values(**values))
        return bool(result.rowcount)

    def claim(self, job_id: str) -> bool:
        """Mark a queued or interrupted job as running in this process; False when another got it first."""
        table = Job.__table__  # type: ignore[attr-defined]
        job = self._row(job_id)
        return self._update(job_id, table.c.state.in_(STARTABLE_STATES), state=RUNNING, owner=this_process(),
                            started_at=_now(), attempts=job.attempts + 1, error="")

    def record_progress(self, job_id: str, done: int, total: int | None, message: str) -> None:
        self._update(job_id, done=done, total=total, message=message[:2000])

    def finish(self, job_id: str, result: dict[str, Any], done: int, total: int | None, message: str) -> None:
        self._update(job_id, state=COMPLETED, result_json=json.dumps(result), done=done, total=total,
                     message=message, finished_at=_now())

    def fail(self, job_id: str, error: str, state: str = FAILED) -> None:
        self._update(job_id, state=state, error=error[:4000], finished_at=_now())

    def request_cancel(self, job_id: str) -> dict[str, Any]:
        table = Job.__table__  # type: ignore[attr-defined]
        job = self._row(job_id)
        if job.state in FINISHED_STATES:
            raise JobError(f"job {job_id} has already {job.state}", status=409)
        # A job nobody runs stops at once; a running one stops at its next check.
        if not self._update(job_id, table.c.state.in_(STARTABLE_STATES), state=CANCELLED, cancel_requested=True,
                            finished_at=_now()):
            self._update(job_id, cancel_requested=True)
        return self.get(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        return self._row(job_id).cancel_requested

    def make_resumable(self, job_id: str) -> dict[str, Any]:
        """Put a failed, cancelled or interrupted job back in the queue (a rerun does only what is missing)."""
        job = self._row(job_id)
        if job.state == RUNNING and _process_alive(job.owner):
            raise JobError(f"job {job_id} is running (in {job.owner})", status=409)
        # Running here means its process is gone (checked above): it is queued again like a finished one.
        self._update(job_id, state=QUEUED, cancel_requested=False, finished_at=None)
        return self.get(job_id)

    def recover_orphans(self) -> list[str]:
        """Mark running jobs whose process on this host has died as interrupted; returns their ids."""
        table = Job.__table__  # type: ignore[attr-defined]
        with self.engine.connect() as connection:
            running = connection.execute(select(table.c.id, table.c.owner).where(table.c.state == RUNNING)).all()
        orphans = [job_id for job_id, owner in running if not _process_alive(owner)]
        for job_id in orphans:
            self._update(job_id, table.c.state == RUNNING, state=INTERRUPTED,
                         message="interrupted: its process stopped; it resumes where it left off")
        return orphans

    def startable(self) -> list[str]:
        table = Job.__table__  # type: ignore[attr-defined]
        with self.engine.connect() as connection:
            return list(connection.execute(select(table.c.id).where(table.c.state.in_(STARTABLE_STATES))
                                           .order_by(table.c.created_at)).scalars())

    def run(self, node: Node, job_id: str,
            on_progress: Callable[[int, int | None, str], None] | None = None) -> dict[str, Any]:
        """Run a queued (or interrupted) job in this thread; returns its final view."""
        if not self.claim(job_id):
            job = self._row(job_id)
            raise JobError(f"job {job_id} is {job.state}, not queued", status=409)
        job = self._row(job_id)
        context = JobContext(self, job_id, on_progress)
        context.done, context.total = job.done, job.total
        try:
            result = job_kind(job.kind).run(node, context, json.loads(job.params_json))
        except JobCancelled:
            self.fail(job_id, "cancelled on request", state=CANCELLED)
        except JobInterrupted:
            self.record_progress(job_id, context.done, context.total, context.message)
            self._update(job_id, state=INTERRUPTED, message="interrupted: the gateway stopped; it resumes at the "
                         "next start")
        except Exception as exc:
            log.exception("job %s (%s) failed", job_id, job.kind)
            self.record_progress(job_id, context.done, context.total, context.message)
            self.fail(job_id, f"{type(exc).__name__}: {exc}")
        else:
            self.finish(job_id, result, context.done, context.total, context.message)
        return self.get(job_id)


class JobRunner:
    """Runs submitted jobs on a few background threads of a serving process."""

    def __init__(self, node: Node, workers: int = 2) -> None:
        self.node = node
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="job")
        self._futures: dict[str, Future[Any]] = {}
        self._lock = threading.Lock()

    def submit(self, job_id: str) -> None:
        with self._lock:
            self._futures = {key: future for key, future in self._futures.items() if not future.done()}
            if job_id in self._futures:
                return
            self._futures[job_id] = self._pool.submit(self._run, job_id)

    def _run(self, job_id: str) -> None:
        try:
            self.node.jobs.run(self.node, job_id)
        except JobError as exc:  # another process claimed it first
            log.info("job %s not run here: %s", job_id, exc)

    def resume_pending(self) -> list[str]:
        """At start: jobs left running by a dead process, and queued ones, run again here."""
        self.node.jobs.recover_orphans()
        pending = self.node.jobs.startable()
        for job_id in pending:
            self.submit(job_id)
        if pending:
            log.info("resuming %d unfinished job(s)", len(pending))
        return pending

    def wait(self, timeout: float | None = None) -> None:
        with self._lock:
            futures = list(self._futures.values())
        for future in futures:
            future.result(timeout=timeout)

    def close(self, timeout: float = 10.0) -> None:
        self.node.jobs.stopping.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout
        with self._lock:
            futures = list(self._futures.values())
        for future in futures:
            with contextlib.suppress(Exception):
                future.result(timeout=max(0.0, deadline - time.monotonic()))
