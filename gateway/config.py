"""Gateway settings: one typed object built from a TOML file, the environment and command-line flags.

Precedence is flags > environment > file > defaults, so an operator can keep a site file under
configuration management and still override one value for a run.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "GATEWAY_"


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the offending key."""


# In a DIMSE allow-list: any calling AE title, and the AE titles of the configured peers.
ANY_AE = "*"
PEERS_AE = "@peers"

# PS3.5 6.2: up to 16 characters of the default repertoire, no backslash, no control characters.
_AE_TITLE = re.compile(r"^[\x20-\x5B\x5D-\x7E]{1,16}$")


def check_ae_title(value: str, what: str = "AE title") -> str:
    """The AE title without padding, or ConfigError saying why it cannot be one."""
    title = value.strip()
    if not title or not _AE_TITLE.match(title):
        raise ConfigError(f"{what}: {value!r} is not an AE title (1-16 printable ASCII characters, no backslash)")
    return title


@dataclass(frozen=True)
class Peer:
    """A DICOM node this gateway knows: a C-MOVE destination and a member of the "@peers" allow-lists."""

    name: str
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Peer:
        """Parse ``NAME=AETITLE@HOST:PORT`` (an IPv6 host in brackets: ``PACS=PACS@[fd00::1]:104``)."""
        name, equals, rest = text.partition("=")
        ae_title, at, address = rest.rpartition("@")
        host, colon, port_text = address.rpartition(":")
        host = host.strip().removeprefix("[").removesuffix("]")
        if not (equals and at and colon and name.strip() and host and port_text.strip().isdigit()):
            raise ConfigError(f"peer {text!r}: expected NAME=AETITLE@HOST:PORT")
        port = int(port_text)
        if not 0 < port < 65536:
            raise ConfigError(f"peer {text!r}: {port} is not a TCP port")
        return cls(name.strip(), check_ae_title(ae_title, f"peer {text!r}"), host, port)


@dataclass
class Settings:
    data_dir: Path = Path("./data")
    host: str = "127.0.0.1"
    port: int = 8042
    database_url: str | None = None
    # Largest request body accepted by STOW-RS and other uploads, in bytes.
    max_upload_bytes: int = 2 * 1024**3
    # Largest number of results a QIDO-RS search returns when the client gives no (or a larger) limit.
    qido_max_results: int = 10_000
    # Binary elements at least this long are replaced by a BulkDataURI in metadata responses.
    bulkdata_threshold: int = 1024
    threads: int = 16
    # Bearer tokens granting the site-administrator scope (DELETE and other destructive operations).
    admin_tokens: list[str] = field(default_factory=list)
    log_level: str = "INFO"
    # Public base URL of the gateway when behind a reverse proxy (used in BulkDataURIs and links).
    public_base_url: str | None = None
    # Browser origins (e.g. an OHIF viewer at https://viewer.hospital.example) allowed to call the API; "*" any.
    cors_origins: list[str] = field(default_factory=list)
    # The DIMSE service provider (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET) listens here; None leaves it off.
    dimse_port: int | None = None
    ae_title: str = "GATEWAY"
    # Known DICOM nodes, NAME=AETITLE@HOST:PORT: the only C-MOVE destinations, and who "@peers" stands for.
    peers: list[str] = field(default_factory=list)
    # Calling AE titles allowed each DIMSE service ("*" anyone, "@peers" the peers' AE titles). Like most
    # archives: anyone may echo and store (modalities push without being registered), but only known nodes
    # may query and retrieve identified data. A calling AE allowed none of them is refused the association.
    dimse_allow_echo: list[str] = field(default_factory=lambda: [ANY_AE])
    dimse_allow_store: list[str] = field(default_factory=lambda: [ANY_AE])
    dimse_allow_query: list[str] = field(default_factory=lambda: [PEERS_AE])
    dimse_allow_retrieve: list[str] = field(default_factory=lambda: [PEERS_AE])
    # The configuration file's other tables ([pacs.NAME], [fhir], [mllp], ...), as read: each plug-in of the
    # node parses and checks its own table, so the core need not know them.
    sections: dict[str, Any] = field(default_factory=dict)

    def section(self, name: str) -> dict[str, Any]:
        value = self.sections.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"configuration: [{name}] must be a table")
        return value

    @property
    def dimse_peers(self) -> list[Peer]:
        return [Peer.parse(text) for text in self.peers]

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "instances"

    @property
    def tmp_dir(self) -> Path:
        # Lives inside data_dir so a finished upload can be renamed into place atomically.
        return self.data_dir / "tmp"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'gateway.db').resolve()}"


_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(Settings) if f.name != "sections"}
_CORE_TABLES = ("gateway", "server", "storage", "database", "auth", "dicomweb", "cors", "dimse")


def _coerce(name: str, value: Any) -> Any:
    kind = _FIELD_TYPES[name]
    try:
        if kind in ("Path",):
            return Path(value).expanduser()
        if kind == "int":
            return int(value)
        if kind == "int | None":
            return None if value in (None, "") else int(value)
        if kind == "list[str]":
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            return [str(v) for v in value]
        if kind == "str | None":
            return None if value in (None, "") else str(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name!r}: cannot use {value!r} ({exc})") from exc


# Keys whose name inside a table differs from the setting's name (`[dimse] port` is not the HTTP port).
_TABLE_KEY_NAMES = {
    ("database", "url"): "database_url",
    ("dimse", "port"): "dimse_port",
    ("dimse", "allow_echo"): "dimse_allow_echo",
    ("dimse", "allow_store"): "dimse_allow_store",
    ("dimse", "allow_query"): "dimse_allow_query",
    ("dimse", "allow_retrieve"): "dimse_allow_retrieve",
}


def _flatten_toml(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Core settings (top-level keys or the `[server]`/`[storage]`/... tables) and the plug-ins' tables."""
    flat: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict) and key in _CORE_TABLES:
            for sub_key, sub_value in value.items():
                flat[_TABLE_KEY_NAMES.get((key, sub_key), sub_key)] = sub_value
        elif isinstance(value, dict):
            sections[key] = value
        else:
            flat[key] = value
    return flat, sections


def _check_dimse(settings: Settings) -> None:
    if settings.dimse_port is not None and not 0 < settings.dimse_port < 65536:
        raise ConfigError(f"setting 'dimse_port': {settings.dimse_port} is not a TCP port")
    settings.ae_title = check_ae_title(settings.ae_title, "setting 'ae_title'")
    names = [peer.name for peer in settings.dimse_peers]
    if len(set(names)) != len(names):
        raise ConfigError("setting 'peers': two peers have the same name")
    for name in ("dimse_allow_echo", "dimse_allow_store", "dimse_allow_query", "dimse_allow_retrieve"):
        entries = getattr(settings, name)
        setattr(settings, name, [entry if entry in (ANY_AE, PEERS_AE) else check_ae_title(entry, f"setting {name!r}")
                                 for entry in entries])


def load_settings(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None,
                  environ: dict[str, str] | None = None, defaults: dict[str, Any] | None = None) -> Settings:
    """Settings from, in rising precedence: ``defaults`` (per command), the file, the environment, flags."""
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = dict(defaults or {})
    sections: dict[str, Any] = {}
    config_file = config_file or environ.get(f"{ENV_PREFIX}CONFIG")
    if config_file:
        path = Path(config_file)
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"configuration file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from exc
        flat, sections = _flatten_toml(doc)
        values.update(flat)
    for name in _FIELD_TYPES:
        env_value = environ.get(ENV_PREFIX + name.upper())
        if env_value is not None:
            values[name] = env_value
    overrides = dict(overrides or {})
    sections.update(overrides.pop("sections", None) or {})
    for name, value in overrides.items():
        if value is not None:
            values[name] = value
    unknown = set(values) - set(_FIELD_TYPES)
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
    settings = Settings(**{name: _coerce(name, value) for name, value in values.items()}, sections=sections)
    if not 0 < settings.port < 65536:
        raise ConfigError(f"setting 'port': {settings.port} is not a TCP port")
    if settings.max_upload_bytes <= 0:
        raise ConfigError("setting 'max_upload_bytes' must be positive")
    _check_dimse(settings)
    settings.data_dir = settings.data_dir.resolve()
    return settings
