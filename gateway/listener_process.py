"""Protocol listeners (DIMSE, MLLP) in processes of their own, for ``gateway serve --workers N``.

The gunicorn master forks workers and must not run listener threads (a fork could copy a lock another thread
holds), so each listener runs as ``python -m <module>``. Settings travel on standard input rather than the
command line or environment, where other local users could read a database password. The child runs until
it is terminated or its parent goes away.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Protocol

from gateway.config import Settings, load_settings

PARENT_POLL_SECONDS = 1.0


class Closeable(Protocol):
    def close(self) -> None: ...


class ListenerProcess:
    """The parent's handle on a listener process."""

    def __init__(self, module: str, settings: Settings) -> None:
        values = {name: str(value) if isinstance(value, Path) else value for name, value in asdict(settings).items()}
        self.process = subprocess.Popen([sys.executable, "-m", module], stdin=subprocess.PIPE)
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(values).encode())
        self.process.stdin.close()

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def close(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def run_listener_process(start: Callable[..., Sequence[Closeable]]) -> int:
    """The child's main: open the node (the parent has migrated the schema), start the listeners, wait."""
    from gateway.node import Node

    settings = load_settings(None, json.load(sys.stdin), environ={})
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def request_stop(_signal: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    parent = os.getppid()
    node = Node.open(settings, migrate=False)
    try:
        listeners = start(node)
        try:
            # A parent killed outright cannot stop us; noticing that it is gone keeps the port from staying taken.
            while not stop.wait(PARENT_POLL_SECONDS) and os.getppid() == parent:
                pass
        finally:
            for listener in listeners:
                listener.close()
    finally:
        node.close()
    return 0
