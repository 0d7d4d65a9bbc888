"""Search-parameter definitions (``search_parameters.toml``) and the extraction of index values from resources.

A path is evaluated against the resource's JSON: a small FHIRPath subset (member access over lists,
alternatives with ``|``, ``.where(field='value')``), enough for R4's definitions of the supported parameters.
What each element type yields follows R4's search rules: a CodeableConcept gives one token per coding plus its
text, a HumanName a string per part, a Period a date range, a partial date the range it covers.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

TYPES_FILE = Path(__file__).with_name("search_parameters.toml")
PARAM_TYPES = ("token", "string", "date", "reference", "quantity")

# Widths of the index columns: longer values are cut (matching on a 255-character prefix is still exact enough
# for identifiers and codes, which are far shorter).
MAX_INDEXED = 255

LOW_DATE = "0001-01-01T00:00:00.000000"
HIGH_DATE = "9999-12-31T23:59:59.999999"

_WHERE = re.compile(r"^where\((?P<field>[A-Za-z]+)\s*=\s*'(?P<value>[^']*)'\)$")


@dataclass(frozen=True)
class SearchParam:
    resource: str
    name: str
    type: str
    paths: tuple[str, ...]
    target: tuple[str, ...] = ()


@cache
def _document() -> dict[str, Any]:
    return tomllib.loads(TYPES_FILE.read_text(encoding="utf-8"))


@cache
def definitions() -> dict[str, dict[str, SearchParam]]:
    doc = _document()
    result: dict[str, dict[str, SearchParam]] = {}
    for resource, params in doc.items():
        if resource.startswith("_"):
            continue
        result[resource] = {}
        for name, spec in params.items():
            if spec["type"] not in PARAM_TYPES:
                raise ValueError(f"{TYPES_FILE.name}: {resource}.{name} has unknown type {spec['type']!r}")
            paths = tuple(part.strip() for part in spec["path"].split("|"))
            result[resource][name] = SearchParam(resource, name, spec["type"], paths, tuple(spec.get("target", ())))
    return result


@cache
def token_date_pairs() -> dict[str, tuple[tuple[str, str], ...]]:
    """Per resource type, the (token parameter, date parameter) pairs indexed together (``[_token_date]``)."""
    result: dict[str, tuple[tuple[str, str], ...]] = {}
    for resource, pairs in _document().get("_token_date", {}).items():
        checked = []
        for token_name, date_name in pairs:
            token, date = search_param(resource, token_name), search_param(resource, date_name)
            if token is None or token.type != "token" or date is None or date.type != "date":
                raise ValueError(f"{TYPES_FILE.name}: _token_date.{resource} pairs {token_name!r} with "
                                 f"{date_name!r}, which are not a token and a date parameter of {resource}")
            checked.append((token_name, date_name))
        result[resource] = tuple(checked)
    return result


def token_date_name(token_name: str, date_name: str) -> str:
    """The ``param`` of a pair's rows in fhir_token_date."""
    return f"{token_name}+{date_name}"


def resource_types() -> list[str]:
    return list(definitions())


def search_param(resource: str, name: str) -> SearchParam | None:
    return definitions().get(resource, {}).get(name)


# -- path evaluation -----------------------------------------------------------------------------------------

def evaluate(resource: dict[str, Any], path: str) -> list[Any]:
    nodes: list[Any] = [resource]
    for step in _steps(path):
        where = _WHERE.match(step)
        if where:
            nodes = [node for node in nodes
                     if isinstance(node, dict) and node.get(where.group("field")) == where.group("value")]
            continue
        following: list[Any] = []
        for node in nodes:
            if not isinstance(node, dict):
                continue
            value = node.get(step)
            following.extend(item for item in (value if isinstance(value, list) else [value]) if item is not None)
        nodes = following
    return nodes


def _steps(path: str) -> list[str]:
    # Split on dots outside parentheses: "telecom.where(system='phone')" is two steps.
    steps, depth, current = [], 0, ""
    for char in path:
        if char == "." and depth == 0:
            steps.append(current)
            current = ""
            continue
        depth += char == "("
        depth -= char == ")"
        current += char
    steps.append(current)
    return steps


# -- value normalisation -------------------------------------------------------------------------------------

def normalise_string(value: str) -> str:
    """Case- and accent-insensitive form (R4 string search): NFKD, combining marks dropped, case-folded."""
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()[:MAX_INDEXED]


def _cut(value: Any) -> str | None:
    if value is None:
        return None
    return str(value)[:MAX_INDEXED]


_DATE = re.compile(r"^(?P<y>\d{4})(-(?P<m>\d{2})(-(?P<d>\d{2})"
                   r"(T(?P<H>\d{2}):(?P<M>\d{2})(:(?P<S>\d{2})(\.(?P<f>\d+))?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$")


def _format(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f").rjust(26, "0")


def date_range(text: str) -> tuple[str, str] | None:
    """The inclusive UTC range [low, high] that a FHIR date, dateTime or instant (or a search value) covers."""
    match = _DATE.match(text.strip())
    if not match:
        return None
    g = match.groupdict()
    try:
        year = int(g["y"])
        if g["m"] is None:
            start = datetime(year, 1, 1)
            end = datetime(year + 1, 1, 1) if year < 9999 else None
        elif g["d"] is None:
            month = int(g["m"])
            start = datetime(year, month, 1)
            end = datetime(year + (month == 12), month % 12 + 1, 1) if not (year == 9999 and month == 12) else None
        elif g["H"] is None:
            start = datetime(year, int(g["m"]), int(g["d"]))
            end = start + timedelta(days=1)
        else:
            fraction = g["f"] or ""
            micro = int((fraction + "000000")[:6]) if fraction else 0
            start = datetime(year, int(g["m"]), int(g["d"]), int(g["H"]), int(g["M"]), int(g["S"] or 0), micro)
            if g["S"] is None:
                end = start + timedelta(minutes=1)
            elif fraction:
                end = start + timedelta(microseconds=10 ** max(0, 6 - len(fraction)))
            else:
                end = start + timedelta(seconds=1)
            tz = g["tz"]
            if tz and tz != "Z":
                sign = 1 if tz[0] == "+" else -1
                offset = timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])) * sign
                start -= offset
                end -= offset
    except (ValueError, OverflowError):
        return None
    high = _format(end - timedelta(microseconds=1)) if end is not None else HIGH_DATE
    return _format(start), high


def instant_text(moment: datetime) -> str:
    """FHIR instant (millisecond precision, UTC) for meta.lastUpdated and Bundle timestamps."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def index_time(moment: datetime) -> str:
    return _format(moment.astimezone(UTC).replace(tzinfo=None))


# -- extraction ----------------------------------------------------------------------------------------------

@dataclass
class IndexRows:
    tokens: list[dict[str, Any]]
    strings: list[dict[str, Any]]
    dates: list[dict[str, Any]]
    references: list[dict[str, Any]]
    quantities: list[dict[str, Any]]


def extract(resource: dict[str, Any]) -> IndexRows:
    rows = IndexRows([], [], [], [], [])
    for param in definitions().get(resource.get("resourceType", ""), {}).values():
        for path in param.paths:
            for value in evaluate(resource, path):
                _extract_value(param, value, rows)
    return rows


def _extract_value(param: SearchParam, value: Any, rows: IndexRows) -> None:
    base = {"param": param.name}
    if param.type == "token":
        for system, code, text in _tokens(value):
            rows.tokens.append({**base, "system": _cut(system), "code": _cut(code),
                                "text": normalise_string(text) if text else None})
    elif param.type == "string":
        for text in _strings(value):
            rows.strings.append({**base, "value_norm": normalise_string(text), "value_exact": text[:MAX_INDEXED]})
    elif param.type == "date":
        for low, high in _dates(value):
            rows.dates.append({**base, "low": low, "high": high, "wide": low[:10] != high[:10]})
    elif param.type == "reference":
        reference = value.get("reference") if isinstance(value, dict) else value
        if not isinstance(reference, str) or not reference:
            return
        target_type, target_id = split_reference(reference)
        if param.target and target_type not in param.target:
            return
        rows.references.append({**base, "target_type": target_type, "target_id": target_id,
                                "url": None if target_id else reference})
    elif param.type == "quantity" and isinstance(value, dict) and isinstance(value.get("value"), int | float):
        rows.quantities.append({**base, "value": float(value["value"]), "system": _cut(value.get("system")),
                                "code": _cut(value.get("code")), "unit": _cut(value.get("unit"))})


_LITERAL = re.compile(r"^(?P<base>https?://.*/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


def split_reference(reference: str) -> tuple[str | None, str | None]:
    """(type, id) of a literal reference "Type/id" (also absolute and versioned); (None, None) otherwise."""
    match = _LITERAL.match(reference)
    if not match:
        return None, None
    return match.group("type"), match.group("id")


def _tokens(value: Any) -> Iterator[tuple[str | None, str | None, str | None]]:
    if isinstance(value, bool):
        yield None, "true" if value else "false", None
    elif isinstance(value, str | int | float):
        yield None, str(value), None
    elif isinstance(value, dict):
        if "coding" in value or ("text" in value and "system" not in value and "value" not in value):
            for coding in value.get("coding") or []:
                yield from _tokens(coding)
            if value.get("text"):
                yield None, None, value["text"]
        elif "code" in value or "display" in value:  # Coding (or a Quantity used as a token)
            if value.get("code") is not None:
                yield value.get("system"), value.get("code"), value.get("display")
            elif value.get("display"):
                yield None, None, value["display"]
        elif "value" in value:  # Identifier, ContactPoint
            type_text = (value.get("type") or {}).get("text") if isinstance(value.get("type"), dict) else None
            # For a ContactPoint the "system" is its kind (phone, email): telecom=phone|123 and telecom=123 match.
            yield value.get("system"), str(value["value"]), type_text


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key in ("text", "family", "city", "district", "state", "postalCode", "country"):
            if isinstance(value.get(key), str):
                yield value[key]
        for key in ("given", "prefix", "suffix", "line"):
            for part in value.get(key) or []:
                if isinstance(part, str):
                    yield part


def _dates(value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        found = date_range(value)
        if found:
            yield found
    elif isinstance(value, dict):  # Period
        start = date_range(value["start"]) if isinstance(value.get("start"), str) else None
        end = date_range(value["end"]) if isinstance(value.get("end"), str) else None
        if start or end:
            yield (start[0] if start else LOW_DATE), (end[1] if end else HIGH_DATE)
