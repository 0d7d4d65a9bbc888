"""Parsing Accept and Content-Type headers the way DICOMweb uses them (PS3.18 8.7)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MediaRange:
    type: str  # e.g. "multipart/related", "application/dicom+json", "*/*"
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    def matches(self, media_type: str) -> bool:
        if self.type in ("*/*", media_type):
            return True
        major, _, minor = self.type.partition("/")
        return minor == "*" and media_type.split("/", 1)[0] == major

    @property
    def multipart_type(self) -> str | None:
        """The ``type`` parameter of a multipart/related range (the media type of its parts)."""
        return self.params.get("type")


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_media_type(text: str) -> MediaRange:
    pieces = _split_outside_quotes(text, ";")
    media_type = pieces[0].strip().lower()
    params: dict[str, str] = {}
    q = 1.0
    for piece in pieces[1:]:
        name, _, value = piece.strip().partition("=")
        name = name.strip().lower()
        value = value.strip().strip('"')
        if name == "q":
            try:
                q = float(value)
            except ValueError:
                q = 0.0
        elif name:
            params[name] = value
    return MediaRange(media_type, params, q)


def parse_accept(header: str | None) -> list[MediaRange]:
    """Media ranges in preference order; an absent or empty header accepts anything."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges = [parse_media_type(part) for part in _split_outside_quotes(header, ",") if part.strip()]
    ranges = [r for r in ranges if r.q > 0]
    return sorted(ranges, key=lambda r: -r.q)
