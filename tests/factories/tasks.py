"""Ending background tasks in tests without hiding how they ended."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["LIVE_TIMEOUT_S", "cancel_and_wait", "script_env", "stop_processes"]

LIVE_TIMEOUT_S = 30.0
"""The httpx timeout of tests talking to a live socket that do not measure latency:
httpx's 5-s default flaked under CI load (``.ci/run`` at load 9-12: a ``ReadTimeout`` on
``POST /riders`` in ``test_revocation_e2e``); the test's own deadline bounds the wait."""


async def cancel_and_wait(task: asyncio.Task[Any], timeout: float = 20.0) -> None:
    """Cancel ``task`` and wait for it to end.

    A task that ends by the cancel is fine; one that had already crashed, or raises
    something else while it unwinds, raises that here: a daemon's crash never passes a
    test silently (as ``contextlib.suppress(BaseException)`` around it would let it).
    """
    task.cancel()
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
    except asyncio.CancelledError:
        if not task.cancelled():
            raise  # the awaiting test itself is being cancelled


def script_env() -> dict[str, str]:
    """The environment for a test module run as a script in a subprocess.

    Such a script's ``sys.path`` starts at its own directory, not the repository root
    that pytest adds (``pythonpath`` in pyproject.toml), so ``benchmarks`` and
    ``tests`` would not import in it.
    """
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def stop_processes(procs: Sequence[subprocess.Popen[Any]], grace_s: float = 15.0) -> None:
    """SIGTERM the processes still running, then wait for each (killed after ``grace_s``)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(grace_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
