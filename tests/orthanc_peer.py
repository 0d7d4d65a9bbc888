"""A real Orthanc (Debian packages `orthanc`, `orthanc-dicomweb`) playing the hospital PACS in tests.

Each instance gets a temporary configuration: its own storage, free HTTP and DICOM ports, the DICOMweb plugin,
no authentication, remote HTTP access off, and one known DICOM modality (the gateway under test, on loopback,
with its host checked), which is the only C-MOVE destination and the only caller it serves.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import requests

PLUGIN_CANDIDATES = (Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
                     Path("/usr/lib/orthanc/libOrthancDicomWeb.so"))


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or next((str(p) for p in (Path("/usr/sbin/Orthanc"),) if p.exists()), None)


def dicomweb_plugin() -> Path | None:
    return next((candidate for candidate in PLUGIN_CANDIDATES if candidate.exists()), None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class OrthancPeer:
    """Context manager: a fresh, empty Orthanc; ``rest`` is its REST root, ``dicomweb`` its DICOMweb root."""

    def __init__(self, work_dir: Path, gateway_ae: str, gateway_port: int, ae_title: str = "ORTHANC",
                 other_modalities: dict[str, int] | None = None, environment: dict[str, str] | None = None) -> None:
        self.work_dir = work_dir
        self.ae_title = ae_title
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.gateway_ae = gateway_ae
        self.gateway_port = gateway_port
        self.other_modalities = other_modalities or {}
        self.environment = environment
        self.process: subprocess.Popen[bytes] | None = None
        self.session = requests.Session()

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.rest}/dicom-web"

    def configuration(self) -> dict[str, object]:
        plugin = dicomweb_plugin()
        assert plugin is not None
        return {
            "Name": "TEST-PACS", "StorageDirectory": str(self.work_dir / "storage"),
            "IndexDirectory": str(self.work_dir / "index"), "StorageCompression": False,
            "Plugins": [str(plugin)], "HttpPort": self.http_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "SslEnabled": False, "HttpServerEnabled": True,
            "DicomServerEnabled": True, "DicomAet": self.ae_title, "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True, "DicomCheckModalityHost": True, "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": False, "UnknownSopClassAccepted": True,
            "DicomModalities": {"gateway": [self.gateway_ae, "127.0.0.1", self.gateway_port],
                                **{title.lower(): [title, "127.0.0.1", port]
                                   for title, port in self.other_modalities.items()}},
            "DicomScuTimeout": 30, "DicomAssociationCloseDelay": 0, "TcpNoDelay": True, "SaveJobs": False,
            "KeepAlive": True, "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            # Instances go out as stored: no transcoding on C-MOVE/C-GET when the peer accepts the syntax.
            "StorageAccessOnFind": "Always",
        }

    def __enter__(self) -> OrthancPeer:
        binary = orthanc_binary()
        assert binary is not None, "Orthanc is not installed"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "orthanc.json"
        config.write_text(json.dumps(self.configuration(), indent=2), encoding="utf-8")
        log = (self.work_dir / "orthanc.log").open("wb")
        environment = {**os.environ, **self.environment} if self.environment else None
        self.process = subprocess.Popen([binary, str(config)], stdout=log, stderr=subprocess.STDOUT, env=environment)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.work_dir / 'orthanc.log').read_text()[-2000:]}")
            try:
                if self.session.get(f"{self.rest}/system", timeout=2).ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        self.__exit__(None, None, None)
        raise RuntimeError("Orthanc did not answer within 60 s")

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.session.close()

    def upload(self, data: bytes) -> str:
        """Store a Part 10 file as a modality would; returns Orthanc's instance id."""
        response = self.session.post(f"{self.rest}/instances", data=data, timeout=30)
        response.raise_for_status()
        return str(response.json()["ID"])

    def file(self, sop_instance_uid: str) -> bytes:
        """The file Orthanc stores for an instance, byte for byte."""
        found = self.session.post(f"{self.rest}/tools/lookup", data=sop_instance_uid, timeout=30).json()
        instance = next(item["ID"] for item in found if item["Type"] == "Instance")
        response = self.session.get(f"{self.rest}/instances/{instance}/file", timeout=30)
        response.raise_for_status()
        return response.content

    def version(self) -> str:
        return str(self.session.get(f"{self.rest}/system", timeout=10).json().get("Version"))
