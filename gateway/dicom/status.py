"""Why an instance was not stored: DIMSE/DICOMweb failure reasons (PS3.4 Annex B, PS3.7 Annex C)."""

from __future__ import annotations

PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
MISSING_ATTRIBUTE = 0x0120
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
STUDY_UID_MISMATCH = 0xC409


class InstanceRejected(Exception):
    def __init__(self, reason: int, message: str, conflict: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.conflict = conflict
