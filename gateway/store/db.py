"""Database engine and transactions: SQLite (WAL) embedded, PostgreSQL in production."""

from __future__ import annotations

import contextlib
import logging
import zlib
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def normalise_url(url: str) -> str:
    """Let operators write postgresql://… and still get the psycopg 3 driver that we install."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def redact_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def create_db_engine(url: str) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60},
                               pool_size=32, max_overflow=32)
        _configure_sqlite(engine)
    else:
        engine = create_engine(url, pool_size=16, max_overflow=16, pool_pre_ping=True)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # Take transaction control away from the driver so that writers can BEGIN IMMEDIATE: a deferred
        # transaction that later needs the write lock fails with "database is locked" instead of waiting.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: an acknowledged store survives a power cut, not only a process crash.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # DICOM matching is case-sensitive except for person names, which are indexed upper-cased.
        cursor.execute("PRAGMA case_sensitive_like=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA cache_size=-65536")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Connection) -> None:
        if connection.get_execution_options().get("sqlite_immediate"):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")


@contextlib.contextmanager
def write_session(engine: Engine, lock_keys: tuple[str, ...] = ()) -> Iterator[Session]:
    """A transaction that will write: serialised with other writers of the same keys.

    SQLite takes the database write lock up front; PostgreSQL takes transaction-scoped advisory locks on
    ``lock_keys`` (Study Instance UIDs) so concurrent stores into one study across processes are ordered.
    Callers pass the keys sorted, so two writers locking overlapping sets cannot deadlock.
    """
    connection = engine.connect()
    if is_sqlite(engine):
        connection = connection.execution_options(sqlite_immediate=True)
    try:
        with Session(bind=connection, expire_on_commit=False) as session:
            if not is_sqlite(engine):
                for key in lock_keys:
                    session.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                    {"key": zlib.crc32(key.encode()) - 2**31})
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise
    finally:
        connection.close()


@contextlib.contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session


def alembic_config(url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return config


def upgrade_database(url: str) -> None:
    """Bring the schema to the newest revision (idempotent; run at every start)."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")
