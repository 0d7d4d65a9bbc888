"""Instance files on disk: written atomically, placed by validated UIDs, never by client-supplied names.

A file is first written completely into ``tmp/`` on the same file system, fsynced, and only then linked
into place, so a reader or a crash never sees half a file. The index row is committed after the file is in
place: a crash between the two leaves an orphan file (harmless, replaced by the next store) but never an
index row without its file.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import filecmp
import hashlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from gateway.dicom.uids import validate_uid

CHUNK = 1024 * 1024


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syncfs  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()


class FinishedUpload(NamedTuple):
    """A spooled upload ready to store, with the SHA-256 of its data set when it was computed while writing."""

    path: Path
    data_set_sha256: str | None = None


# Enough of a file's start to find its data set: preamble, "DICM" and the File Meta group length element.
HEAD_BYTES = 144
# Unknown: the upload does not start the way a PS3.10 file does, so its data set's start is not known here.
_UNKNOWN = -1


def data_set_start(head: bytes | bytearray) -> int | None:
    """Where the data set begins in a PS3.10 file starting with ``head`` (after the File Meta Information, whose
    first element is its group length); None while fewer than HEAD_BYTES are known, -1 when the layout is not
    that. A file without the 128-byte preamble and "DICM" starts directly with the File Meta group (as
    ``ingest.add_missing_preamble`` recognises it).
    """
    if len(head) < HEAD_BYTES:
        return None
    if head[128:132] == b"DICM":
        meta = 132
    elif head[:2] == b"\x02\x00":
        meta = 0
    else:
        return _UNKNOWN
    if head[meta:meta + 8] != b"\x02\x00\x00\x00UL\x04\x00":
        return _UNKNOWN
    return meta + 12 + int.from_bytes(head[meta + 8:meta + 12], "little")


class SpooledUpload:
    """A part of an upload being written to a temporary file.

    The SHA-256 of the data set (the instance's identity, see ``ingest.ParsedInstance``) is computed as the
    bytes go by, so storing the upload need not read the whole file again.
    """

    def __init__(self, tmp_dir: Path) -> None:
        fd, name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=tmp_dir)
        self.path = Path(name)
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self.size = 0
        self._head = bytearray()
        self._start: int | None = None
        self._digest = hashlib.sha256()

    def write(self, data: bytes | memoryview) -> None:
        self._file.write(data)
        offset = self.size
        self.size += len(data)
        if self._start is None:
            self._head += data[:HEAD_BYTES - len(self._head)]
            self._start = data_set_start(self._head)
            if self._start is None:
                return
        if self._start >= 0 and self.size > self._start:
            self._digest.update(data[self._start - offset:] if self._start > offset else data)

    @property
    def data_set_sha256(self) -> str | None:
        if self._start is None or self._start < 0 or self._start > self.size:
            return None
        return self._digest.hexdigest()

    def finish(self) -> Path:
        """Close the file (FileStore.make_durable syncs it) and return its path."""
        self._file.close()
        return self.path

    def finished(self) -> FinishedUpload:
        """``finish``, with the data set's digest."""
        return FinishedUpload(self.finish(), self.data_set_sha256)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class FileStore:
    def __init__(self, root: Path, tmp_dir: Path, fsync: bool = True) -> None:
        self.root = root.resolve()
        self.tmp_dir = tmp_dir
        self.fsync = fsync
        root.mkdir(parents=True, exist_ok=True)
        tmp_dir.mkdir(parents=True, exist_ok=True)
        # Uploads in progress live in a directory of this process, locked while it runs: other processes
        # (workers, `gateway import` beside `gateway serve`) can then tell a crash's leftovers from live work.
        self.session_dir = tmp_dir / f"session-{os.getpid()}-{secrets.token_hex(4)}"
        self.session_dir.mkdir()
        self._lock_fd: int | None = os.open(self.session_dir / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def close(self) -> None:
        if self._lock_fd is None:
            return
        shutil.rmtree(self.session_dir, ignore_errors=True)
        os.close(self._lock_fd)
        self._lock_fd = None

    def clean_tmp(self) -> int:
        """Remove uploads left behind by processes that died (none of them was acknowledged)."""
        removed = 0
        for session in self.tmp_dir.glob("session-*"):
            if session == self.session_dir:
                continue
            try:
                fd = os.open(session / ".lock", os.O_RDWR)
            except OSError:
                fd = None  # no lock file: a session that died while being set up
            try:
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its process is alive
            finally:
                if fd is not None:
                    os.close(fd)
            removed += sum(1 for p in session.iterdir() if p.name.startswith("upload-"))
            shutil.rmtree(session, ignore_errors=True)
        return removed

    def new_upload(self) -> SpooledUpload:
        return SpooledUpload(self.session_dir)

    def upload_from_bytes(self, data: bytes) -> Path:
        upload = self.new_upload()
        try:
            upload.write(data)
            return upload.finish()
        except BaseException:
            upload.discard()
            raise

    @staticmethod
    def relative_path(study_uid: str, series_uid: str, sop_uid: str) -> str:
        study_uid = validate_uid(study_uid, "StudyInstanceUID")
        series_uid = validate_uid(series_uid, "SeriesInstanceUID")
        sop_uid = validate_uid(sop_uid, "SOPInstanceUID")
        # A two-level hash fan-out keeps directories small at millions of studies.
        fan = hashlib.sha1(study_uid.encode()).hexdigest()
        return f"{fan[:2]}/{fan[2:4]}/{study_uid}/{series_uid}/{sop_uid}.dcm"

    def absolute(self, relative: str) -> Path:
        # Stored paths are built from validated UIDs, so a '..' can only come from a corrupted index.
        if relative.startswith("/") or ".." in relative.split("/"):
            raise ValueError(f"stored path {relative!r} escapes the storage root")
        return self.root / relative

    def place(self, upload_path: Path, relative: str) -> bool:
        """Link a finished upload into place (the upload itself stays until the caller removes it).

        Returns False when an identical file was already there. A file at the destination with other content
        is an orphan of a crashed store (the caller holds the index lock and found no row for it), so it is
        replaced, atomically.
        """
        target = self.absolute(relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(upload_path, target)
        except FileExistsError:
            if filecmp.cmp(target, upload_path, shallow=False):
                return False
            staged = target.with_name(target.name + ".staged")
            staged.unlink(missing_ok=True)
            os.link(upload_path, staged)
            os.replace(staged, target)
        return True

    def make_durable(self, paths: list[Path], directories: bool = False) -> None:
        """Make written files (or, with ``directories``, their placement) survive a power cut.

        One syncfs() flushes the whole store's file system in a single journal commit, much cheaper than an
        fsync per file; without syncfs each file (or directory) is fsynced.
        """
        if not self.fsync or not paths:
            return
        if _syncfs is not None:
            fd = os.open(self.root, os.O_RDONLY)
            try:
                if _syncfs(fd) == 0:
                    return
            finally:
                os.close(fd)
        targets = {p.parent for p in paths} if directories else set(paths)
        for target in targets:
            _fsync_path(target)

    def remove(self, relative: str) -> None:
        path = self.absolute(relative)
        path.unlink(missing_ok=True)
        # Tidy empty series/study directories; another store may race us, so failures are fine.
        for parent in list(path.parents)[:4]:
            if parent == self.root:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def open(self, relative: str) -> BinaryIO:
        return open(self.absolute(relative), "rb")

    def iter_chunks(self, relative: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        with self.open(relative) as handle:
            while chunk := handle.read(chunk_size):
                yield chunk

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

