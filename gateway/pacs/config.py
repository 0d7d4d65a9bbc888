"""The upstream PACS this gateway pulls from, each a ``[pacs.NAME]`` table of the configuration file.

    [pacs.main]
    ae_title = "ORTHANC"            # DIMSE: the PACS's AE title, host and port
    host = "pacs.hospital.example"
    port = 4242
    dicomweb_url = "https://pacs.hospital.example/dicom-web"   # DICOMweb (optional)
    bearer_token = "..."             # or username/password (HTTP basic)
    method = "c-move"                # default retrieve method: c-move, c-get or wado-rs
    max_instances_per_second = 20    # rate limit, so the clinical PACS keeps serving the wards
    window = "20:00-06:00"           # bulk pulls run only in this local-time window (optional)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Any

from gateway.config import ConfigError, Settings, check_ae_title

METHODS = ("c-move", "c-get", "wado-rs")
_KEYS = {"ae_title", "host", "port", "dicomweb_url", "bearer_token", "username", "password", "method",
         "max_instances_per_second", "window", "timeout", "calling_ae_title", "move_destination",
         "verify_tls", "description"}
_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class TimeWindow:
    """A daily local-time window; one that ends before it starts wraps past midnight (20:00-06:00)."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str, what: str) -> TimeWindow:
        match = _WINDOW.match(text)
        if not match:
            raise ConfigError(f"{what}: {text!r} is not a time window like 20:00-06:00")
        hours_start, minutes_start, hours_end, minutes_end = (int(group) for group in match.groups())
        try:
            return cls(time(hours_start, minutes_start), time(hours_end, minutes_end))
        except ValueError as exc:
            raise ConfigError(f"{what}: {text!r}: {exc}") from exc

    def contains(self, moment: datetime) -> bool:
        now = moment.time()
        if self.start <= self.end:
            return self.start <= now < self.end
        return now >= self.start or now < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True)
class UpstreamPacs:
    name: str
    ae_title: str | None = None
    host: str | None = None
    port: int | None = None
    dicomweb_url: str | None = None
    bearer_token: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    method: str = "c-move"
    max_instances_per_second: float | None = None
    window: TimeWindow | None = None
    timeout: float = 60.0
    # Our AE title towards this PACS (default: the gateway's own), and where C-MOVE sends (default: the same).
    calling_ae_title: str | None = None
    move_destination: str | None = None
    verify_tls: bool = True
    description: str = ""

    @property
    def has_dimse(self) -> bool:
        return self.ae_title is not None

    @property
    def has_dicomweb(self) -> bool:
        return self.dicomweb_url is not None

    def available_methods(self) -> list[str]:
        available = ["c-move", "c-get"] if self.has_dimse else []
        if self.has_dicomweb:
            available.append("wado-rs")
        return available

    def describe(self) -> dict[str, Any]:
        """What the CLI and API show: never the credentials."""
        return {"name": self.name, "description": self.description,
                "dimse": f"{self.ae_title}@{self.host}:{self.port}" if self.has_dimse else None,
                "dicomweb": self.dicomweb_url, "auth": "bearer" if self.bearer_token else
                ("basic" if self.username else None), "method": self.method, "methods": self.available_methods(),
                "maxInstancesPerSecond": self.max_instances_per_second,
                "window": str(self.window) if self.window else None}


def _parse_one(name: str, table: dict[str, Any], settings: Settings) -> UpstreamPacs:
    what = f"[pacs.{name}]"
    if not _NAME.match(name):
        raise ConfigError(f"{what}: a PACS name is 1-64 letters, digits, '.', '_' or '-'")
    if not isinstance(table, dict):
        raise ConfigError(f"{what} must be a table")
    unknown = set(table) - _KEYS
    if unknown:
        raise ConfigError(f"{what}: unknown keys {', '.join(sorted(unknown))} (known: {', '.join(sorted(_KEYS))})")
    values: dict[str, Any] = {"name": name}
    dimse_keys = [key for key in ("ae_title", "host", "port") if key in table]
    if dimse_keys and len(dimse_keys) != 3:
        raise ConfigError(f"{what}: DIMSE needs ae_title, host and port together (has {', '.join(dimse_keys)})")
    if dimse_keys:
        values["ae_title"] = check_ae_title(str(table["ae_title"]), f"{what} ae_title")
        values["host"] = str(table["host"])
        try:
            port = int(table["port"])
        except (TypeError, ValueError):
            raise ConfigError(f"{what}: port {table['port']!r} is not a number") from None
        if not 0 < port < 65536:
            raise ConfigError(f"{what}: {port} is not a TCP port")
        values["port"] = port
    if "dicomweb_url" in table:
        url = str(table["dicomweb_url"]).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{what}: dicomweb_url must be an http:// or https:// URL")
        values["dicomweb_url"] = url
    if not dimse_keys and "dicomweb_url" not in table:
        raise ConfigError(f"{what}: give DIMSE (ae_title, host, port) or dicomweb_url, or both")
    for key in ("bearer_token", "username", "password", "description"):
        if key in table:
            values[key] = str(table[key])
    if ("username" in values) != ("password" in values):
        raise ConfigError(f"{what}: username and password go together")
    if "bearer_token" in values and "username" in values:
        raise ConfigError(f"{what}: use bearer_token or username/password, not both")
    method = str(table.get("method", "c-move" if dimse_keys else "wado-rs")).lower()
    if method not in METHODS:
        raise ConfigError(f"{what}: method {method!r} is not one of {', '.join(METHODS)}")
    if (method == "wado-rs" and "dicomweb_url" not in values) or (method != "wado-rs" and not dimse_keys):
        raise ConfigError(f"{what}: method {method} needs {'dicomweb_url' if method == 'wado-rs' else 'DIMSE'}")
    values["method"] = method
    if "max_instances_per_second" in table:
        try:
            rate = float(table["max_instances_per_second"])
        except (TypeError, ValueError):
            raise ConfigError(f"{what}: max_instances_per_second must be a number") from None
        if rate <= 0:
            raise ConfigError(f"{what}: max_instances_per_second must be positive")
        values["max_instances_per_second"] = rate
    if "window" in table:
        values["window"] = TimeWindow.parse(str(table["window"]), f"{what} window")
    if "timeout" in table:
        values["timeout"] = float(table["timeout"])
    for key in ("calling_ae_title", "move_destination"):
        if key in table:
            values[key] = check_ae_title(str(table[key]), f"{what} {key}")
    if "verify_tls" in table:
        values["verify_tls"] = bool(table["verify_tls"])
    return UpstreamPacs(**values)


def upstream_pacs(settings: Settings) -> dict[str, UpstreamPacs]:
    """Every configured upstream PACS by name; ConfigError names the offending key."""
    return {name: _parse_one(name, table, settings) for name, table in settings.section("pacs").items()}
