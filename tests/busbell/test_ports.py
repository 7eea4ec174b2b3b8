"""busbell._ports.free_port: ports another process binds later, safe from outgoing connections."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from busbell import _ports
from busbell._ports import free_port


def test_ports_are_below_the_ephemeral_range_bindable_and_never_handed_out_twice() -> None:
    low = _ports._ephemeral_low()
    ports = [free_port() for _ in range(60)]
    assert len(set(ports)) == len(ports)
    assert all(_ports._PORTS_FROM <= p < low for p in ports)
    for p in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_a_port_someone_listens_on_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    real = _ports.random.SystemRandom.randrange
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        offered: list[int] = []

        def busy_first(self: random.SystemRandom, a: int, b: int) -> int:
            offered.append(busy if not offered else real(self, a, b))
            return offered[-1]

        monkeypatch.setattr(_ports.random.SystemRandom, "randrange", busy_first)
        monkeypatch.setattr(_ports, "_ephemeral_low", lambda: 65535)
        got = free_port()
    assert offered[0] == busy
    assert got != busy


def test_the_ephemeral_range_is_read_from_the_kernel_or_defaults(tmp_path: Path) -> None:
    f = tmp_path / "range"
    f.write_text("40000\t60999\n")
    assert _read(f) == 40000
    assert _read(tmp_path / "absent") == 32768
    f.write_text("garbage\n")
    assert _read(f) == 32768


def _read(path: Path) -> int:
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(_ports, "_EPHEMERAL", path)
        return _ports._ephemeral_low()
    finally:
        mp.undo()
