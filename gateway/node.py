"""The node's core: settings, database, file store and the services built on them.

Protocol adapters (HTTP blueprints, the DIMSE provider, the MLLP listener, the CLI) receive a Node and call
its services; none of them opens the database or the file store on its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, func, select

from gateway import __version__
from gateway.config import Settings
from gateway.services.ingest import IngestService
from gateway.services.jobs import JobService
from gateway.services.query import QueryService
from gateway.services.retrieve import RetrieveService
from gateway.store.db import create_db_engine, redact_url, upgrade_database
from gateway.store.files import FileStore
from gateway.store.models import Instance, Patient, Series, Study

log = logging.getLogger(__name__)


@dataclass
class Node:
    settings: Settings
    engine: Engine
    files: FileStore
    ingest: IngestService
    query: QueryService
    retrieve: RetrieveService
    jobs: JobService
    # Services of the plug-ins (gateway/plugins.py), by plug-in name.
    extensions: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, settings: Settings, migrate: bool = True) -> Node:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        url = settings.effective_database_url
        if migrate:
            upgrade_database(url)
        engine = create_db_engine(url)
        files = FileStore(settings.storage_dir, settings.tmp_dir)
        leftovers = files.clean_tmp()
        if leftovers:
            log.info("removed %d unfinished uploads left by an earlier stop", leftovers)
        node = cls(settings=settings, engine=engine, files=files,
                   ingest=IngestService(engine, files, settings.bulkdata_threshold),
                   query=QueryService(engine), retrieve=RetrieveService(engine, files), jobs=JobService(engine))
        from gateway.plugins import call_hook

        call_hook("open", node)
        return node

    def close(self) -> None:
        from gateway.plugins import call_hook

        self.jobs.stopping.set()
        call_hook("close", self)
        self.engine.dispose()
        self.files.close()

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as connection:
            return {name: int(connection.execute(select(func.count()).select_from(model)).scalar() or 0)
                    for name, model in (("patients", Patient), ("studies", Study), ("series", Series),
                                        ("instances", Instance))}

    def health(self) -> dict[str, object]:
        database: dict[str, object] = {"backend": self.engine.dialect.name,
                                       "url": redact_url(self.settings.effective_database_url)}
        status = "ok"
        counts: dict[str, int] = {}
        try:
            counts = self.counts()
            database["ok"] = True
        except Exception as exc:  # health must report, not raise
            database.update(ok=False, error=str(exc))
            status = "degraded"
        storage: dict[str, object] = {"path": str(self.files.root)}
        try:
            storage.update(ok=True, free_bytes=self.files.free_bytes())
        except OSError as exc:
            storage.update(ok=False, error=str(exc))
            status = "degraded"
        return {"status": status, "version": __version__, "database": database, "storage": storage,
                "counts": counts}
