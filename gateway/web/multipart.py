"""Streaming multipart/related (RFC 2387) reading and writing.

Uploads are parsed as they arrive, each part going straight to its sink (a temporary file), so a
multi-gigabyte STOW-RS request never sits in memory. Responses are generated part by part the same way.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO, Protocol

READ_SIZE = 1024 * 1024
MAX_HEADER_BYTES = 16 * 1024


class MultipartError(ValueError):
    """The body is not well-formed multipart/related; the message says where it went wrong."""


class PartSink(Protocol):
    def write(self, data: bytes | memoryview) -> None: ...

    def complete(self) -> None: ...

    def abort(self) -> None: ...


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise MultipartError(f"malformed part header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers


def read_multipart(stream: BinaryIO, boundary: str, open_part: Callable[[dict[str, str]], PartSink]) -> int:
    """Feed each part of ``stream`` to the sink ``open_part`` returns; returns the number of parts.

    A part is completed only when its closing delimiter has been seen, so a body cut off mid-part aborts
    that part instead of storing half of it.
    """
    if not boundary or len(boundary) > 200:
        raise MultipartError("the Content-Type has no usable boundary parameter")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    # A leading CRLF makes the first delimiter look like every other one.
    buffer = bytearray(b"\r\n")
    eof = False

    def fill() -> bool:
        nonlocal eof
        if eof:
            return False
        chunk = stream.read(READ_SIZE)
        if not chunk:
            eof = True
            return False
        buffer.extend(chunk)
        return True

    # Preamble: skip to the first delimiter.
    while (index := buffer.find(delimiter)) < 0:
        if len(buffer) > len(delimiter):
            del buffer[: len(buffer) - len(delimiter)]
        if not fill():
            raise MultipartError(f"no part starts with the boundary {boundary!r}")
    del buffer[: index + len(delimiter)]
    parts = 0
    while True:
        while len(buffer) < 2 and fill():
            pass
        if buffer[:2] == b"--":
            return parts  # closing delimiter; the epilogue is ignored
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            if len(buffer) > MAX_HEADER_BYTES:
                raise MultipartError("part headers are too long or not terminated by an empty line")
            if not fill():
                raise MultipartError("the body ends inside the headers of a part")
        header_block = bytes(buffer[:end])
        first_line, _, header_lines = header_block.partition(b"\r\n")
        if first_line.strip(b" \t"):  # only transport padding may follow a delimiter on its line
            raise MultipartError("unexpected data after a boundary delimiter")
        headers = _parse_headers(header_lines)
        del buffer[: end + 4]
        sink = open_part(headers)
        try:
            while True:
                index = buffer.find(delimiter)
                if index >= 0:
                    sink.write(memoryview(buffer)[:index])
                    del buffer[: index + len(delimiter)]
                    break
                keep = len(delimiter) - 1
                if len(buffer) > keep:
                    sink.write(memoryview(buffer)[: len(buffer) - keep])
                    del buffer[: len(buffer) - keep]
                if not fill():
                    raise MultipartError(f"the body ends inside part {parts + 1} (no closing boundary)")
        except BaseException:
            sink.abort()
            raise
        sink.complete()
        parts += 1


def new_boundary() -> str:
    return uuid.uuid4().hex


COALESCE_BYTES = 1024 * 1024


def write_multipart(parts: Iterable[tuple[dict[str, str], Iterable[bytes]]], boundary: str) -> Iterator[bytes]:
    """Generate a multipart/related body from (headers, body chunks) pairs, lazily.

    Small pieces (part headers, small instances) are gathered into writes of about 1 MiB: every chunk handed
    to the WSGI server costs a round through it, which dominates when a series has thousands of small files.
    """
    pending = bytearray()
    for headers, chunks in parts:
        head = [f"--{boundary}"] + [f"{name}: {value}" for name, value in headers.items()]
        pending += ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        for chunk in chunks:
            if len(chunk) >= COALESCE_BYTES:
                if pending:
                    yield bytes(pending)
                    pending.clear()
                yield chunk
            else:
                pending += chunk
                if len(pending) >= COALESCE_BYTES:
                    yield bytes(pending)
                    pending.clear()
        pending += b"\r\n"
    pending += f"--{boundary}--\r\n".encode("latin-1")
    yield bytes(pending)
