"""FHIR R4 search: request parameters parsed into SQL over the index tables, answered as a searchset Bundle.

Every parameter becomes a condition ``<resource>.pk IN (SELECT res_pk FROM <index table> WHERE ...)`` (or its
NOT IN for :not, :missing=true and ne), so a search is a conjunction of indexed lookups. Chains and _has are
the same conditions nested through ``fhir_reference``; any depth works because conditions are built
recursively against an alias of the resource table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any, get_args, get_origin
from urllib.parse import urlencode

from sqlalchemy import CompoundSelect, Select, and_, false, func, intersect, not_, or_, select, union_all
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from gateway.fhir.errors import bad_request
from gateway.fhir.models import (
    FhirDate,
    FhirQuantity,
    FhirReference,
    FhirResource,
    FhirString,
    FhirToken,
    FhirTokenDate,
)
from gateway.fhir.params import (
    HIGH_DATE,
    LOW_DATE,
    SearchParam,
    date_range,
    definitions,
    normalise_string,
    search_param,
    split_reference,
    token_date_name,
    token_date_pairs,
)

RESOURCE = FhirResource.__table__  # type: ignore[attr-defined]
TABLES = {"token": FhirToken.__table__, "string": FhirString.__table__,  # type: ignore[attr-defined]
          "date": FhirDate.__table__, "reference": FhirReference.__table__,  # type: ignore[attr-defined]
          "quantity": FhirQuantity.__table__}  # type: ignore[attr-defined]
TOKEN_DATE = FhirTokenDate.__table__  # type: ignore[attr-defined]

DEFAULT_COUNT = 20
MAX_COUNT = 1000
# _include/_revinclude add at most this many resources to a page; more is reported as truncated.
MAX_INCLUDES = 500

RESULT_PARAMETERS = ("_count", "_offset", "_sort", "_summary", "_elements", "_include", "_revinclude", "_total",
                     "_format", "_pretty")
COMMON_PARAMETERS = {"_id": "token", "_lastUpdated": "date"}
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
MODIFIERS = {"token": ("not", "text", "missing"), "string": ("exact", "contains", "missing"),
             "date": ("missing",), "reference": ("missing",), "quantity": ("missing",)}
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
             "display": "subsetted"}


@dataclass
class SearchRequest:
    res_type: str
    filters: list[tuple[str, str]] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    offset: int = 0
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (parameter, descending)
    summary_count: bool = False
    elements: list[str] = field(default_factory=list)
    includes: list[tuple[str, str, str | None]] = field(default_factory=list)
    revincludes: list[tuple[str, str, str | None]] = field(default_factory=list)
    total: str = "accurate"
    ignored: list[str] = field(default_factory=list)
    # The parameters as understood, for the self link.
    used: list[tuple[str, str]] = field(default_factory=list)


def _split_values(value: str) -> list[str]:
    """Comma-separated alternatives; "\\," is a literal comma."""
    parts, current, escaped = [], "", False
    for char in value:
        if escaped:
            current += char if char in ",$|\\" else "\\" + char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def _int(name: str, value: str, low: int, high: int | None = None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise bad_request(f"{name} must be an integer, not {value!r}") from None
    if number < low or (high is not None and number > high):
        raise bad_request(f"{name} must be between {low} and {high}" if high else f"{name} must be >= {low}")
    return number


def parse_request(res_type: str, params: list[tuple[str, str]], strict: bool = False) -> SearchRequest:
    request = SearchRequest(res_type)
    for name, value in params:
        base = name.split(":", 1)[0]
        if base == "_count":
            request.count = min(_int("_count", value, 0), MAX_COUNT)
        elif base == "_offset":
            request.offset = _int("_offset", value, 0)
            continue  # paging position: the links add their own
        elif base == "_sort":
            for item in value.split(","):
                key = item.strip()
                descending = key.startswith("-")
                key = key.lstrip("-")
                if key not in COMMON_PARAMETERS and search_param(res_type, key) is None:
                    raise bad_request(f"cannot sort {res_type} by unknown parameter {key!r}")
                request.sort.append((key, descending))
        elif base == "_summary":
            if value not in ("count", "false"):
                raise bad_request(f"_summary={value} is not supported (supported: count, false)", "not-supported")
            request.summary_count = value == "count"
        elif base == "_elements":
            request.elements = [item.strip() for item in value.split(",") if item.strip()]
        elif base in ("_include", "_revinclude"):
            if name not in ("_include", "_revinclude"):
                raise bad_request(f"{name} is not supported (no :iterate)", "not-supported")
            request_list = request.includes if base == "_include" else request.revincludes
            request_list.append(_parse_include(base, value, res_type))
        elif base == "_total":
            if value not in ("none", "estimate", "accurate"):
                raise bad_request("_total must be none, estimate or accurate")
            request.total = value
        elif base in ("_format", "_pretty"):
            continue
        else:
            if not _known(res_type, name):
                if strict:
                    raise bad_request(f"unknown search parameter {name!r} for {res_type}", "not-supported")
                request.ignored.append(name)
                continue
            request.filters.append((name, value))
        request.used.append((name, value))
    return request


def _parse_include(kind: str, value: str, res_type: str) -> tuple[str, str, str | None]:
    parts = value.split(":")
    if len(parts) not in (2, 3):
        raise bad_request(f"{kind}={value}: expected SourceType:parameter[:TargetType]")
    source, name = parts[0], parts[1]
    param = search_param(source, name)
    if param is None or param.type != "reference":
        raise bad_request(f"{kind}={value}: {source} has no reference parameter {name!r}")
    if kind == "_include" and source != res_type:
        raise bad_request(f"_include={value}: the source type must be the searched type {res_type}")
    return source, name, parts[2] if len(parts) == 3 else None


def _known(res_type: str, name: str) -> bool:
    if name.startswith("_has:"):
        parts = name.split(":")
        return (len(parts) >= 4 and search_param(parts[1], parts[2]) is not None
                and _known(parts[1], ":".join(parts[3:])))
    head, _, rest = name.partition(".")
    base = head.split(":", 1)[0]
    if base in COMMON_PARAMETERS:
        return not rest
    param = search_param(res_type, base)
    if param is None:
        return False
    if not rest:
        return True
    if param.type != "reference":
        return False
    return any(_known(target, rest) for target in _chain_targets(param, head))


def _chain_targets(param: SearchParam, head: str) -> list[str]:
    _, _, type_modifier = head.partition(":")
    if type_modifier:
        return [type_modifier] if type_modifier in definitions() else []
    return list(param.target) if param.target else list(definitions())


# -- conditions ----------------------------------------------------------------------------------------------

def condition(res_type: str, alias: Any, name: str, value: str) -> ColumnElement[bool]:
    """The SQL condition on ``alias`` (a fhir_resource alias) for one search parameter and its value."""
    source, other = _match(res_type, alias, name, value)
    return alias.c.pk.in_(source) if source is not None else other  # type: ignore[return-value]


def _match(res_type: str, alias: Any, name: str,
           value: str) -> tuple[Select[Any] | None, ColumnElement[bool] | None]:
    """One parameter as either the res_pks that match it (a positive match: most parameters) or a condition on
    ``alias`` (negations, _id, _lastUpdated, _has).

    Index rows exist only for current resources of their type, so a positive match needs no look at the resource
    table: searches made of them are answered from the index tables alone.
    """
    if name.startswith("_has:"):
        return None, _has_condition(res_type, alias, name, value)
    head, dot, rest = name.partition(".")
    base, _, modifier = head.partition(":")
    if base == "_id":
        return None, alias.c.res_id.in_(_split_values(value))
    if base == "_lastUpdated":
        return None, or_(*[_date_clause(alias.c.last_updated, alias.c.last_updated, item)
                           for item in _split_values(value)])
    param = search_param(res_type, base)
    if param is None:
        raise bad_request(f"unknown search parameter {name!r} for {res_type}")
    if dot:
        return _chain_sources(res_type, param, head, rest, value), None
    table = TABLES[param.type]
    owned = select(table.c.res_pk).where(table.c.res_type == res_type, table.c.param == param.name)
    if modifier == "missing":
        if value not in ("true", "false"):
            raise bad_request(f"{name}: :missing takes true or false")
        return (None, alias.c.pk.not_in(owned)) if value == "true" else (owned, None)
    if param.type == "reference" and modifier and modifier in definitions():
        clauses = [_reference_clause(table, param, item, modifier) for item in _split_values(value)]
        return owned.where(or_(*clauses)), None
    if modifier and modifier not in MODIFIERS[param.type]:
        raise bad_request(f"modifier :{modifier} is not supported for {param.type} parameter {base!r}",
                          "not-supported")
    items = _split_values(value)
    if param.type == "token":
        clauses = [_token_clause(table, item, modifier == "text") for item in items]
        matching = owned.where(or_(*clauses))
        return (None, alias.c.pk.not_in(matching)) if modifier == "not" else (matching, None)
    if param.type == "date":
        return _date_sources(res_type, param, [items]), None
    if param.type == "string":
        clauses = [_string_clause(table, item, modifier) for item in items]
    elif param.type == "reference":
        clauses = [_reference_clause(table, param, item, None) for item in items]
    else:
        clauses = [_quantity_clause(table, item) for item in items]
    return owned.where(or_(*clauses)), None


def _date_sources(res_type: str, param: SearchParam, groups: list[list[str]],
                  token: tuple[str, list[str]] | None = None) -> Select[Any]:
    """Index rows of a date parameter meeting every group (each group: alternatives, one of which must hold).

    Most values (a date, a dateTime) lie within one UTC day; for those rows a bound on ``high`` from below
    also bounds ``low`` (a value ending on or after day D starts on day D or later), which turns "ge X and lt
    Y" into a bounded range of the (wide, low) index instead of everything before Y. Wider values (periods,
    a year, a month) are few and matched by the plain conditions.

    With ``token`` (a token parameter indexed together with this date in fhir_token_date, and its alternatives)
    the rows are the pair's: the code and the dates bound one range of one index.
    """
    if token is None:
        table, indexed_as, conditions = TABLES["date"], param.name, []
    else:
        table, indexed_as = TOKEN_DATE, token_date_name(token[0], param.name)
        conditions = [or_(*[_token_clause(table, item, False) for item in token[1]])]
    conditions += [or_(*[_date_clause(table.c.low, table.c.high, item) for item in group]) for group in groups]
    floors = []
    for group in groups:
        bounds = [_narrow_low_bound(item) for item in group]
        if all(bound is not None for bound in bounds):
            floors.append(min(bounds))  # type: ignore[type-var]
    owned = select(table.c.res_pk).where(table.c.res_type == res_type, table.c.param == indexed_as)
    narrow = owned.where(table.c.wide.is_(False), *conditions,
                         *([table.c.low >= max(floors)] if floors else []))
    wide = owned.where(table.c.wide.is_(True), *conditions)
    return union_all(narrow, wide)  # type: ignore[return-value]


def _narrow_low_bound(value: str) -> str | None:
    """The start of the UTC day before which no single-day value meeting ``value`` can start (None: no bound)."""
    prefix, text = _prefix(value)
    found = date_range(text)
    if found is None:
        return None
    p_low, p_high = found
    if prefix in ("eq", "sa", "ge"):
        bound = p_low
    elif prefix == "gt":
        bound = p_high
    else:  # ne, lt, le, eb bound nothing from below; ap is left unbounded (no bound is always correct)
        return None
    return bound[:10] + "T00:00:00.000000"


def _token_clause(table: Any, value: str, text: bool) -> ColumnElement[bool]:
    if text:
        return table.c.text.like(_like_prefix(normalise_string(value)), escape="\\")
    if "|" not in value:
        return table.c.code == value
    system, _, code = value.partition("|")
    if not system:
        return and_(table.c.system.is_(None), table.c.code == code)
    if not code:
        return and_(table.c.system == system, table.c.code.is_not(None))
    return and_(table.c.system == system, table.c.code == code)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _like_prefix(text: str) -> str:
    return _escape_like(text) + "%"


def _string_clause(table: Any, value: str, modifier: str) -> ColumnElement[bool]:
    if modifier == "exact":
        return table.c.value_exact == value
    norm = normalise_string(value)
    if modifier == "contains":
        return table.c.value_norm.like("%" + _escape_like(norm) + "%", escape="\\")
    return table.c.value_norm.like(_like_prefix(norm), escape="\\")


def _prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in PREFIXES and not value[:2].isdigit():
        return value[:2], value[2:]
    return "eq", value


def _date_clause(low: Any, high: Any, value: str) -> ColumnElement[bool]:
    prefix, text = _prefix(value)
    found = date_range(text)
    if found is None:
        raise bad_request(f"{value!r} is not a FHIR date or dateTime")
    p_low, p_high = found
    if prefix == "eq":
        return and_(low >= p_low, high <= p_high)
    if prefix == "ne":
        return not_(and_(low >= p_low, high <= p_high))
    if prefix == "gt":
        return high > p_high
    if prefix == "lt":
        return low < p_low
    if prefix == "ge":
        return high >= p_low
    if prefix == "le":
        return low <= p_high
    if prefix == "sa":
        return low > p_high
    if prefix == "eb":
        return high < p_low
    # ap: R4 leaves the width to the server; 10% of the distance to now on each side, as HAPI and others do.
    now = datetime.now(UTC).replace(tzinfo=None)
    start = datetime.fromisoformat(p_low)
    end = datetime.fromisoformat(p_high) if p_high != HIGH_DATE else datetime.max
    widened_low = max(datetime.min, start - abs(now - start) * 0.1) if start != datetime.min else start
    widened_high = min(datetime.max, end + abs(now - end) * 0.1) if end != datetime.max else end
    return and_(low <= _fmt(widened_high), high >= _fmt(widened_low))


def _fmt(moment: datetime) -> str:
    if moment == datetime.max:
        return HIGH_DATE
    if moment == datetime.min:
        return LOW_DATE
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f").rjust(26, "0")


def _reference_clause(table: Any, param: SearchParam, value: str, type_modifier: str | None) -> ColumnElement[bool]:
    target_type, target_id = split_reference(value)
    if target_id is None:
        if "/" in value or ":" in value:
            return table.c.url == value
        target_id = value
        if type_modifier is None and len(param.target) == 1:
            type_modifier = param.target[0]
    if type_modifier is not None:
        if target_type is not None and target_type != type_modifier:
            return false()
        target_type = type_modifier
    clause = table.c.target_id == target_id
    return and_(table.c.target_type == target_type, clause) if target_type else clause


_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def _quantity_clause(table: Any, value: str) -> ColumnElement[bool]:
    prefix, text = _prefix(value)
    number_text, _, unit = text.partition("|")
    system, _, code = unit.partition("|") if "|" in unit else ("", "", unit)
    if not _NUMBER.match(number_text):
        raise bad_request(f"{value!r} is not a quantity ([prefix]number[|system|code])")
    try:
        number = Decimal(number_text)
    except InvalidOperation:
        raise bad_request(f"{value!r} is not a number") from None
    exponent = number.as_tuple().exponent
    half = Decimal(5) * Decimal(10) ** (int(exponent) - 1) if isinstance(exponent, int) else Decimal(0)
    low, high, exact = float(number - half), float(number + half), float(number)
    column = table.c.value
    clauses: dict[str, ColumnElement[bool]] = {
        "eq": and_(column >= low, column < high), "ne": or_(column < low, column >= high),
        "gt": column > exact, "lt": column < exact, "ge": column >= exact, "le": column <= exact,
        "sa": column > exact, "eb": column < exact,
        "ap": and_(column >= exact - abs(exact) * 0.1, column <= exact + abs(exact) * 0.1)}
    result = clauses[prefix]
    if system:
        result = and_(result, table.c.system == system)
    if code:
        # Without a system, R4 matches the code against Quantity.code or Quantity.unit.
        result = and_(result, table.c.code == code if system else or_(table.c.code == code, table.c.unit == code))
    return result


def _chain_sources(res_type: str, param: SearchParam, head: str, rest: str, value: str) -> Select[Any]:
    if param.type != "reference":
        raise bad_request(f"{head} is not a reference parameter and cannot be chained")
    targets = [target for target in _chain_targets(param, head) if _known(target, rest)]
    if not targets:
        raise bad_request(f"cannot chain {head}.{rest}: no target type has the parameter {rest!r}")
    ref = TABLES["reference"].alias()
    clauses = []
    for target in targets:
        target_alias = RESOURCE.alias()
        inner = select(target_alias.c.res_id).where(target_alias.c.res_type == target,
                                                    target_alias.c.deleted.is_(False),
                                                    condition(target, target_alias, rest, value))
        clauses.append(and_(ref.c.target_type == target, ref.c.target_id.in_(inner)))
    return select(ref.c.res_pk).where(ref.c.res_type == res_type, ref.c.param == param.name, or_(*clauses))


def _has_condition(res_type: str, alias: Any, name: str, value: str) -> ColumnElement[bool]:
    parts = name.split(":")
    if len(parts) < 4:
        raise bad_request(f"{name}: expected _has:Type:reference:parameter")
    source_type, reference_name, inner_name = parts[1], parts[2], ":".join(parts[3:])
    param = search_param(source_type, reference_name)
    if param is None or param.type != "reference":
        raise bad_request(f"{name}: {source_type} has no reference parameter {reference_name!r}")
    ref = TABLES["reference"].alias()
    source_alias = RESOURCE.alias()
    sources = select(source_alias.c.pk).where(source_alias.c.res_type == source_type,
                                              condition(source_type, source_alias, inner_name, value))
    targets = select(ref.c.target_id).where(ref.c.res_type == source_type, ref.c.param == reference_name,
                                            ref.c.target_type == res_type, ref.c.res_pk.in_(sources))
    return alias.c.res_id.in_(targets)


# -- the query -----------------------------------------------------------------------------------------------

@dataclass
class BaseQuery:
    alias: Any
    # Positive matches: selects of res_pk, all of which a match is in (none: every resource of the type).
    sources: list[Any]
    # Conditions on ``alias`` besides them.
    where: list[ColumnElement[bool]]

    def candidates(self) -> Any:
        """The res_pks in every source, each once, as one select (None without sources)."""
        if not self.sources:
            return None
        selects = [_plain(source) for source in self.sources]
        if len(selects) == 1:
            return selects[0].distinct()
        return intersect(*selects)

    def conditions(self, res_type: str) -> list[ColumnElement[bool]]:
        """Everything a match meets, as conditions on ``alias``."""
        candidates = self.candidates()
        if candidates is None:
            return [self.alias.c.res_type == res_type, self.alias.c.deleted.is_(False), *self.where]
        # The sources imply the type and that the resource is current: the planner is given only the candidates
        # to start from (with res_type it may scan the whole type instead).
        return [self.alias.c.pk.in_(candidates), *self.where]


def _plain(source: Any) -> Select[Any]:
    # A compound (UNION ALL) inside INTERSECT needs its own subquery: SQLite has no parenthesised compounds.
    if isinstance(source, CompoundSelect):
        inner = source.subquery()
        return select(inner.c.res_pk)
    return source


def _single_valued(res_type: str, name: str) -> bool:
    """Whether a date parameter can hold one value per resource at most (bounds then apply to the same row)."""
    param = search_param(res_type, name)
    return param is not None and param.type == "date" and all(
        _path_single(res_type, path) for path in param.paths)


@cache
def _path_single(res_type: str, path: str) -> bool:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        model: Any = get_fhir_model_class(res_type)
    except KeyError:
        return False
    steps = path.split(".")
    for number, step in enumerate(steps):
        info = model.model_fields.get(step)
        if info is None:
            return False
        annotation = info.annotation
        arguments = [a for a in get_args(annotation) if a is not type(None)] or [annotation]
        if any(get_origin(a) is list for a in arguments):
            return False
        if number + 1 < len(steps):  # the element's type names its model: abc.PeriodType -> Period
            try:
                model = get_fhir_model_class(getattr(arguments[0], "__name__", "").removesuffix("Type"))
            except KeyError:
                return False
    return True


def base_query(request: SearchRequest) -> BaseQuery:
    alias = RESOURCE.alias("r")
    query = BaseQuery(alias, [], [])
    filters = request.filters
    # Repeated bounds on one single-valued date parameter (date=ge2021-01-01&date=lt2021-04-01) are one range
    # on one index row: the same answer as separate conditions, found as one bounded index range.
    ranges: dict[str, list[list[str]]] = {}
    for name, value in filters:
        if ":" not in name and "." not in name and _single_valued(request.res_type, name):
            ranges.setdefault(name, []).append(_split_values(value))
    # A plain token parameter indexed together with such a date (fhir_token_date) joins the date's range:
    # "code=X&date=ge..&date=lt.." is then one index range over (code, date) rows, not two sets intersected.
    paired: dict[str, tuple[str, list[str]]] = {}
    answered: set[int] = set()  # positions in ``filters`` of the token values joined to a range
    for token_name, date_name in token_date_pairs().get(request.res_type, ()):
        if date_name in ranges and date_name not in paired:
            position = next((i for i, (name, _) in enumerate(filters) if name == token_name and i not in answered),
                            None)
            if position is not None:
                answered.add(position)
                paired[date_name] = (token_name, _split_values(filters[position][1]))
    for position, (name, value) in enumerate(filters):
        if name in ranges or position in answered:
            continue
        source, other = _match(request.res_type, alias, name, value)
        if source is not None:
            query.sources.append(source)
        else:
            query.where.append(other)  # type: ignore[arg-type]
    for name, groups in ranges.items():
        param = search_param(request.res_type, name)
        assert param is not None
        query.sources.append(_date_sources(request.res_type, param, groups, paired.get(name)))
    return query


def _sort_columns(request: SearchRequest, alias: Any) -> list[Any]:
    columns: list[Any] = []
    for key, descending in request.sort:
        if key == "_id":
            column: Any = alias.c.res_id
        elif key == "_lastUpdated":
            column = alias.c.last_updated
        else:
            param = search_param(request.res_type, key)
            assert param is not None  # checked while parsing
            table = TABLES[param.type]
            value_column = {"token": table.c.code if param.type == "token" else None,
                            "string": table.c.value_norm if param.type == "string" else None,
                            "date": (table.c.high if descending else table.c.low) if param.type == "date" else None,
                            "reference": table.c.target_id if param.type == "reference" else None,
                            "quantity": table.c.value if param.type == "quantity" else None}[param.type]
            aggregate = func.max(value_column) if descending else func.min(value_column)
            column = select(aggregate).where(table.c.res_pk == alias.c.pk, table.c.param == key).scalar_subquery()
        columns.append(column.desc().nulls_last() if descending else column.asc().nulls_last())
    columns.append(alias.c.pk.asc())
    return columns


@dataclass
class SearchResult:
    total: int | None
    matches: list[int]
    includes: list[int]
    truncated: bool


def execute(session: Session, request: SearchRequest) -> SearchResult:
    query = base_query(request)
    alias = query.alias
    candidates = query.candidates()
    direct = candidates is not None and not query.where and not request.sort
    if direct:
        # Answered from the index tables alone: the resource table is read only for the page's resources.
        column = candidates.subquery().c.res_pk
    wants_total = request.summary_count or request.total != "none"
    if candidates is None and not query.where:  # every resource of the type: its maintained count
        from gateway.fhir.repository import current_count

        total = current_count(session, request.res_type) if wants_total else None
        if request.summary_count or request.count == 0:
            return SearchResult(total, [], [], False)
        page = select(alias.c.pk).where(*query.conditions(request.res_type)) \
            .order_by(*_sort_columns(request, alias)).limit(request.count).offset(request.offset)
        matches = list(session.execute(page).scalars())
        includes, truncated = _includes(session, request, matches)
        return SearchResult(total, matches, includes, truncated)
    if request.summary_count or request.count == 0:
        if direct:
            total_query = select(func.count()).select_from(column.table)
        else:
            total_query = select(func.count()).select_from(alias).where(*query.conditions(request.res_type))
        return SearchResult(int(session.execute(total_query).scalar() or 0), [], [], False)
    if direct:
        page: Select[Any] = select(column).order_by(column)
        counted = select(column, func.count().over()).order_by(column)
    else:
        where = query.conditions(request.res_type)
        order = _sort_columns(request, alias)
        page = select(alias.c.pk).where(*where).order_by(*order)
        counted = select(alias.c.pk, func.count().over()).where(*where).order_by(*order)
    total: int | None = None
    if wants_total:
        # The total comes with the page (one pass over the matches instead of two).
        rows = session.execute(counted.limit(request.count).offset(request.offset)).all()
        matches = [row[0] for row in rows]
        if rows:
            total = int(rows[0][1])
        elif request.offset == 0:
            total = 0
        else:  # a page past the end carries no count
            source = column.table if direct else alias
            total_query = select(func.count()).select_from(source)
            if not direct:
                total_query = total_query.where(*query.conditions(request.res_type))
            total = int(session.execute(total_query).scalar() or 0)
    else:
        matches = list(session.execute(page.limit(request.count).offset(request.offset)).scalars())
    includes, truncated = _includes(session, request, matches)
    return SearchResult(total, matches, includes, truncated)


def _includes(session: Session, request: SearchRequest, matches: list[int]) -> tuple[list[int], bool]:
    if not matches or not (request.includes or request.revincludes):
        return [], False
    ref = TABLES["reference"]
    found: list[int] = []
    seen = set(matches)
    truncated = False
    for _source, name, target in request.includes:
        targets = select(ref.c.target_type, ref.c.target_id).where(ref.c.res_pk.in_(matches), ref.c.param == name,
                                                                   ref.c.target_id.is_not(None))
        if target:
            targets = targets.where(ref.c.target_type == target)
        pairs = targets.subquery()
        query = select(RESOURCE.c.pk).join(pairs, and_(RESOURCE.c.res_type == pairs.c.target_type,
                                                       RESOURCE.c.res_id == pairs.c.target_id)) \
            .where(RESOURCE.c.deleted.is_(False)).distinct().limit(MAX_INCLUDES + 1)
        truncated |= _add(found, seen, session.execute(query).scalars())
    if request.revincludes:
        ids = list(session.execute(select(RESOURCE.c.res_id).where(RESOURCE.c.pk.in_(matches))).scalars())
        for source, name, target in request.revincludes:
            if target and target != request.res_type:
                continue
            query = select(ref.c.res_pk).where(ref.c.res_type == source, ref.c.param == name,
                                               ref.c.target_type == request.res_type, ref.c.target_id.in_(ids)) \
                .distinct().limit(MAX_INCLUDES + 1)
            truncated |= _add(found, seen, session.execute(query).scalars())
    if len(found) > MAX_INCLUDES:
        return found[:MAX_INCLUDES], True
    return found, truncated


def _add(found: list[int], seen: set[int], pks: Any) -> bool:
    count = 0
    for pk in pks:
        count += 1
        if pk not in seen:
            seen.add(pk)
            found.append(pk)
    return count > MAX_INCLUDES


# -- the Bundle ----------------------------------------------------------------------------------------------

def subset(resource: dict[str, Any], elements: list[str]) -> dict[str, Any]:
    kept = {key: value for key, value in resource.items()
            if key in ("resourceType", "id", "meta") or key in elements}
    meta = dict(kept.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    kept["meta"] = meta
    return kept


def page_link(base: str, request: SearchRequest, offset: int) -> str:
    query = [*request.used, ("_offset", str(offset))] if offset else list(request.used)
    text = urlencode(query)
    return f"{base}/{request.res_type}" + (f"?{text}" if text else "")


def bundle(base: str, request: SearchRequest, result: SearchResult, resources: dict[int, Any],
           timestamp: str) -> dict[str, Any]:
    links = [{"relation": "self", "url": page_link(base, request, request.offset)}]
    if not request.summary_count and request.count:
        links.append({"relation": "first", "url": page_link(base, request, 0)})
        if request.offset > 0:
            previous = max(0, request.offset - request.count)
            links.append({"relation": "previous", "url": page_link(base, request, previous)})
        more = (result.total is not None and request.offset + request.count < result.total) or \
            (result.total is None and len(result.matches) == request.count)
        if more:
            links.append({"relation": "next", "url": page_link(base, request, request.offset + request.count)})
        if result.total is not None and result.total > 0:
            last = ((result.total - 1) // request.count) * request.count
            links.append({"relation": "last", "url": page_link(base, request, last)})
    document: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "timestamp": timestamp}
    if result.total is not None:
        document["total"] = result.total
    document["link"] = links
    entries = []
    for pk in result.matches:
        stored = resources[pk]
        resource = subset(stored.resource, request.elements) if request.elements else stored.resource
        entries.append({"fullUrl": f"{base}/{stored.res_type}/{stored.res_id}", "resource": resource,
                        "search": {"mode": "match"}})
    for pk in result.includes:
        stored = resources[pk]
        entries.append({"fullUrl": f"{base}/{stored.res_type}/{stored.res_id}", "resource": stored.resource,
                        "search": {"mode": "include"}})
    issues = []
    if request.ignored:
        issues.append({"severity": "warning", "code": "not-supported",
                       "diagnostics": "unknown search parameters ignored: " + ", ".join(request.ignored)})
    if result.truncated:
        issues.append({"severity": "warning", "code": "too-costly",
                       "diagnostics": f"_include/_revinclude results truncated at {MAX_INCLUDES} resources"})
    if issues:
        entries.append({"resource": {"resourceType": "OperationOutcome", "issue": issues},
                        "search": {"mode": "outcome"}})
    if entries:
        document["entry"] = entries
    return document

