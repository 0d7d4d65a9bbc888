"""UID validation (PS3.5 9.1). Storage paths and URLs are built only from UIDs that pass it."""

from __future__ import annotations

import re

# Components are digit strings separated by dots. The standard forbids leading zeros in a component, but
# real archives contain such UIDs; accepting them is harmless because the character set alone already
# makes a UID safe to use as a path segment, and refusing them would lose clinical images.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_UID_LENGTH = 64


class InvalidUID(ValueError):
    pass


def is_valid_uid(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_UID_LENGTH and bool(_UID.match(value))


def validate_uid(value: object, what: str = "UID") -> str:
    """Return the UID with DICOM padding removed, or raise InvalidUID naming the problem."""
    if not isinstance(value, str):
        raise InvalidUID(f"{what} is missing")
    uid = value.strip("\x00 ")
    if not uid:
        raise InvalidUID(f"{what} is empty")
    if len(uid) > MAX_UID_LENGTH:
        raise InvalidUID(f"{what} {uid[:80]!r} is longer than {MAX_UID_LENGTH} characters")
    if not _UID.match(uid):
        raise InvalidUID(f"{what} {uid[:80]!r} is not a valid UID (digits and single dots only)")
    return uid
