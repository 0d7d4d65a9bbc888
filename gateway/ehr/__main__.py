"""``python -m gateway.ehr``: the MLLP listener as its own process (``gateway serve --workers N``)."""

from __future__ import annotations

from gateway.listener_process import run_listener_process

if __name__ == "__main__":
    from gateway.ehr.plugin import start_listeners

    raise SystemExit(run_listener_process(start_listeners))
