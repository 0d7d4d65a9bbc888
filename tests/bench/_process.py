"""Server processes for the benchmark: started with a death signal, logged to a file, always stopped."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import IO

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: the kernel sends SIGKILL to the child if the benchmark dies, even by SIGKILL.

    The setting survives execve, so it also covers `unshare … python … exec Orthanc` chains.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def exit_cleanly_on_termination() -> None:
    """Turn SIGTERM/SIGHUP into SystemExit so that `finally` blocks stop the servers."""

    def raise_system_exit(signal_number: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signal_number)

    for signal_number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signal_number, raise_system_exit)


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class ManagedProcess:
    """A child process whose output goes to `log_path`; `stop()` is idempotent and escalates to SIGKILL."""

    def __init__(self, name: str, command: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.command = list(command)
        self.log_path = log_path
        self._log_file: IO[bytes] = log_path.open("wb")
        log(f"starting {name}: {' '.join(self.command)}")
        self.process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
            env=env, cwd=cwd, preexec_fn=die_with_parent)

    @property
    def pid(self) -> int:
        return self.process.pid

    def is_running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, line_count: int = 30) -> str:
        self._log_file.flush()
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(lines[-line_count:])

    def wait_until(self, is_ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.is_running():
                raise RuntimeError(f"{self.name} exited with status {self.process.returncode} before "
                                   f"{what}; last log lines ({self.log_path}):\n{self.log_tail()}")
            if is_ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not {what} after {timeout_s:.0f} s; last log lines "
                           f"({self.log_path}):\n{self.log_tail()}")

    def stop(self, grace_s: float = 30.0) -> None:
        if self.process.poll() is None:
            log(f"stopping {self.name} (pid {self.pid})")
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                log(f"{self.name} ignored SIGTERM for {grace_s:.0f} s: killing it")
                self.process.kill()
                self.process.wait()
        self._log_file.close()


def other_processes_named(executable_name: str) -> list[int]:
    """Pids of running processes whose executable is called `executable_name` (e.g. a system Orthanc)."""
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "comm").read_text().strip() == executable_name[:15]:
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids

