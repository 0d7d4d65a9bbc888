"""Audit lines of the DIMSE face: one structured line per association and per query or retrieve.

Lines go to the ``gateway.audit`` logger as ``event=... key=value ...``, values quoted when they hold spaces,
quotes or '=' so that a log shipper can split them without knowing DICOM.
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
    """Log one audit line; fields that are None are left out."""
    if not audit_log.isEnabledFor(logging.INFO):
        return
    parts = [f"event={event}"] + [f"{key}={_quote(value)}" for key, value in fields.items() if value is not None]
    audit_log.info(" ".join(parts))
