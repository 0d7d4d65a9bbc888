"""WADO-RS (PS3.18 10.4): instances, metadata, frames, bulk data, rendered images and thumbnails."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from flask import Blueprint, Response, request, stream_with_context
from pydicom.pixels import get_decoder
from pydicom.uid import ExplicitVRLittleEndian

from gateway.services.retrieve import (
    COMPRESSED_MEDIA_TYPES,
    NotAcceptable,
    NotFound,
    StoredInstance,
)
from gateway.web.accept import MediaRange, parse_accept
from gateway.web.dicomweb.common import base_url, checked_uids, node, require_json_acceptable
from gateway.web.multipart import new_boundary, write_multipart
from gateway.web.problems import Problem

RENDERED_TYPES = ("image/jpeg", "image/png", "image/gif")


def _lookup(study: str, series: str | None = None, instance: str | None = None) -> list[StoredInstance]:
    checked_uids(study=study, series=series, instance=instance)
    try:
        return node().retrieve.instances(study, series, instance)
    except NotFound as exc:
        raise Problem(404, str(exc)) from exc


# -- whole instances -------------------------------------------------------------------------------------

def _negotiate_instances(single_allowed: bool) -> tuple[bool, str | None]:
    """(multipart?, transfer syntax or None for 'as stored') from the Accept header."""
    for media_range in parse_accept(request.headers.get("Accept")):
        part_type = (media_range.multipart_type or "application/dicom").lower()
        syntax = media_range.params.get("transfer-syntax")
        syntax = None if syntax in (None, "*") else syntax
        if media_range.type == "multipart/related" and part_type in ("application/dicom", "*/*", "application/*"):
            return True, syntax
        if media_range.type in ("*/*", "application/*"):
            return True, None
        if media_range.type == "application/dicom" and single_allowed:
            return False, syntax
    raise Problem(406, 'instances are available as multipart/related; type="application/dicom" '
                       "(optionally with transfer-syntax=* or 1.2.840.10008.1.2.1)")


def _can_deliver(instance: StoredInstance, syntax: str | None) -> bool:
    if syntax is None or syntax == instance.transfer_syntax_uid:
        return True
    if syntax != ExplicitVRLittleEndian:
        return False
    if not instance.is_encapsulated:
        return True
    try:
        return bool(get_decoder(instance.transfer_syntax_uid).is_available)
    except Exception:  # pydicom has no decoder at all for this syntax
        return False


def _instance_part(instance: StoredInstance, syntax: str | None) -> tuple[dict[str, str], Iterable[bytes]]:
    retrieve = node().retrieve
    if syntax is None or syntax == instance.transfer_syntax_uid:
        headers = {"Content-Type": f"application/dicom; transfer-syntax={instance.transfer_syntax_uid}",
                   "Content-Length": str(instance.file_size)}
        return headers, retrieve.file_chunks(instance)
    data = retrieve.transcode(instance, syntax)
    return ({"Content-Type": f"application/dicom; transfer-syntax={syntax}", "Content-Length": str(len(data))},
            [data])


def _retrieve(study: str, series: str | None = None, instance: str | None = None) -> Response:
    instances = _lookup(study, series, instance)
    multipart, syntax = _negotiate_instances(single_allowed=instance is not None)
    refused = [i for i in instances if not _can_deliver(i, syntax)]
    if refused:
        raise Problem(406, f"instance {refused[0].sop_uid} is stored as {refused[0].transfer_syntax_uid} and "
                           f"cannot be transcoded to {syntax}; ask for transfer-syntax=* to get it as stored")
    if not multipart:
        headers, chunks = _instance_part(instances[0], syntax)
        return Response(stream_with_context(iter(chunks)), headers=headers)
    boundary = new_boundary()
    parts = (_instance_part(i, syntax) for i in instances)
    response = Response(stream_with_context(write_multipart(parts, boundary)))
    response.headers["Content-Type"] = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return response


# -- metadata --------------------------------------------------------------------------------------------

def _metadata(study: str, series: str | None = None, instance: str | None = None) -> Response:
    instances = _lookup(study, series, instance)
    media_type = require_json_acceptable()

    def body() -> Iterator[str]:
        yield "["
        for index, text in enumerate(node().retrieve.metadata_texts(instances, base_url())):
            yield ("," if index else "") + text
        yield "]"

    return Response(stream_with_context(body()), mimetype=media_type)


# -- frames and bulk data --------------------------------------------------------------------------------

def _frame_numbers(text: str) -> list[int]:
    try:
        numbers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise Problem(400, f"frame list {text!r} must be comma-separated frame numbers starting at 1") from exc
    if not numbers or any(n < 1 for n in numbers):
        raise Problem(400, f"frame list {text!r} must contain frame numbers starting at 1")
    return numbers


def _frame_preferences(instance: StoredInstance) -> tuple[bool, bool]:
    """(compressed frames acceptable?, uncompressed octet-stream acceptable?) from the Accept header."""
    stored_type = COMPRESSED_MEDIA_TYPES.get(instance.transfer_syntax_uid)
    compressed = native = False
    for media_range in parse_accept(request.headers.get("Accept")):
        part: MediaRange = MediaRange(media_range.multipart_type.lower()) if (
            media_range.type == "multipart/related" and media_range.multipart_type) else media_range
        syntax = media_range.params.get("transfer-syntax")
        if part.type == "*/*" or syntax == "*":
            return True, True
        if stored_type and part.matches(stored_type) and part.type != "*/*":
            compressed = compressed or syntax in (None, instance.transfer_syntax_uid)
        if part.matches("application/octet-stream"):
            native = True
    return compressed, native


def _frames(study: str, series: str, instance: str, frames: str) -> Response:
    target = _lookup(study, series, instance)[0]
    numbers = _frame_numbers(frames)
    compressed, native = _frame_preferences(target)
    if not compressed and not native:
        raise Problem(406, 'frames are available as multipart/related; type="application/octet-stream" or in '
                           "their stored compressed media type")
    try:
        frame_data = node().retrieve.frames(target, numbers, compressed, native)
    except NotFound as exc:
        raise Problem(404, str(exc)) from exc
    except NotAcceptable as exc:
        raise Problem(406, str(exc)) from exc
    boundary = new_boundary()
    parts = []
    for frame in frame_data:
        content_type = frame.media_type
        if frame.transfer_syntax_uid:
            content_type += f"; transfer-syntax={frame.transfer_syntax_uid}"
        parts.append(({"Content-Type": content_type, "Content-Length": str(len(frame.data))}, [frame.data]))
    first_type = frame_data[0].media_type
    response = Response(write_multipart(parts, boundary))
    response.headers["Content-Type"] = f'multipart/related; type="{first_type}"; boundary={boundary}'
    return response


def _bulkdata(study: str, series: str, instance: str, path: str) -> Response:
    target = _lookup(study, series, instance)[0]
    tokens = [t for t in path.split("/") if t]
    try:
        data, media_type = node().retrieve.bulkdata(target, tokens)
    except NotFound as exc:
        raise Problem(404, str(exc)) from exc
    accepts = parse_accept(request.headers.get("Accept"))
    if any(r.type == "multipart/related" or r.type == "*/*" for r in accepts) or not any(
            r.matches(media_type) for r in accepts):
        boundary = new_boundary()
        response = Response(write_multipart([({"Content-Type": media_type, "Content-Length": str(len(data))},
                                              [data])], boundary))
        response.headers["Content-Type"] = f'multipart/related; type="{media_type}"; boundary={boundary}'
        return response
    return Response(data, mimetype=media_type)


# -- rendered and thumbnails -----------------------------------------------------------------------------

def _rendered_type() -> str:
    for media_range in parse_accept(request.headers.get("Accept")):
        for candidate in RENDERED_TYPES:
            if media_range.matches(candidate):
                return candidate
    raise Problem(406, f"rendered images are available as {', '.join(RENDERED_TYPES)}")


def _render_parameters(default_viewport: tuple[int, int] | None) -> dict[str, object]:
    window = None
    if text := request.args.get("window"):
        pieces = text.split(",")
        try:
            center, width = float(pieces[0]), float(pieces[1])
        except (ValueError, IndexError) as exc:
            raise Problem(400, f"window={text!r} must be center,width[,function]") from exc
        function = pieces[2].upper() if len(pieces) > 2 else "LINEAR"
        if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID") or width <= 0:
            raise Problem(400, f"window={text!r}: width must be positive and the function LINEAR, "
                               "LINEAR_EXACT or SIGMOID")
        window = (center, width, function)
    viewport = default_viewport
    if text := request.args.get("viewport"):
        try:
            width_px, height_px = (int(v) for v in text.split(",")[:2])
        except ValueError as exc:
            raise Problem(400, f"viewport={text!r} must be width,height in pixels") from exc
        if not (0 < width_px <= 8192 and 0 < height_px <= 8192):
            raise Problem(400, f"viewport={text!r} must be between 1 and 8192 pixels on each side")
        viewport = (width_px, height_px)
    quality = 90
    if text := request.args.get("quality"):
        try:
            quality = int(text)
        except ValueError as exc:
            raise Problem(400, f"quality={text!r} must be an integer from 1 to 100") from exc
        if not 1 <= quality <= 100:
            raise Problem(400, f"quality={text!r} must be an integer from 1 to 100")
    return {"window": window, "viewport": viewport, "quality": quality}


def _render(target: StoredInstance, frame: int | None, default_viewport: tuple[int, int] | None) -> Response:
    media_type = _rendered_type()
    parameters = _render_parameters(default_viewport)
    try:
        data = node().retrieve.render(target, frame=frame, media_type=media_type, **parameters)  # type: ignore[arg-type]
    except NotFound as exc:
        raise Problem(404, str(exc)) from exc
    except NotAcceptable as exc:
        raise Problem(406, str(exc)) from exc
    return Response(data, mimetype=media_type)


def _rendered_instance(study: str, series: str, instance: str) -> Response:
    return _render(_lookup(study, series, instance)[0], None, None)


def _rendered_frames(study: str, series: str, instance: str, frames: str) -> Response:
    numbers = _frame_numbers(frames)
    if len(numbers) != 1:
        raise Problem(400, "a rendered frame request takes exactly one frame number")
    return _render(_lookup(study, series, instance)[0], numbers[0], None)


def _rendered_collection(study: str, series: str | None = None) -> Response:
    instances = _lookup(study, series)
    return _render(node().retrieve.representative(instances), None, None)


THUMBNAIL_SIZE = (128, 128)


def _thumbnail(study: str, series: str | None = None, instance: str | None = None) -> Response:
    instances = _lookup(study, series, instance)
    return _render(node().retrieve.representative(instances), None, THUMBNAIL_SIZE)


def _thumbnail_frame(study: str, series: str, instance: str, frames: str) -> Response:
    numbers = _frame_numbers(frames)
    return _render(_lookup(study, series, instance)[0], numbers[0], THUMBNAIL_SIZE)


def register(blueprint: Blueprint) -> None:
    study, series, instance = "/studies/<study>", "/studies/<study>/series/<series>", \
        "/studies/<study>/series/<series>/instances/<instance>"
    rules = [
        (study, "retrieve_study", _retrieve), (series, "retrieve_series", _retrieve),
        (instance, "retrieve_instance", _retrieve),
        (study + "/metadata", "study_metadata", _metadata), (series + "/metadata", "series_metadata", _metadata),
        (instance + "/metadata", "instance_metadata", _metadata),
        (instance + "/frames/<frames>", "frames", _frames),
        (instance + "/bulkdata/<path:path>", "bulkdata", _bulkdata),
        (instance + "/rendered", "rendered_instance", _rendered_instance),
        (instance + "/frames/<frames>/rendered", "rendered_frames", _rendered_frames),
        (series + "/rendered", "rendered_series", _rendered_collection),
        (study + "/rendered", "rendered_study", _rendered_collection),
        (study + "/thumbnail", "study_thumbnail", _thumbnail), (series + "/thumbnail", "series_thumbnail", _thumbnail),
        (instance + "/thumbnail", "instance_thumbnail", _thumbnail),
        (instance + "/frames/<frames>/thumbnail", "frame_thumbnail", _thumbnail_frame),
    ]
    for rule, endpoint, view in rules:
        blueprint.add_url_rule(rule, endpoint, view, methods=["GET"])
