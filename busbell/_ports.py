"""Picking a TCP port for a process started later (a broker, an edge's HTTP servers)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["free_port"]

_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
_PORTS_FROM = 10000
"""The lowest port handed out (above the usual fixed services: 1883, 5432, 6379, ...)."""
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    """The lowest port the kernel hands to outgoing connections (Linux default 32768)."""
    try:
        return int(_EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, below the kernel's ephemeral range, not handed out yet.

    Another process binds it later. A port from the ephemeral range (``bind(0)``'s) can
    be taken meanwhile by any outgoing connection on the machine (an MQTT or database
    client's), which a busy machine makes many of (CI saw uvicorn's ``address already
    in use`` so); below that range only a listener binding it by number takes it, and
    the random pick keeps two processes picking at once apart. Falls back to a
    kernel-chosen port when that range is too small to hold a free one.
    """
    low = _ephemeral_low()
    rng = random.SystemRandom()
    for _ in range(200 if low > _PORTS_FROM + 100 else 0):
        port = rng.randrange(_PORTS_FROM, low)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    _handed_out.add(port)
    return port
