"""The MLLP listener in its own process, as ``gateway serve --workers N`` starts it (``python -m gateway.ehr``)."""

from __future__ import annotations

import socket
import time

import pytest

from gateway.ehr import hl7v2
from gateway.ehr.plugin import ListenerProcess, start_listener_processes
from gateway.node import Node
from tests.conftest import make_settings

pytest.importorskip("gateway.fhir.service", reason="gateway.fhir (the FHIR store) is not importable")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _connect(port: int, deadline_s: float = 30.0) -> socket.socket:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_listener_process_acknowledges_and_stores(node: Node) -> None:
    port = _free_port()
    settings = make_settings(node.settings.data_dir, node.settings.database_url,
                             sections={"mllp": {"port": port, "host": "127.0.0.1"}})
    assert start_listener_processes(make_settings(node.settings.data_dir, node.settings.database_url)) == []
    (process,) = start_listener_processes(settings)
    assert isinstance(process, ListenerProcess)
    try:
        with _connect(port) as connection:
            connection.sendall(hl7v2.frame("MSH|^~\\&|HIS|HULA|GW|EUCAIM|20240101||ADT^A04|P1|P|2.5\r"
                                           "PID|1||5001^^^HULA^MR||Doe^Jane||19700101|F\r"))
            decoder = hl7v2.MLLPDecoder(1 << 20)
            events: list[hl7v2.FrameEvent] = []
            while not events:
                data = connection.recv(65536)
                assert data
                events.extend(decoder.feed(data))
        ack = hl7v2.parse(events[0].data)
        assert (ack.first("MSA").get(1), ack.first("MSA").get(2)) == ("AA", "P1")  # type: ignore[union-attr]
    finally:
        process.close()
    assert process.process.returncode is not None
    result = node.extensions["fhir"].search("Patient", [("identifier", "urn:gateway:mrn|5001")])
    assert len(result["entry"]) == 1
