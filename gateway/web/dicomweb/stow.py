"""STOW-RS (PS3.18 10.5): storing instances from multipart/related bodies of application/dicom parts."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from gateway.dicom.json_model import dumps
from gateway.dicom.status import CANNOT_UNDERSTAND
from gateway.services.ingest import StoreResult
from gateway.store.files import FinishedUpload, SpooledUpload
from gateway.web.accept import parse_media_type
from gateway.web.dicomweb.common import base_url, checked_uids, node
from gateway.web.multipart import MultipartError, read_multipart
from gateway.web.problems import Problem

# A private attribute carries the human-readable reason next to each FailureReason code, because the
# standard FailedSOPSequence item has no text field and "0xC000" alone does not help anyone fix a file.
PRIVATE_CREATOR_TAG = "00090010"
PRIVATE_CREATOR = "EUCAIM GATEWAY"
FAILURE_DETAIL_TAG = "00091001"


# Uploads are indexed in groups so that durability costs one file-system sync and one commit per group.
GROUP_INSTANCES = 64
GROUP_BYTES = 256 * 1024 * 1024


class _StoreBatcher:
    """Collects finished parts and stores them in groups, keeping results in the order of the parts."""

    def __init__(self, expected_study: str | None) -> None:
        self.expected_study = expected_study
        self.results: list[StoreResult | None] = []
        self.pending: list[tuple[int, FinishedUpload]] = []
        self.pending_bytes = 0

    def add_upload(self, upload: SpooledUpload) -> None:
        finished = upload.finished()
        self.results.append(None)
        self.pending.append((len(self.results) - 1, finished))
        self.pending_bytes += upload.size
        if len(self.pending) >= GROUP_INSTANCES or self.pending_bytes >= GROUP_BYTES:
            self.flush()

    def add_failure(self, result: StoreResult) -> None:
        self.results.append(result)

    def flush(self) -> None:
        if not self.pending:
            return
        stored = node().ingest.store_uploads([finished for _, finished in self.pending], self.expected_study)
        for (slot, _), result in zip(self.pending, stored, strict=True):
            self.results[slot] = result
        self.pending, self.pending_bytes = [], 0

    def discard_pending(self) -> None:
        for _, finished in self.pending:
            finished.path.unlink(missing_ok=True)


class _UploadSink:
    """Writes one application/dicom part to a temporary file; refuses parts of other media types."""

    def __init__(self, headers: dict[str, str], batcher: _StoreBatcher) -> None:
        self.batcher = batcher
        content_type = parse_media_type(headers.get("content-type", "application/dicom"))
        self.refusal: str | None = None
        if content_type.type != "application/dicom":
            self.refusal = (f"part media type {content_type.type!r} is not supported; "
                            "each part must be application/dicom")
        self.upload: SpooledUpload | None = None if self.refusal else node().files.new_upload()

    def write(self, data: bytes | memoryview) -> None:
        if self.upload is not None:
            self.upload.write(data)

    def complete(self) -> None:
        if self.upload is None:
            self.batcher.add_failure(StoreResult("failed", failure_reason=CANNOT_UNDERSTAND,
                                                 message=self.refusal or ""))
        else:
            self.batcher.add_upload(self.upload)

    def abort(self) -> None:
        if self.upload is not None:
            self.upload.discard()


def _uid_element(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _response_dataset(results: list[StoreResult], root: str, study_uid: str | None) -> dict[str, Any]:
    referenced, failed = [], []
    for result in results:
        item = {"00081150": _uid_element(result.sop_class_uid), "00081155": _uid_element(result.sop_instance_uid)}
        if result.ok:
            item["00081190"] = {"vr": "UR", "Value": [
                f"{root}/studies/{result.study_instance_uid}/series/{result.series_instance_uid}"
                f"/instances/{result.sop_instance_uid}"]}
            referenced.append(item)
        else:
            item["00081197"] = {"vr": "US", "Value": [result.failure_reason or CANNOT_UNDERSTAND]}
            item[PRIVATE_CREATOR_TAG] = {"vr": "LO", "Value": [PRIVATE_CREATOR]}
            item[FAILURE_DETAIL_TAG] = {"vr": "LT", "Value": [result.message[:10000]]}
            failed.append(dict(sorted(item.items())))
    dataset: dict[str, Any] = {}
    studies = {r.study_instance_uid for r in results if r.ok}
    if study_uid or len(studies) == 1:
        dataset["00081190"] = {"vr": "UR", "Value": [f"{root}/studies/{study_uid or studies.pop()}"]}
    if failed:
        dataset["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        dataset["00081199"] = {"vr": "SQ", "Value": referenced}
    return dataset


def store(study_uid: str | None = None) -> Response:
    checked_uids(study=study_uid)
    content_type = parse_media_type(request.headers.get("Content-Type", ""))
    if content_type.type != "multipart/related":
        raise Problem(415, f"STOW-RS takes multipart/related; type=\"application/dicom\", not "
                           f"{content_type.type or 'a body without Content-Type'}")
    part_type = content_type.multipart_type or "application/dicom"
    if part_type.lower() != "application/dicom":
        raise Problem(415, f"multipart/related of {part_type!r} is not supported; use type=\"application/dicom\"")
    limit = node().settings.max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        raise Problem(413, f"the request body ({request.content_length} bytes) is larger than the configured "
                           f"limit of {limit} bytes")
    batcher = _StoreBatcher(study_uid)
    try:
        read_multipart(request.stream, content_type.params.get("boundary", ""),
                       lambda headers: _UploadSink(headers, batcher))
    except MultipartError as exc:
        if not batcher.results:
            raise Problem(400, f"malformed multipart body: {exc}") from exc
        batcher.add_failure(StoreResult("failed", failure_reason=CANNOT_UNDERSTAND,
                                        message=f"the rest of the body was not stored: {exc}"))
    except BaseException:
        batcher.discard_pending()
        raise
    batcher.flush()
    results = [r for r in batcher.results if r is not None]
    if not results:
        raise Problem(400, "the multipart body contains no parts")
    stored = sum(1 for r in results if r.ok)
    status = 200 if stored == len(results) else (202 if stored else 409)
    body = dumps(_response_dataset(results, base_url(), study_uid))
    return Response(body, status=status, mimetype="application/dicom+json")


def register(blueprint: Blueprint) -> None:
    blueprint.add_url_rule("/studies", "store", store, methods=["POST"])
    blueprint.add_url_rule("/studies/<study_uid>", "store_in_study", store, methods=["POST"])
