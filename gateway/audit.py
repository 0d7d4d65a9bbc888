"""Audit lines of every protocol face (DIMSE associations and queries, upstream PACS pulls, HL7 messages, ...).

Lines go to the ``gateway.audit`` logger as ``event=... key=value ...``, values quoted when they hold spaces,
quotes or '=' so that a log shipper can split them without knowing DICOM or HL7.
"""

from __future__ import annotations

import json
import logging

audit_log = logging.getLogger("gateway.audit")


def _quote(value: object) -> str:
    text = str(value)
    if text and text.isprintable() and not any(c in text for c in ' "=\\'):
        return text
    return json.dumps(text, ensure_ascii=False)


def audit(event: str, **fields: object) -> None:
    """Log one audit line; fields that are None or empty are left out."""
    if not audit_log.isEnabledFor(logging.INFO):
        return
    parts = [f"event={event}"] + [f"{key}={_quote(value)}" for key, value in fields.items()
                                  if value is not None and value != ""]
    audit_log.info(" ".join(parts))
