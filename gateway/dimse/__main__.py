"""``python -m gateway.dimse``: the DIMSE service provider as its own process (see ``start_dimse_process``)."""

from __future__ import annotations

from gateway.dimse.server import DimseServer
from gateway.listener_process import run_listener_process

if __name__ == "__main__":
    raise SystemExit(run_listener_process(lambda node: [DimseServer(node)]))
