"""Running series tasks: here, on a local process pool, or on a Dask distributed cluster.

Whatever runs them, results come back to the calling thread (``on_result``), which alone writes to the
database, and at most a few tasks per worker are in flight, so finished results and queued task descriptions
never pile up in memory. ``check`` is called between results; it raises to stop (cancellation, shutdown), and
what was not started is dropped: the job's next run redoes only what has no stored result.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from gateway.features.compute import SeriesOutcome, SeriesTask, compute_series, init_worker

log = logging.getLogger(__name__)

# Tasks queued per worker beyond the one it runs: keeps workers busy without holding the whole cohort.
IN_FLIGHT_PER_WORKER = 2
POLL_S = 0.5

OnResult = Callable[[SeriesTask, SeriesOutcome], None]


def _failed(task: SeriesTask, exc: BaseException) -> SeriesOutcome:
    outcome = SeriesOutcome(task.series_uid, task.segmentation_series_uid, backend=task.backend or "")
    outcome.error = f"the worker failed: {type(exc).__name__}: {exc}"
    return outcome


def run_tasks(tasks: Iterable[SeriesTask], on_result: OnResult, check: Callable[[], None], *, workers: int = 1,
              scheduler: str | None = None) -> None:
    if scheduler:
        _run_dask(iter(tasks), on_result, check, workers, scheduler)
    elif workers <= 1:
        for task in tasks:
            check()
            on_result(task, compute_series(task))
    else:
        _run_pool(iter(tasks), on_result, check, workers)


def _run_pool(tasks: Iterator[SeriesTask], on_result: OnResult, check: Callable[[], None], workers: int) -> None:
    # spawn, not fork: the calling process has database connections and threads a fork would copy mid-use.
    threads = max(1, (os.cpu_count() or 1) // workers)
    executor = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(
        "spawn"), initializer=init_worker, initargs=(threads,))
    pending: dict[concurrent.futures.Future[SeriesOutcome], SeriesTask] = {}
    try:
        exhausted = False
        while True:
            while not exhausted and len(pending) < workers * IN_FLIGHT_PER_WORKER:
                task = next(tasks, None)
                if task is None:
                    exhausted = True
                    break
                pending[executor.submit(compute_series, task)] = task
            if not pending:
                break
            done, _ = concurrent.futures.wait(pending, timeout=POLL_S, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                task = pending.pop(future)
                try:
                    outcome = future.result()
                except Exception as exc:  # a worker process died (memory) or could not unpickle
                    outcome = _failed(task, exc)
                on_result(task, outcome)
            check()
    except BaseException:
        # Stopping: queued tasks are dropped and running ones finish on their own (nothing waits for them).
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    executor.shutdown(wait=True)


def _client(scheduler: str, workers: int) -> tuple[Any, Any]:
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise RuntimeError("--scheduler needs Dask distributed: pip install 'eucaim-gateway[cluster]'") from None
    if scheduler == "local":
        cluster = LocalCluster(n_workers=max(1, workers), threads_per_worker=1, processes=True,
                               dashboard_address=None)
        return Client(cluster), cluster
    return Client(scheduler), None


def _run_dask(tasks: Iterator[SeriesTask], on_result: OnResult, check: Callable[[], None], workers: int,
              scheduler: str) -> None:
    from distributed import wait

    client, cluster = _client(scheduler, workers)
    try:
        slots = max(1, sum(client.nthreads().values())) * IN_FLIGHT_PER_WORKER
        log.info("running feature tasks on the Dask cluster at %s (%d slots)", client.scheduler.address, slots)
        pending: dict[Any, SeriesTask] = {}
        exhausted = False
        while True:
            while not exhausted and len(pending) < slots:
                task = next(tasks, None)
                if task is None:
                    exhausted = True
                    break
                pending[client.submit(compute_series, task, pure=False)] = task
            if not pending:
                break
            try:
                done = wait(list(pending), timeout=POLL_S, return_when="FIRST_COMPLETED").done
            except TimeoutError:
                done = set()
            for future in done:
                task = pending.pop(future)
                try:
                    outcome = future.result()
                except Exception as exc:
                    outcome = _failed(task, exc)
                on_result(task, outcome)
            try:
                check()
            except BaseException:
                client.cancel(list(pending))
                raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
