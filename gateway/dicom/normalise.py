"""Normal forms of attribute values, shared by the index (at ingest) and the matcher (at query time).

Both sides must normalise identically, so the functions live in one place.
"""

from __future__ import annotations

import re
import unicodedata

_DIGITS = re.compile(r"\D")


def normalise_date(value: str, upper: bool = False) -> str:
    """DA → YYYYMMDD; also accepts the ACR-NEMA form YYYY.MM.DD. Returns '' for an empty or bad value.

    ``upper`` is accepted for symmetry with normalise_time: a full date needs no filling.
    """
    del upper
    value = (value or "").strip()
    digits = _DIGITS.sub("", value)
    if len(digits) != 8:
        return ""
    return digits


def normalise_time(value: str, upper: bool = False) -> str:
    """TM → HHMMSS.FFFFFF with missing trailing parts filled.

    An upper range bound given as 1200 means up to 12:00:59.999999, so ``upper`` fills with the largest
    value of the missing precision instead of zeros.
    """
    value = (value or "").strip().replace(":", "")
    if not value:
        return ""
    whole, _, fraction = value.partition(".")
    if not whole.isdigit() or len(whole) not in (2, 4, 6) or (fraction and not fraction.isdigit()):
        return ""
    filler = "595959"[len(whole):] if upper else "000000"[len(whole):]
    whole = whole + filler
    fraction = (fraction + ("999999" if upper else "000000"))[:6]
    return f"{whole}.{fraction}"


def strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def person_name_match_key(name: str) -> str:
    """Case-insensitive form of a PN value for exact and wildcard matching."""
    return (name or "").strip().upper()


def person_name_fuzzy_key(name: str) -> str:
    """Words of a PN value, lower case, accents removed, space-delimited with a leading and trailing space.

    Fuzzy matching then finds a name by any of its components' beginnings (``smi`` finds ``Smith^John``,
    ``jose`` finds ``José``) with a single indexed-friendly LIKE per query word.
    """
    text = strip_accents(name or "").lower()
    words = [w for w in re.split(r"[\^=\s,]+", text) if w]
    return " " + " ".join(words) + " " if words else ""


def fuzzy_query_words(value: str) -> list[str]:
    text = strip_accents(value).lower().replace("*", " ").replace("?", " ")
    return [w for w in re.split(r"[\^=\s,]+", text) if w]
