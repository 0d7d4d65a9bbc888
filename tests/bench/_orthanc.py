"""Start and stop the reference Orthanc (Debian packages `orthanc` + `orthanc-dicomweb`) for the benchmark.

Our own Orthanc process, never the system service: a temporary configuration with its own storage and
SQLite index under a temp folder, the DICOMweb plugin only, authentication off, the DICOM (DIMSE) port off,
and `RemoteAccessAllowed: false`. Orthanc 1.10 has no option to bind the HTTP server to one address (it
listens on all interfaces), so by default it runs in a private network namespace where the only interface
is loopback (see `_netns.py`); clients join that namespace with `nsenter`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import TracebackType

from _netns import network_namespaces_available, nsenter_prefix, unshare_prefix
from _process import ManagedProcess, free_tcp_port, log, other_processes_named

NETNS_SHIM = Path(__file__).with_name("_netns.py")
DICOMWEB_ROOT = "/dicom-web/"
PLUGIN_CANDIDATES = [
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/lib/orthanc/libOrthancDicomWeb.so"),
]


def find_dicomweb_plugin() -> Path:
    for candidate in PLUGIN_CANDIDATES:
        if candidate.exists():
            return candidate
    matches = sorted(Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so*"))
    if matches:
        return matches[-1]
    raise FileNotFoundError("Orthanc DICOMweb plugin not found: apt-get install -y orthanc-dicomweb")


def orthanc_configuration(work_dir: Path, http_port: int, plugin: Path) -> dict[str, object]:
    return {
        "Name": "EUCAIM-BENCH-ORTHANC",
        "StorageDirectory": str(work_dir / "storage"),
        "IndexDirectory": str(work_dir / "index"),  # default SQLite index
        "StorageCompression": False,
        "Plugins": [str(plugin)],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SslEnabled": False,
        "DicomServerEnabled": False,
        "SaveJobs": False,
        "KeepAlive": True,
        "TcpNoDelay": True,
        "DicomWeb": {"Enable": True, "Root": DICOMWEB_ROOT, "EnableWado": False, "Ssl": False},
    }


def orthanc_version(binary: str) -> str:
    completed = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    first_line = (completed.stdout or completed.stderr).strip().splitlines()
    return first_line[0] if first_line else "Orthanc (unknown version)"


class OrthancServer:
    """Context manager: a fresh Orthanc with an empty store; `base_url` is its DICOMweb root."""

    name = "Orthanc"

    def __init__(self, work_dir: Path, binary: str = "Orthanc", plugin: Path | None = None,
                 isolation: str = "auto") -> None:
        self.work_dir = work_dir
        self.binary = shutil.which(binary) or binary
        self.plugin = plugin or find_dicomweb_plugin()
        self.isolation = self._choose_isolation(isolation)
        self.as_root = os.geteuid() == 0
        # In a private namespace the port cannot collide with anything (not even a system Orthanc).
        self.http_port = 8042 if self.isolation == "netns" else free_tcp_port()
        self.process: ManagedProcess | None = None
        self.version = orthanc_version(self.binary)

    @staticmethod
    def _choose_isolation(requested: str) -> str:
        if requested not in ("auto", "netns", "none"):
            raise ValueError(f"unknown Orthanc isolation {requested!r}")
        if requested == "none":
            return "none"
        available, reason = network_namespaces_available()
        if available:
            return "netns"
        if requested == "netns":
            raise RuntimeError(f"cannot isolate Orthanc in a network namespace: {reason}")
        log(f"WARNING: {reason}; Orthanc will listen on all interfaces (RemoteAccessAllowed=false, "
            "DICOM port off). Run as root, or enable unprivileged user namespaces, to isolate it.")
        return "none"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}{DICOMWEB_ROOT.rstrip('/')}"

    @property
    def client_prefix(self) -> list[str]:
        """Prefix for client commands: joins Orthanc's network namespace when it has one."""
        if self.isolation == "netns" and self.process is not None:
            return nsenter_prefix(self.process.pid, self.as_root)
        return []

    @property
    def description(self) -> str:
        where = ("private network namespace, loopback only" if self.isolation == "netns"
                 else "all interfaces, RemoteAccessAllowed=false")
        return f"{self.version}, DICOMweb plugin {self.plugin.name}, SQLite index ({where})"

    def __enter__(self) -> OrthancServer:
        system_orthancs = other_processes_named("Orthanc")
        if system_orthancs:
            log(f"WARNING: another Orthanc is running (pids {system_orthancs}); it is not used, but it "
                "competes for CPU: stop it (`service orthanc stop` / `systemctl disable --now orthanc`).")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.work_dir / "orthanc.json"
        config_path.write_text(json.dumps(orthanc_configuration(self.work_dir, self.http_port, self.plugin),
                                          indent=2), encoding="utf-8")
        command = [self.binary, str(config_path)]
        if self.isolation == "netns":
            command = [*unshare_prefix(self.as_root), sys.executable, str(NETNS_SHIM), *command]
        self.process = ManagedProcess("Orthanc", command, self.work_dir / "orthanc.log")
        try:
            self.process.wait_until(self._answers, timeout_s=60, what="answering HTTP")
        except BaseException:
            self.process.stop()
            raise
        log(f"Orthanc ready at {self.base_url} ({self.description})")
        return self

    def _answers(self) -> bool:
        probe = ("import sys, urllib.request\n"
                 "urllib.request.urlopen(sys.argv[1], timeout=2).read()")
        url = f"http://127.0.0.1:{self.http_port}/system"
        completed = subprocess.run([*self.client_prefix, sys.executable, "-c", probe, url],
                                   capture_output=True, check=False)
        return completed.returncode == 0

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.process is not None:
            self.process.stop()
