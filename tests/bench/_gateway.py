"""Start and stop the gateway under test (`gateway serve`), or point at one that is already running."""

from __future__ import annotations

import shlex
import shutil
import sys
import urllib.request
from pathlib import Path
from types import TracebackType

from _process import ManagedProcess, free_tcp_port, log

DICOMWEB_ROOT = "/dicomweb"


def health_ok(origin: str) -> bool:
    try:
        with urllib.request.urlopen(f"{origin}/health", timeout=2) as response:
            return 200 <= response.status < 300
    except OSError:
        return False


def default_database_url(data_dir: Path, database_url: str | None) -> str:
    """The URL the gateway will use (its own rule, from gateway.config), for the `--scale` bulk fill."""
    from gateway.config import Settings

    return Settings(data_dir=data_dir.resolve(), database_url=database_url).effective_database_url


class GatewayServer:
    """Context manager: `gateway serve` on a fresh data dir on loopback, or an existing server (`origin`)."""

    name = "gateway"

    def __init__(self, work_dir: Path, command: str = "gateway", database_url: str | None = None,
                 origin: str | None = None, startup_timeout_s: float = 120, workers: int = 2) -> None:
        self.work_dir = work_dir
        self.workers = workers
        self.command = shlex.split(command)
        self.database_url = database_url
        self.external_origin = origin.rstrip("/") if origin else None
        self.http_port = free_tcp_port()
        self.startup_timeout_s = startup_timeout_s
        self.process: ManagedProcess | None = None
        self._starts = 0

    @property
    def data_dir(self) -> Path:
        return self.work_dir / "data"

    @property
    def origin(self) -> str:
        return self.external_origin or f"http://127.0.0.1:{self.http_port}"

    @property
    def base_url(self) -> str:
        return self.origin + DICOMWEB_ROOT

    @property
    def client_prefix(self) -> list[str]:
        return []

    @property
    def effective_database_url(self) -> str:
        return default_database_url(self.data_dir, self.database_url)

    @property
    def description(self) -> str:
        if self.external_origin:
            return f"already running at {self.external_origin}"
        database = "PostgreSQL" if (self.database_url or "").startswith("postgres") else "SQLite"
        return f"`gateway serve` on 127.0.0.1, {database} index"

    def start(self) -> None:
        if self.external_origin:
            if not health_ok(self.external_origin):
                raise RuntimeError(f"no gateway answering {self.external_origin}/health")
            return
        executable = shutil.which(self.command[0])
        if executable is None:
            raise RuntimeError(f"`{self.command[0]}` not found: pip install -e . (console script `gateway`)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [*self.command, "serve", "--data-dir", str(self.data_dir), "--host", "127.0.0.1",
                   "--port", str(self.http_port), "--workers", str(self.workers), "--log-level", "WARNING"]
        if self.database_url:
            command += ["--database-url", self.database_url]
        self._starts += 1
        self.process = ManagedProcess("gateway", command, self.work_dir / f"gateway-{self._starts}.log")
        try:
            self.process.wait_until(lambda: health_ok(self.origin), timeout_s=self.startup_timeout_s,
                                    what="answering /health")
        except BaseException:
            self.process.stop()
            raise
        log(f"gateway ready at {self.base_url}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def __enter__(self) -> GatewayServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


if __name__ == "__main__":  # manual check: python tests/bench/_gateway.py → starts, waits, stops
    with GatewayServer(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/bench-gateway")) as server:
        print(server.base_url, health_ok(server.origin))
