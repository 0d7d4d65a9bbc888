"""HL7 v2 acknowledgements (original mode): MSA AA / AE / AR, with an ERR segment saying what went wrong."""

from __future__ import annotations

import datetime as dt
import itertools
import os
from dataclasses import dataclass

from gateway.ehr.hl7v2 import Encoding, Message, SegmentBuilder, build_message

DEFAULT_VERSION = "2.5.1"
# HL7 table 0357, message error condition codes.
ERROR_TEXT = {
    "0": "Message accepted", "100": "Segment sequence error", "101": "Required field missing",
    "102": "Data type error", "103": "Table value not found", "200": "Unsupported message type",
    "201": "Unsupported event code", "202": "Unsupported processing id", "203": "Unsupported version id",
    "204": "Unknown key identifier", "205": "Duplicate key identifier", "206": "Application record locked",
    "207": "Application internal error",
}

_counter = itertools.count(1)


@dataclass(frozen=True)
class ErrorDetail:
    code: str             # table 0357
    message: str          # for a person reading the sender's log
    segment: str = ""
    sequence: int = 1
    field_number: int | None = None
    component: int | None = None


def _control_id() -> str:
    # Unique per process and time; the ACK's own control id only has to differ from the others we send.
    return f"GW{dt.datetime.now(dt.UTC):%Y%m%d%H%M%S}{os.getpid() % 10000:04d}{next(_counter) % 100000:05d}"


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def build_ack(original: Message | None, code: str, text: str = "", error: ErrorDetail | None = None,
              application: str = "GATEWAY", facility: str = "") -> str:
    """The ACK for ``original`` (None when it could not be read at all: an AR with what we know)."""
    encoding = original.encoding if original is not None else Encoding()
    msh = original.msh if original is not None else None
    version = (original.version if original is not None else "") or DEFAULT_VERSION
    header = SegmentBuilder("MSH", encoding)
    header.set(3, msh.get(5) if msh is not None and msh.get(5) else application)
    header.set(4, msh.get(6) if msh is not None and msh.get(6) else facility)
    if msh is not None:
        header.set_raw(5, msh.raw_field(3)).set_raw(6, msh.raw_field(4))
    header.set(7, dt.datetime.now().astimezone().strftime("%Y%m%d%H%M%S%z"))
    event = original.trigger_event if original is not None else ""
    header.set(9, ["ACK", event, "ACK"] if event else ["ACK"])
    header.set(10, _control_id())
    header.set(11, (msh.get(11) if msh is not None else "") or "P")
    header.set(12, version)
    if msh is not None and msh.raw_field(18):
        header.set_raw(18, msh.raw_field(18))
    msa = SegmentBuilder("MSA", encoding).set(1, code).set(2, original.control_id if original is not None else "")
    if text:
        msa.set(3, text[:80])  # MSA-3 is 80 characters long; ERR carries the whole message
    segments = [header, msa]
    if error is not None:
        segments.append(_err(encoding, version, error))
    return build_message(segments)


def _err(encoding: Encoding, version: str, error: ErrorDetail) -> SegmentBuilder:
    err = SegmentBuilder("ERR", encoding)
    condition = [error.code, ERROR_TEXT.get(error.code, ""), "HL70357"]
    location = [error.segment, str(error.sequence) if error.segment else "",
                str(error.field_number) if error.field_number is not None else ""]
    if _version_tuple(version) >= (2, 5):
        if error.segment:
            err.set(2, location + (["", str(error.component)] if error.component is not None else []))
        err.set(3, condition)
        err.set(4, "E")
        err.set(8, error.message)
        return err
    # v2.3/v2.4: ERR-1 (ELD) is segment ^ sequence ^ field ^ error code (a CE, written as subcomponents); with
    # no field for free text, the CE's text carries the message, as receivers of these versions expect.
    err.set(1, [*location, [error.code, error.message, "HL70357"]])
    return err
