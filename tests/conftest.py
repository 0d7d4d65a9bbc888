"""Shared fixtures: a real gateway HTTP server on loopback over SQLite or a real PostgreSQL.

PostgreSQL tests use GATEWAY_TEST_POSTGRES_URL (an administrative URL, e.g.
postgresql://gateway:gateway@127.0.0.1:5432/postgres); `.ci/run` starts such a server. Outside CI they skip
when it is not set; in CI (CI=true) its absence is an error, so the PostgreSQL half can never silently vanish.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.config import Settings, load_settings
from gateway.node import Node
from gateway.web.app import create_app

POSTGRES_ENV = "GATEWAY_TEST_POSTGRES_URL"
ADMIN_TOKEN = "test-admin-token"
# One template per test session, so sessions running side by side on one server never drop each other's.
_TEMPLATE = f"gateway_test_template_{os.getpid()}"


def _postgres_admin_url() -> str | None:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"{POSTGRES_ENV} is not set: CI must run the suite against PostgreSQL too")
        pytest.skip(f"PostgreSQL not configured ({POSTGRES_ENV} unset)")
    return url


def _admin_execute(admin_url: str, *statements: str) -> None:
    import psycopg

    with psycopg.connect(admin_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def _database_url(admin_url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


_template_ready = False


def _new_postgres_database() -> tuple[str, str]:
    """A fresh database cloned from a migrated template (cloning is much faster than migrating)."""
    global _template_ready
    admin = _postgres_admin_url()
    assert admin is not None
    if not _template_ready:
        from gateway.store.db import upgrade_database

        _admin_execute(admin, f"DROP DATABASE IF EXISTS {_TEMPLATE}", f"CREATE DATABASE {_TEMPLATE}")
        upgrade_database(_database_url(admin, _TEMPLATE))
        _template_ready = True
    name = "gw_" + uuid.uuid4().hex[:16]
    _admin_execute(admin, f"CREATE DATABASE {name} TEMPLATE {_TEMPLATE}")
    return _database_url(admin, name), name


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gateway.db'}"
        return
    url, name = _new_postgres_database()
    yield url
    from sqlalchemy import create_engine  # noqa: F401 - engines are disposed by Node.close before the drop

    _admin_execute(os.environ[POSTGRES_ENV], f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def make_settings(data_dir: Path, database_url: str | None = None, **overrides: object) -> Settings:
    values: dict[str, object] = {"data_dir": data_dir, "database_url": database_url, "admin_tokens": [ADMIN_TOKEN]}
    values.update(overrides)
    return load_settings(None, values, environ={})


@pytest.fixture
def node(tmp_path: Path, database_url: str) -> Iterator[Node]:
    opened = Node.open(make_settings(tmp_path / "data", database_url))
    yield opened
    opened.close()


@dataclass
class RunningServer:
    url: str
    node: Node

    @property
    def dicomweb(self) -> str:
        return self.url + "/dicomweb"


def start_server(node: Node) -> tuple[RunningServer, object, threading.Thread]:
    from gateway.web.server import create_server

    server = create_server(create_app(node=node), node.settings, host="127.0.0.1", port=0,
                           asyncore_loop_timeout=0.05)

    def run() -> None:
        with contextlib.suppress(OSError, ValueError):  # the socket map is closed under the loop at teardown
            server.run()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return RunningServer(f"http://127.0.0.1:{server.effective_port}", node), server, thread


@pytest.fixture
def server(node: Node) -> Iterator[RunningServer]:
    running, waitress_server, thread = start_server(node)
    yield running
    waitress_server.close()  # type: ignore[attr-defined]
    thread.join(timeout=5)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _template_ready and os.environ.get(POSTGRES_ENV):
        with contextlib.suppress(Exception):
            _admin_execute(os.environ[POSTGRES_ENV], f"DROP DATABASE IF EXISTS {_TEMPLATE} WITH (FORCE)")
