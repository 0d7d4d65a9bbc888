"""HL7 v2 ER7 ("pipe and hat") messages: parsing, escaping, building, and MLLP framing.

Versions 2.3 to 2.5.1 share this encoding. The separators are read from each message's MSH-1/MSH-2, so a
sender's unusual choice (``#`` for components, say) is honoured; values are unescaped on access (``\\F\\``,
``\\S\\``, ``\\T\\``, ``\\R\\``, ``\\E\\``, ``\\Xhh\\``, ``\\.br\\``) and escaped again when building.
Field numbers follow the standard's: ``msh[9]`` is MSH-9, and MSH-1 is the field separator itself.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"

# MSH-18 character sets (HL7 table 0211) and the Python codecs that read them.
CHARSETS = {
    "ASCII": "ascii", "8859/1": "latin-1", "8859/2": "iso8859-2", "8859/3": "iso8859-3", "8859/4": "iso8859-4",
    "8859/5": "iso8859-5", "8859/6": "iso8859-6", "8859/7": "iso8859-7", "8859/8": "iso8859-8",
    "8859/9": "iso8859-9", "8859/15": "iso8859-15", "UNICODE UTF-8": "utf-8", "UNICODE": "utf-8",
}

_SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class HL7ParseError(ValueError):
    """The text is not an HL7 v2 message one can read; ``segment``/``field_number`` say where, when known."""

    def __init__(self, message: str, segment: str = "MSH", field_number: int | None = None) -> None:
        super().__init__(message)
        self.segment = segment
        self.field_number = field_number


@dataclass(frozen=True)
class Encoding:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def characters(self) -> str:
        """MSH-2 as written."""
        return self.component + self.repetition + self.escape + self.subcomponent

    def escape_text(self, text: str) -> str:
        """A value as it must be written inside a (sub)component."""
        if not text:
            return text
        e = self.escape
        replacements = {e: f"{e}E{e}", self.field: f"{e}F{e}", self.component: f"{e}S{e}",
                        self.subcomponent: f"{e}T{e}", self.repetition: f"{e}R{e}"}
        out = []
        for char in text:
            if char in replacements:
                out.append(replacements[char])
            elif char in "\r\n":
                out.append(f"{e}.br{e}")  # a segment terminator inside a value would end the segment
            else:
                out.append(char)
        return "".join(out)

    def unescape(self, text: str, charset: str = "utf-8") -> str:
        """A raw (sub)component with its escape sequences resolved."""
        e = self.escape
        if not e or e not in text:
            return text
        out: list[str] = []
        position = 0
        while position < len(text):
            start = text.find(e, position)
            if start < 0:
                out.append(text[position:])
                break
            end = text.find(e, start + 1)
            if end < 0:  # a lone escape character: keep it as written
                out.append(text[position:])
                break
            out.append(text[position:start])
            out.append(self._escape_sequence(text[start + 1:end], charset, text[start:end + 1]))
            position = end + 1
        return "".join(out)

    def _escape_sequence(self, body: str, charset: str, raw: str) -> str:
        simple = {"F": self.field, "S": self.component, "T": self.subcomponent, "R": self.repetition,
                  "E": self.escape}
        if body in simple:
            return simple[body]
        if body == ".br":
            return "\n"
        if body in ("H", "N"):  # highlighting on/off: no meaning once the text is plain
            return ""
        if body[:1] == "X" and len(body) > 1 and len(body) % 2 == 1:
            try:
                return bytes.fromhex(body[1:]).decode(charset, errors="replace")
            except ValueError:
                return raw
        return raw  # character-set switches (\C..\, \M..\) and formatting commands are kept as sent


@dataclass
class Repetition:
    """One occurrence of a field: components of subcomponents, unescaped."""

    components: list[list[str]]

    def get(self, component: int = 1, subcomponent: int = 1) -> str:
        if component < 1 or component > len(self.components):
            return ""
        subcomponents = self.components[component - 1]
        if subcomponent < 1 or subcomponent > len(subcomponents):
            return ""
        return subcomponents[subcomponent - 1]

    def component_text(self, component: int) -> str:
        """A component with its subcomponents, for components that are not meant to have any."""
        if component < 1 or component > len(self.components):
            return ""
        return "&".join(part for part in self.components[component - 1] if part)

    @property
    def empty(self) -> bool:
        return not any(part for parts in self.components for part in parts)


@dataclass
class Segment:
    name: str
    # raw[0] is the name; raw[n] is field n as written (MSH: raw[1] is the field separator, raw[2] MSH-2).
    raw: list[str]
    encoding: Encoding
    charset: str = "utf-8"
    line: int = 0  # position in the message, 1-based, for error locations

    def raw_field(self, number: int) -> str:
        return self.raw[number] if 0 <= number < len(self.raw) else ""

    def repetitions(self, number: int) -> list[Repetition]:
        text = self.raw_field(number)
        if not text:
            return []
        if self.name == "MSH" and number in (1, 2):
            return [Repetition([[text]])]
        enc = self.encoding
        return [Repetition([[enc.unescape(sub, self.charset) for sub in component.split(enc.subcomponent)]
                            for component in repetition.split(enc.component)])
                for repetition in text.split(enc.repetition)]

    def get(self, number: int, component: int = 1, subcomponent: int = 1, repetition: int = 1) -> str:
        """One value (unescaped), or "" when absent. The HL7 explicit null ``""`` also reads as ""."""
        repetitions = self.repetitions(number)
        if repetition < 1 or repetition > len(repetitions):
            return ""
        value = repetitions[repetition - 1].get(component, subcomponent)
        return "" if value == '""' else value

    def __getitem__(self, number: int) -> str:
        """The first component of the first repetition of a field."""
        return self.get(number)


@dataclass
class Message:
    segments: list[Segment]
    encoding: Encoding
    charset: str = "utf-8"

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def all(self, name: str) -> list[Segment]:
        return [segment for segment in self.segments if segment.name == name]

    def first(self, name: str) -> Segment | None:
        return next((segment for segment in self.segments if segment.name == name), None)

    @property
    def message_code(self) -> str:
        return self.msh.get(9, 1).upper()

    @property
    def trigger_event(self) -> str:
        return self.msh.get(9, 2).upper()

    @property
    def control_id(self) -> str:
        return self.msh.get(10)

    @property
    def version(self) -> str:
        return self.msh.get(12)

    @property
    def sending_application(self) -> str:
        return self.msh.get(3)

    @property
    def sending_facility(self) -> str:
        return self.msh.get(4)

    def to_er7(self) -> str:
        return "\r".join(self.encoding.field.join(_join_fields(segment)) for segment in self.segments) + "\r"


def _join_fields(segment: Segment) -> list[str]:
    if segment.name == "MSH":
        # raw[1] is the separator itself: MSH|^~\&|... joins name, MSH-2 and the rest with it.
        return [segment.name, *segment.raw[2:]]
    return segment.raw


def detect_charset(data: bytes, default: str = "utf-8") -> str:
    """The Python codec for a raw message: MSH-18 when given, else ``default`` (latin-1 if that fails)."""
    first_line = _LINE_BREAK.split(data[:4096].decode("latin-1"), maxsplit=1)[0]
    if first_line.startswith("MSH") and len(first_line) > 3:
        fields = first_line.split(first_line[3])
        # fields[0] is "MSH", fields[1] MSH-2, so MSH-18 is fields[17].
        if len(fields) > 17 and fields[17].strip():
            name = fields[17].split(first_line[4] if len(first_line) > 4 else "^")[0].strip().upper()
            if name in CHARSETS:
                return CHARSETS[name]
            raise HL7ParseError(f"MSH-18 character set {name!r} is not supported "
                                f"(supported: {', '.join(sorted(CHARSETS))})", "MSH", 18)
    try:
        data.decode(default)
    except UnicodeDecodeError:
        return "latin-1"
    return default


def decode(data: bytes, default_charset: str = "utf-8") -> tuple[str, str]:
    """Text and codec name of a raw message."""
    charset = detect_charset(data, default_charset)
    try:
        return data.decode(charset), charset
    except UnicodeDecodeError as exc:
        raise HL7ParseError(f"the message is not valid {charset} as MSH-18 declares: {exc}", "MSH", 18) from exc


def parse(text: str | bytes, default_charset: str = "utf-8") -> Message:
    """Parse one message (segments ended by CR; LF and CRLF are tolerated)."""
    if isinstance(text, bytes):
        text, charset = decode(text, default_charset)
    else:
        charset = codecs.lookup(default_charset).name
    text = text.lstrip("\ufeff")
    lines = [line for line in _LINE_BREAK.split(text) if line.strip()]
    if not lines:
        raise HL7ParseError("the message is empty")
    header = lines[0].lstrip()
    if not header.startswith("MSH"):
        raise HL7ParseError(f"a message must start with an MSH segment, not {header[:3]!r}")
    if len(header) < 8:
        raise HL7ParseError("MSH is too short to hold the field separator and the encoding characters", "MSH", 2)
    separator = header[3]
    if separator.isalnum() or separator.isspace():
        raise HL7ParseError(f"MSH-1 field separator {separator!r} must be a printable non-alphanumeric character",
                            "MSH", 1)
    characters = header[4:].split(separator, 1)[0]
    if not 4 <= len(characters) <= 5 or len(set(characters + separator)) != len(characters) + 1 \
            or any(c.isalnum() or c.isspace() for c in characters):
        raise HL7ParseError(f"MSH-2 encoding characters {characters!r} must be 4 distinct non-alphanumeric "
                            "characters, different from the field separator", "MSH", 2)
    encoding = Encoding(separator, characters[0], characters[1], characters[2], characters[3])
    segments = []
    for number, line in enumerate(lines, start=1):
        line = line.strip("\x00") if number > 1 else header
        parts = line.split(separator)
        name = parts[0].strip()
        if not _SEGMENT_NAME.match(name):
            raise HL7ParseError(f"segment {number} has no valid segment name ({line[:20]!r})", name or "?")
        if name == "MSH":
            if number != 1:
                raise HL7ParseError(f"segment {number}: a second MSH segment inside one message", "MSH")
            raw = ["MSH", separator, *parts[1:]]
        else:
            raw = parts
        segments.append(Segment(name, raw, encoding, charset, number))
    msh = segments[0]
    for number, what in ((9, "message type"), (10, "message control ID"), (11, "processing ID"), (12, "version ID")):
        if not msh.get(number):
            raise HL7ParseError(f"MSH-{number} ({what}) is required but empty", "MSH", number)
    return Message(segments, encoding, charset)


def split_batch(text: str) -> list[str]:
    """The messages of a file holding several (one after another, optionally in FHS/BHS batch envelopes)."""
    messages: list[list[str]] = []
    for line in _LINE_BREAK.split(text.lstrip("\ufeff")):
        stripped = line.strip()
        if not stripped or stripped[:3] in ("FHS", "BHS", "BTS", "FTS"):
            continue
        if stripped.startswith("MSH"):
            messages.append([stripped])
        elif messages:
            messages[-1].append(stripped)
        else:
            raise HL7ParseError(f"text before the first MSH segment: {stripped[:30]!r}", stripped[:3] or "?")
    return ["\r".join(lines) + "\r" for lines in messages]


# --- Building ------------------------------------------------------------------------------------------

@dataclass
class SegmentBuilder:
    """A segment being written: ``set(n, value)`` or ``set(n, [component, ...])``; values are escaped."""

    name: str
    encoding: Encoding = field(default_factory=Encoding)
    fields: dict[int, str] = field(default_factory=dict)

    def set(self, number: int, value: str | list[str] | list[list[str]] | None) -> SegmentBuilder:
        if value is None:
            return self
        enc = self.encoding
        if isinstance(value, str):
            self.fields[number] = enc.escape_text(value)
        else:
            components = []
            for component in value:
                if isinstance(component, list):
                    components.append(enc.subcomponent.join(enc.escape_text(sub) for sub in component))
                else:
                    components.append(enc.escape_text(component))
            self.fields[number] = enc.component.join(components).rstrip(enc.component)
        return self

    def set_raw(self, number: int, text: str) -> SegmentBuilder:
        """A field already in ER7 (repetitions joined by the repetition separator)."""
        self.fields[number] = text
        return self

    def er7(self) -> str:
        enc = self.encoding
        last = max(self.fields, default=0)
        if self.name == "MSH":
            values = [self.fields.get(number, "") for number in range(3, last + 1)]
            return "MSH" + enc.field + enc.characters + (enc.field + enc.field.join(values) if values else "")
        values = [self.fields.get(number, "") for number in range(1, last + 1)]
        return enc.field.join([self.name, *values])


def build_message(segments: list[SegmentBuilder]) -> str:
    return "\r".join(segment.er7() for segment in segments) + "\r"


# --- MLLP framing --------------------------------------------------------------------------------------

def frame(message: str | bytes, charset: str = "utf-8") -> bytes:
    data = message.encode(charset, errors="replace") if isinstance(message, str) else message
    return START_BLOCK + data + END_BLOCK + CARRIAGE_RETURN


@dataclass(frozen=True)
class FrameEvent:
    """What the MLLP decoder found: a message, bytes outside any frame, or a frame over the size limit."""

    kind: str  # "message" | "junk" | "oversize"
    data: bytes = b""
    size: int = 0


class MLLPDecoder:
    """Splits a byte stream into MLLP frames; frames may arrive in pieces and several may share one read.

    Bytes between frames that are not white space are reported once per read ("junk"); a frame growing past
    ``max_message_bytes`` is reported once ("oversize") and its remaining bytes are skipped up to its end.
    """

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self._buffer = bytearray()
        self._in_frame = False
        self._oversize = False
        self._discarded = 0
        self._junk = bytearray()

    def feed(self, data: bytes) -> Iterator[FrameEvent]:
        self._buffer.extend(data)
        while self._buffer:
            if not self._in_frame:
                start = self._buffer.find(START_BLOCK)
                outside = bytes(self._buffer if start < 0 else self._buffer[:start])
                self._junk.extend(outside.strip())
                if start < 0:
                    self._buffer.clear()
                    if self._junk:  # answered now: a sender that sent no frame at all still hears why
                        yield FrameEvent("junk", bytes(self._junk[:200]), len(self._junk))
                        self._junk.clear()
                    return
                del self._buffer[:start + 1]
                if self._junk:
                    yield FrameEvent("junk", bytes(self._junk[:200]), len(self._junk))
                    self._junk.clear()
                self._in_frame, self._oversize, self._discarded = True, False, 0
                continue
            end = self._buffer.find(END_BLOCK)
            restart = self._buffer.find(START_BLOCK)
            if restart >= 0 and (end < 0 or restart < end):
                # A new frame began before this one ended: the sender lost its place; report what we had.
                yield FrameEvent("junk", bytes(self._buffer[:200]), restart + self._discarded)
                del self._buffer[:restart]
                self._in_frame = False
                continue
            if end < 0:
                if len(self._buffer) + self._discarded > self.max_message_bytes:
                    if not self._oversize:
                        self._oversize = True
                        head = bytes(self._buffer[:4096])
                        yield FrameEvent("oversize", head, len(self._buffer) + self._discarded)
                    self._discarded += len(self._buffer)
                    self._buffer.clear()
                return
            # The carriage return after the end block is left to the next round, where white space between
            # frames is skipped: a sender that omits it still gets its answer without waiting for more bytes.
            body = bytes(self._buffer[:end])
            del self._buffer[:end + 1]
            self._in_frame = False
            size = len(body) + self._discarded
            if self._oversize or size > self.max_message_bytes:
                if not self._oversize:
                    yield FrameEvent("oversize", body[:4096], size)
                continue
            yield FrameEvent("message", body, size)

    @property
    def pending(self) -> bool:
        """Whether a frame has started but not ended (a connection closed now would cut a message)."""
        return self._in_frame
