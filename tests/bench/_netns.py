"""Private network namespaces: a server that can only be reached over its own loopback interface.

`unshare --net` gives the server a namespace whose only interface is `lo` (down until we bring it up);
whatever address it binds, nothing outside the namespace can connect. Clients join it with
`nsenter --net=/proc/PID/ns/net`. Run as a script, this module brings `lo` up in the current namespace and
execs its arguments (`unshare --net -- python _netns.py Orthanc config.json`), so the server keeps the pid
that `unshare` had and /proc/PID/ns/net stays valid for as long as the server lives.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFREQ_FORMAT = "16sH14x"


def bring_loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as control:
        request = struct.pack(IFREQ_FORMAT, b"lo", 0)
        flags = struct.unpack(IFREQ_FORMAT, fcntl.ioctl(control, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(control, SIOCSIFFLAGS, struct.pack(IFREQ_FORMAT, b"lo", flags | IFF_UP))


def unshare_prefix(as_root: bool) -> list[str]:
    """Command prefix that runs a program in a new network namespace (via a user namespace if not root)."""
    if as_root:
        return ["unshare", "--net", "--"]
    return ["unshare", "--user", "--map-root-user", "--net", "--"]


def nsenter_prefix(pid: int, as_root: bool) -> list[str]:
    """Command prefix that runs a program inside the network namespace of process `pid`."""
    if as_root:
        return ["nsenter", f"--net=/proc/{pid}/ns/net", "--"]
    return ["nsenter", f"--user=/proc/{pid}/ns/user", f"--net=/proc/{pid}/ns/net", "--preserve-credentials",
            "--"]


def network_namespaces_available() -> tuple[bool, str]:
    """Whether this process can create and join network namespaces, and why not when it cannot."""
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            return False, f"`{tool}` (util-linux) is not installed"
    probe = subprocess.run([*unshare_prefix(os.geteuid() == 0), sys.executable, __file__, "true"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return False, f"`unshare --net` failed: {probe.stderr.strip() or probe.returncode}"
    return True, ""


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} PROGRAM [ARG...]  (brings lo up, then execs PROGRAM)")
    bring_loopback_up()
    os.execvp(sys.argv[1], sys.argv[1:])
