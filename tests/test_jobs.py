"""Jobs: progress, cancellation, failure, resume after a dead process, and the /api/jobs face."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import requests

from gateway.node import Node
from gateway.services.jobs import (
    CANCELLED,
    COMPLETED,
    FAILED,
    INTERRUPTED,
    QUEUED,
    JobContext,
    JobError,
    JobKind,
    register_job_kind,
)
from gateway.store.models import Job
from tests.conftest import ADMIN_TOKEN, RunningServer

RELEASE = threading.Event()
RUNS: list[dict[str, Any]] = []


def _check(node: Node, params: dict[str, Any]) -> dict[str, Any]:
    count = params.get("count")
    if not isinstance(count, int) or count < 0:
        raise JobError("count must be a non-negative integer")
    return {"count": count, "fail_at": params.get("fail_at"), "wait": bool(params.get("wait"))}


def _count(node: Node, context: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Counts to `count`, resuming from what an earlier attempt recorded."""
    RUNS.append(params)
    start = context.done
    context.progress(total=params["count"], message="counting", force=True)
    for value in range(start, params["count"]):
        if params["wait"]:
            RELEASE.wait(5)
        context.check_cancelled()
        if params["fail_at"] == value:
            context.progress(done=value, force=True)
            raise RuntimeError(f"failed at {value}")
        context.progress(done=value + 1, message=f"at {value + 1}")
    return {"counted": params["count"], "started_at": start}


register_job_kind(JobKind("test-count", _count, _check, "counts (tests only)"))


@pytest.fixture(autouse=True)
def _reset() -> None:
    RELEASE.clear()
    RUNS.clear()


def test_a_job_runs_and_reports_its_result(node: Node) -> None:
    job = node.jobs.create(node, "test-count", {"count": 5})
    assert job["state"] == QUEUED and job["params"] == {"count": 5, "fail_at": None, "wait": False}
    seen: list[int] = []
    final = node.jobs.run(node, job["id"], lambda done, total, message: seen.append(done))
    assert final["state"] == COMPLETED
    assert final["result"] == {"counted": 5, "started_at": 0}
    assert final["progress"]["done"] == 5 and final["progress"]["fraction"] == 1.0
    assert seen[-1] == 5
    with pytest.raises(JobError, match="not queued"):
        node.jobs.run(node, job["id"])


def test_bad_parameters_and_unknown_kinds_are_refused_at_submission(node: Node) -> None:
    with pytest.raises(JobError, match="count must be"):
        node.jobs.create(node, "test-count", {"count": "many"})
    with pytest.raises(JobError, match="unknown job kind"):
        node.jobs.create(node, "no-such-kind", {})
    assert node.jobs.list() == []


def test_a_failed_job_resumes_where_it_stopped(node: Node) -> None:
    job = node.jobs.create(node, "test-count", {"count": 6, "fail_at": 3})
    failed = node.jobs.run(node, job["id"])
    assert failed["state"] == FAILED and "failed at 3" in failed["error"]
    assert failed["progress"]["done"] == 3
    # Resuming keeps the parameters; the test kind's fail_at only fires when reached again, so clear it here.
    with node.engine.begin() as connection:
        connection.execute(Job.__table__.update().values(params_json='{"count": 6, "fail_at": null, "wait": false}'))
    node.jobs.make_resumable(job["id"])
    final = node.jobs.run(node, job["id"])
    assert final["state"] == COMPLETED and final["result"] == {"counted": 6, "started_at": 3}
    assert final["attempts"] == 2


def test_a_job_whose_process_died_is_found_and_resumed(node: Node) -> None:
    job = node.jobs.create(node, "test-count", {"count": 4})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    import socket

    with node.engine.begin() as connection:
        connection.execute(Job.__table__.update().values(state="running", done=2,
                                                         owner=f"{socket.gethostname()}:{dead.stdout.strip()}"))
    assert node.jobs.recover_orphans() == [job["id"]]
    assert node.jobs.get(job["id"])["state"] == INTERRUPTED
    final = node.jobs.run(node, job["id"])
    assert final["state"] == COMPLETED and final["result"]["started_at"] == 2


def test_a_running_job_of_a_live_process_is_not_taken_over(node: Node) -> None:
    job = node.jobs.create(node, "test-count", {"count": 2})
    assert node.jobs.claim(job["id"])
    assert node.jobs.recover_orphans() == []
    with pytest.raises(JobError, match="is running"):
        node.jobs.make_resumable(job["id"])


def _wait_for(server: RunningServer, job_id: str, states: tuple[str, ...]) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        job = requests.get(f"{server.url}/api/jobs/{job_id}", headers=_admin(), timeout=10).json()
        if job["state"] in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {states}: {job}")


def _admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_the_api_starts_follows_and_cancels_jobs(server: RunningServer) -> None:
    url = f"{server.url}/api/jobs"
    assert requests.post(url, json={"kind": "test-count", "params": {"count": 1}}, timeout=10).status_code == 401
    refused = requests.post(url, json={"kind": "test-count", "params": {"count": -1}}, headers=_admin(), timeout=10)
    assert refused.status_code == 400 and "count must be" in refused.json()["detail"]
    assert requests.get(f"{url}/nope", headers=_admin(), timeout=10).status_code == 404

    started = requests.post(url, json={"kind": "test-count", "params": {"count": 3}}, headers=_admin(), timeout=10)
    assert started.status_code == 202 and started.headers["Location"] == f"/api/jobs/{started.json()['id']}"
    done = _wait_for(server, started.json()["id"], (COMPLETED, FAILED))
    assert done["state"] == COMPLETED and done["result"]["counted"] == 3

    waiting = requests.post(url, json={"kind": "test-count", "params": {"count": 1000, "wait": True}},
                            headers=_admin(), timeout=10).json()
    _wait_for(server, waiting["id"], ("running",))
    cancel = requests.post(f"{url}/{waiting['id']}/cancel", headers=_admin(), timeout=10)
    assert cancel.status_code == 200 and cancel.json()["cancelRequested"]
    RELEASE.set()
    assert _wait_for(server, waiting["id"], (CANCELLED, COMPLETED, FAILED))["state"] == CANCELLED
    again = requests.post(f"{url}/{waiting['id']}/cancel", headers=_admin(), timeout=10)
    assert again.status_code == 409

    listed = requests.get(url, params={"kind": "test-count"}, headers=_admin(), timeout=10).json()
    assert {job["id"] for job in listed} == {started.json()["id"], waiting["id"]}
    assert "test-count" in requests.get(f"{url}/kinds", headers=_admin(), timeout=10).json()
