"""The node's plug-ins: a small core (store, ingest, query, retrieve, jobs, DICOMweb, DIMSE) and the rest added.

Like Orthanc's plug-ins, each part beyond the core lives in its own package and hooks itself in through a few
optional functions of its ``plugin`` module; the core never imports them by name:

``open(node)``
    attach the plug-in's services to ``node.extensions`` and subscribe to core events (ingest listeners);
    register job kinds. Called once per Node.
``close(node)``
    release what ``open`` took.
``register_web(app, node)``
    add blueprints to the Flask application.
``register_commands(commands, common)``
    add ``gateway`` subcommands; ``common(default_data_dir)`` gives the parent parser with ``--data-dir`` and
    ``--config``. A subcommand sets ``run=callable(node, args) -> int`` as a default.
``start_listeners(node)``
    protocol listeners (MLLP, ...) started by a single-process ``gateway serve``; returns objects with
    ``close()``.
``start_listener_processes(settings)``
    the same listeners for ``gateway serve --workers N``, each in a process of its own (the gunicorn master
    must not run listener threads); returns ``subprocess.Popen`` objects, stopped when the server stops.
``ingest_demo(node, plan)``
    add the plug-in's part of the demo data set (``gateway demo``) for the patients of ``plan``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType

# In load order; a plug-in may use the ones before it.
PLUGIN_MODULES: tuple[str, ...] = (
    "gateway.fhir.plugin",
    "gateway.ehr.plugin",
    "gateway.pacs.plugin",
    "gateway.features.plugin",
)


def plugins() -> Iterator[ModuleType]:
    for name in PLUGIN_MODULES:
        yield importlib.import_module(name)


def call_hook(hook: str, *args: object) -> list[object]:
    results = []
    for module in plugins():
        function = getattr(module, hook, None)
        if function is not None:
            results.append(function(*args))
    return results
