"""Gateway settings: one typed object built from a TOML file, the environment and command-line flags.

Precedence is flags > environment > file > defaults, so an operator can keep a site file under
configuration management and still override one value for a run.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "GATEWAY_"


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the offending key."""


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


_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(Settings)}


def _coerce(name: str, value: Any) -> Any:
    kind = _FIELD_TYPES[name]
    try:
        if kind in ("Path",):
            return Path(value).expanduser()
        if kind == "int":
            return int(value)
        if kind == "list[str]":
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            return [str(v) for v in value]
        if kind == "str | None":
            return None if value in (None, "") else str(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name!r}: cannot use {value!r} ({exc})") from exc


def _flatten_toml(doc: dict[str, Any]) -> dict[str, Any]:
    """Accept both top-level keys and the `[gateway]`/`[server]`/`[storage]` tables a site file may use."""
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict) and key in ("gateway", "server", "storage", "database", "auth", "dicomweb",
                                               "cors"):
            for sub_key, sub_value in value.items():
                flat[sub_key if key != "database" or sub_key != "url" else "database_url"] = sub_value
        else:
            flat[key] = value
    return flat


def load_settings(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None,
                  environ: dict[str, str] | None = None, defaults: dict[str, Any] | None = None) -> Settings:
    """Settings from, in rising precedence: ``defaults`` (per command), the file, the environment, flags."""
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = dict(defaults or {})
    config_file = config_file or environ.get(f"{ENV_PREFIX}CONFIG")
    if config_file:
        path = Path(config_file)
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"configuration file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from exc
        for key, value in _flatten_toml(doc).items():
            if key in _FIELD_TYPES:
                values[key] = value
            # Unknown keys belong to other parts of the node (peers, upstream PACS, mappings): kept aside.
    for name in _FIELD_TYPES:
        env_value = environ.get(ENV_PREFIX + name.upper())
        if env_value is not None:
            values[name] = env_value
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    unknown = set(values) - set(_FIELD_TYPES)
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
    settings = Settings(**{name: _coerce(name, value) for name, value in values.items()})
    if not 0 < settings.port < 65536:
        raise ConfigError(f"setting 'port': {settings.port} is not a TCP port")
    if settings.max_upload_bytes <= 0:
        raise ConfigError("setting 'max_upload_bytes' must be positive")
    settings.data_dir = settings.data_dir.resolve()
    return settings
