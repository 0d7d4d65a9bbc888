"""The EHR integration service: HL7 v2 messages, CSV extracts and FHIR Bundles into the node's FHIR store.

Everything goes through the FHIR service (``node.extensions["fhir"]``) as transactions, so one message or one
batch of rows is stored whole or not at all, and an acknowledgement or a report is given only after the
transaction committed.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway.audit import audit
from gateway.ehr import hl7v2
from gateway.ehr.ack import ErrorDetail, build_ack
from gateway.ehr.csv_mapping import RowError, RowMapper, load_mapping
from gateway.ehr.hl7_mapping import MappedMessage, UnsupportedMessage, map_message
from gateway.ehr.resources import EhrConfig, MappingError, TransactionBuilder, search_token
from gateway.ehr.terminology import Coding, MappingTableError, Terminology, coverage, load_terminology

if TYPE_CHECKING:
    from gateway.node import Node

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")
PROCESSING_IDS = ("P", "T", "D")
DEFAULT_BATCH_ROWS = 200
MAX_REPORTED_ROWS = 500


class FhirService(Protocol):
    """What this plug-in uses of the FHIR server's service (gateway.fhir)."""

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]: ...

    def search(self, resource_type: str, params: list[tuple[str, str]]) -> dict[str, Any]: ...

    def merge_patients(self, source_id: str, target_id: str) -> Any: ...

    def iter_resources(self, resource_type: str) -> Iterator[dict[str, Any]]: ...


class EhrUnavailable(RuntimeError):
    """The FHIR store this service writes to is not part of this node."""


class _NeverRaised(Exception):
    pass


def fhir_error_type() -> type[Exception]:
    try:
        from gateway.fhir.errors import FhirError
    except ImportError:
        return _NeverRaised
    return FhirError


def fhir_error_text(exc: BaseException) -> str:
    """The diagnostics of a FhirError's OperationOutcome (or the exception's text)."""
    outcome = getattr(exc, "outcome", None)
    if isinstance(outcome, dict):
        texts = [issue.get("diagnostics") or (issue.get("details") or {}).get("text") or issue.get("code", "")
                 for issue in outcome.get("issue", []) if isinstance(issue, dict)]
        if any(texts):
            return "; ".join(t for t in texts if t)
    return str(exc) or type(exc).__name__


@dataclass
class MessageOutcome:
    ack_code: str                    # AA | AE | AR
    text: str
    ack: str                         # the ACK message in ER7
    charset: str = "utf-8"
    message: hl7v2.Message | None = None
    error: ErrorDetail | None = None
    counts: dict[str, int] = field(default_factory=dict)
    unmapped: list[Coding] = field(default_factory=list)

    @property
    def message_type(self) -> str:
        if self.message is None:
            return ""
        return f"{self.message.message_code}^{self.message.trigger_event}"


def default_mappings_dir() -> Path:
    # The repository's mappings/ beside the package (a source checkout or an editable install).
    return Path(__file__).resolve().parents[2] / "mappings"


class EhrService:
    def __init__(self, node: Node, config: EhrConfig, mappings_dir: Path, batch_rows: int = DEFAULT_BATCH_ROWS,
                 allowed_facilities: Iterable[str] | None = None) -> None:
        self.node = node
        self.config = config
        self.mappings_dir = mappings_dir
        self.batch_rows = batch_rows
        self.allowed_facilities = {f.upper() for f in allowed_facilities} if allowed_facilities else None
        self._terminology: Terminology | None = None
        # One message at a time: two messages for a new patient on two connections must not both create it.
        self._lock = threading.Lock()

    @property
    def terminology(self) -> Terminology:
        if self._terminology is None:
            self._terminology = load_terminology(self.mappings_dir)
        return self._terminology

    def reload(self) -> Terminology:
        self._terminology = None
        return self.terminology

    @property
    def fhir(self) -> FhirService:
        service = self.node.extensions.get("fhir")
        if service is None:
            raise EhrUnavailable("the FHIR store (gateway.fhir plug-in) is not available on this node")
        return service  # type: ignore[no-any-return]

    # --- HL7 v2 ---

    def handle_hl7(self, data: bytes, peer: str = "") -> MessageOutcome:
        """Process one message (the content of an MLLP frame) and give the acknowledgement to send back."""
        try:
            message = hl7v2.parse(data, self.config.default_charset)
        except hl7v2.HL7ParseError as exc:
            outcome = self._reject(None, "AR", "100" if exc.field_number is None else "102", str(exc),
                                   exc.segment, exc.field_number)
            self._audit(outcome, peer)
            return outcome
        outcome = self.process_message(message)
        self._audit(outcome, peer)
        return outcome

    def _reject(self, message: hl7v2.Message | None, ack_code: str, error_code: str, text: str, segment: str = "",
                field_number: int | None = None, sequence: int = 1, component: int | None = None) -> MessageOutcome:
        error = ErrorDetail(error_code, text, segment, sequence, field_number, component)
        return MessageOutcome(ack_code, text, build_ack(message, ack_code, text, error),
                              message.charset if message is not None else "utf-8", message, error)

    def _audit(self, outcome: MessageOutcome, peer: str) -> None:
        message = outcome.message
        audit("hl7-message", peer=peer, sending_application=message.sending_application if message else None,
              sending_facility=message.sending_facility if message else None, message_type=outcome.message_type,
              control_id=message.control_id if message else None, outcome=outcome.ack_code,
              detail=None if outcome.ack_code == "AA" else outcome.text,
              stored=",".join(f"{k}:{v}" for k, v in sorted(outcome.counts.items())) or None)

    def process_message(self, message: hl7v2.Message) -> MessageOutcome:
        version = message.version
        if version not in SUPPORTED_VERSIONS:
            return self._reject(message, "AR", "203", f"HL7 version {version!r} is not supported (supported: "
                                f"{', '.join(SUPPORTED_VERSIONS)})", "MSH", 12)
        processing = message.msh.get(11).upper()
        if processing not in PROCESSING_IDS:
            return self._reject(message, "AR", "202", f"processing ID {processing!r} is not one of P, T, D", "MSH",
                                11)
        if self.allowed_facilities is not None and message.sending_facility.upper() not in self.allowed_facilities:
            return self._reject(message, "AR", "207", f"sending facility {message.sending_facility!r} is not allowed "
                                "to send to this gateway", "MSH", 4)
        try:
            mapped = map_message(message, self.terminology, self.config)
        except UnsupportedMessage as exc:
            return self._reject(message, "AR", exc.code, str(exc), "MSH", 9)
        except MappingError as exc:
            return self._reject(message, "AE", exc.code, str(exc), exc.segment, exc.field_number, exc.sequence,
                                exc.component)
        except MappingTableError as exc:
            log.error("mapping tables: %s", exc)
            return self._reject(message, "AE", "207", f"the gateway's mapping tables are broken: {exc}")
        try:
            with self._lock:
                self._store(mapped)
        except MappingError as exc:
            return self._reject(message, "AE", exc.code, str(exc), exc.segment, exc.field_number, exc.sequence)
        except EhrUnavailable as exc:
            return self._reject(message, "AE", "207", str(exc))
        except fhir_error_type() as exc:
            return self._reject(message, "AE", "207", f"the FHIR store refused the message: {fhir_error_text(exc)}")
        except Exception as exc:  # the sender must get an answer whatever broke; the log has the traceback
            log.exception("HL7 message %s could not be stored", message.control_id)
            return self._reject(message, "AE", "207", f"internal error: {type(exc).__name__}: {exc}")
        text = ", ".join(f"{count} {kind}" for kind, count in sorted(mapped.counts.items()))
        if mapped.merges:
            text = ", ".join(filter(None, [text, f"{len(mapped.merges)} merge(s)"]))
        return MessageOutcome("AA", text, build_ack(message, "AA", ""), message.charset, message, None,
                              mapped.counts, mapped.unmapped)

    def _patient_by_mrn(self, system: str, mrn: str) -> dict[str, Any] | None:
        result = self.fhir.search("Patient", [("identifier", search_token(system, mrn))])
        matches = [entry["resource"] for entry in result.get("entry", []) if
                   entry.get("resource", {}).get("resourceType") == "Patient"
                   and (entry.get("search") or {}).get("mode", "match") == "match"]
        if len(matches) > 1:
            raise MappingError(f"{len(matches)} patients have MRN {mrn}", "PID", code="205")
        return matches[0] if matches else None

    def _store(self, mapped: MappedMessage) -> None:
        sources = {}
        for source_key, _ in mapped.merges:
            # Checked before anything is written, so a merge of an unknown patient stores nothing.
            source = self._patient_by_mrn(*source_key)
            if source is None:
                raise MappingError(f"MRG-1: there is no patient with MRN {source_key[1]} to merge", "MRG", 1, 1,
                                   code="204")
            sources[source_key] = source
        if mapped.bundle is not None:
            self.fhir.transaction(mapped.bundle)
        for source_key, target_key in mapped.merges:
            target = self._patient_by_mrn(*target_key)
            if target is None:  # the transaction above has just written it
                raise RuntimeError(f"patient {target_key[1]} is missing right after it was stored")
            source = sources[source_key]
            already = any(link.get("type") == "replaced-by" and
                          (link.get("other") or {}).get("reference") == f"Patient/{target['id']}"
                          for link in source.get("link", []))
            if not already:
                self.fhir.merge_patients(source["id"], target["id"])

    def import_hl7_file(self, path: Path, on_message: Callable[[MessageOutcome], None] | None = None
                        ) -> dict[str, Any]:
        """Each message of a file, one after another, as if it came over MLLP; a report of the outcomes."""
        data = path.read_bytes()
        text, _ = hl7v2.decode(data, self.config.default_charset)
        counts: Counter[str] = Counter()
        failures = []
        resources: Counter[str] = Counter()
        for number, raw in enumerate(hl7v2.split_batch(text), start=1):
            outcome = self.handle_hl7(raw.encode("utf-8"), peer=f"file:{path.name}")
            counts[outcome.ack_code] += 1
            resources.update(outcome.counts)
            if outcome.ack_code != "AA":
                failures.append({"message": number, "control_id": outcome.message.control_id if outcome.message
                                 else "", "ack": outcome.ack_code, "reason": outcome.text})
            if on_message is not None:
                on_message(outcome)
        return {"file": str(path), "messages": sum(counts.values()), "accepted": counts["AA"],
                "errors": counts["AE"], "rejected": counts["AR"], "failures": failures, "resources": dict(resources)}

    # --- FHIR Bundles ---

    def import_bundle(self, bundle: dict[str, Any]) -> dict[str, Any]:
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
            raise MappingError("the file is not a FHIR transaction Bundle (resourceType Bundle, type transaction)")
        with self._lock:
            return self.fhir.transaction(bundle)

    # --- CSV ---

    def csv_rows(self, path: Path, mapping_name: str) -> tuple[RowMapper, int]:
        mapping = load_mapping(self.mappings_dir, mapping_name, self.terminology)
        mapper = RowMapper(mapping, self.terminology, self.config)
        with path.open(encoding=mapping.encoding, newline="") as handle:
            total = sum(1 for _ in mapper.open(handle))
        return mapper, total

    def import_csv(self, path: Path, mapping_name: str, start_row: int = 0,
                   on_batch: Callable[[int], None] | None = None,
                   check: Callable[[], None] | None = None) -> dict[str, Any]:
        """Rows in transactions of ``batch_rows``; a batch the store refuses is retried row by row, so that one
        bad row costs only itself. ``start_row`` rows are skipped (a resumed job did them)."""
        mapper, total = self.csv_rows(path, mapping_name)
        report = _CsvReport(path, mapping_name, total)
        batch: list[tuple[int, TransactionBuilder]] = []
        processed = 0  # rows read since the last progress report, stored or not

        def flush() -> None:
            nonlocal processed
            if check is not None:
                check()  # before storing: a cancelled or interrupted import redoes this batch when resumed
            self._store_rows(batch, report)
            batch.clear()
            if on_batch is not None and processed:
                on_batch(processed)
            processed = 0

        with path.open(encoding=mapper.mapping.encoding, newline="") as handle:
            for index, (line, row) in enumerate(mapper.open(handle)):
                if index < start_row:
                    continue
                processed += 1
                try:
                    mapped = mapper.map_row(line, row)
                except (RowError, MappingError) as exc:
                    report.reject(line, str(exc))
                else:
                    report.unmapped.update(mapped.unmapped)
                    batch.append((line, mapped.builder))
                if processed >= self.batch_rows:
                    flush()
            flush()
        return report.result()

    def _store_rows(self, batch: list[tuple[int, TransactionBuilder]], report: _CsvReport) -> None:
        rows = [(line, builder) for line, builder in batch if len(builder)]
        if not rows:
            return
        combined = TransactionBuilder()
        for _, builder in rows:
            combined.entries.update(builder.entries)
        fhir_error = fhir_error_type()
        with self._lock:
            try:
                self.fhir.transaction(combined.bundle())
            except fhir_error:
                pass
            else:
                report.stored(rows)
                return
            for line, builder in rows:
                try:
                    self.fhir.transaction(builder.bundle())
                except fhir_error as exc:
                    report.reject(line, f"the FHIR store refused the row: {fhir_error_text(exc)}")
                else:
                    report.stored([(line, builder)])

    # --- coverage ---

    def coverage(self) -> dict[str, Any]:
        fhir = self.fhir
        resources = (resource for kind in ("Condition", "Observation", "Procedure", "DiagnosticReport")
                     for resource in fhir.iter_resources(kind))
        return coverage(self.terminology, resources)


@dataclass
class _CsvReport:
    path: Path
    mapping: str
    total: int
    rows_stored: int = 0
    rejected_count: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    unmapped: Counter[Coding] = field(default_factory=Counter)
    resources: Counter[str] = field(default_factory=Counter)

    def reject(self, line: int, reason: str) -> None:
        self.rejected_count += 1
        if len(self.rejected) < MAX_REPORTED_ROWS:
            self.rejected.append({"line": line, "reason": reason})

    def stored(self, rows: list[tuple[int, TransactionBuilder]]) -> None:
        self.rows_stored += len(rows)
        for _, builder in rows:
            self.resources.update(builder.written_types())

    def result(self) -> dict[str, Any]:
        unmapped = [{"system": coding.system, "code": coding.code, "display": coding.display, "rows": count}
                    for coding, count in sorted(self.unmapped.items(), key=lambda item: (-item[1], item[0].code))]
        return {"file": str(self.path), "mapping": self.mapping, "rows": self.total, "stored": self.rows_stored,
                "rejected": self.rejected_count, "rejected_rows": self.rejected,
                "rejected_rows_truncated": self.rejected_count > len(self.rejected),
                "resources": dict(self.resources), "unmapped_codes": unmapped}
