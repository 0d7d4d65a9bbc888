"""QIDO-RS (PS3.18 10.6): searching studies, series and instances."""

from __future__ import annotations

from flask import Blueprint, Response, request

from gateway.dicom.levels import Level
from gateway.services.query import InvalidQuery, parse_query
from gateway.web.dicomweb.common import base_url, checked_uids, json_response, node, require_json_acceptable
from gateway.web.problems import Problem


def _query_pairs() -> list[tuple[str, str]]:
    # Values arrive fully percent-decoded (and '+' as space), so a wildcard that a client such as requests
    # or dicomweb-client sent as '%2A' is a '*' again before the matcher sees it.
    return list(request.args.items(multi=True))


def _search(level: Level, study_uid: str | None = None, series_uid: str | None = None) -> Response:
    checked_uids(study=study_uid, series=series_uid)
    media_type = require_json_acceptable()
    settings = node().settings
    try:
        query = parse_query(level, _query_pairs(), max_results=settings.qido_max_results)
    except InvalidQuery as exc:
        raise Problem(400, str(exc)) from exc
    result = node().query.search_json(query, base_url=base_url(), study_uid=study_uid, series_uid=series_uid)
    response = json_response(result.text, media_type)
    warnings = list(result.warnings)
    if result.truncated:
        warnings.append("There are additional results that match the query.")
    for text in warnings:
        response.headers.add("Warning", f'299 gateway "{text}"')
    return response


def search_studies() -> Response:
    return _search("study")


def search_series(study_uid: str | None = None) -> Response:
    return _search("series", study_uid)


def search_instances(study_uid: str | None = None, series_uid: str | None = None) -> Response:
    return _search("instance", study_uid, series_uid)


def register(blueprint: Blueprint) -> None:
    blueprint.add_url_rule("/studies", "search_studies", search_studies, methods=["GET"])
    blueprint.add_url_rule("/series", "search_all_series", search_series, methods=["GET"])
    blueprint.add_url_rule("/instances", "search_all_instances", search_instances, methods=["GET"])
    blueprint.add_url_rule("/studies/<study_uid>/series", "search_study_series", search_series, methods=["GET"])
    blueprint.add_url_rule("/studies/<study_uid>/instances", "search_study_instances", search_instances,
                           methods=["GET"])
    blueprint.add_url_rule("/studies/<study_uid>/series/<series_uid>/instances", "search_series_instances",
                           search_instances, methods=["GET"])
