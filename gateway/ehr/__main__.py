"""``python -m gateway.ehr``: the MLLP listener as its own process (``gateway serve --workers N``).

Like ``python -m gateway.dimse``: settings arrive as JSON on standard input (not on the command line, where
other local users could read a database password); it runs until terminated or until its parent goes away.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from types import FrameType

from gateway.config import load_settings
from gateway.node import Node

PARENT_POLL_SECONDS = 1.0


def main() -> int:
    settings = load_settings(None, json.load(sys.stdin), environ={})
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def request_stop(_signal: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    parent = os.getppid()
    node = Node.open(settings, migrate=False)  # the parent has migrated the schema already
    try:
        from gateway.ehr.plugin import start_listeners

        listeners = start_listeners(node)
        try:
            # A parent killed outright cannot stop us; noticing that it is gone frees the port.
            while not stop.wait(PARENT_POLL_SECONDS) and os.getppid() == parent:
                pass
        finally:
            for listener in listeners:
                listener.close()
    finally:
        node.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
