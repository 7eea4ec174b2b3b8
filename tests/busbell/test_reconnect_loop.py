"""``ReconnectLoop`` and ``retry_with_backoff``: the one reconnect loop of the tree.

The loop's own logic is the point here, so its sessions are plain async context
managers that count how often they were entered and left.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator

import pytest

from busbell import StoreError, UplinkError
from busbell._mqtt import ReconnectLoop, SessionChange, backoff_delays, retry_with_backoff
from tests.factories.tasks import cancel_and_wait


class Attempts:
    """Session context managers; the ``n``-th entering raises ``fail_enter[n]`` if set."""

    def __init__(self, fail_enter: dict[int, Exception] | None = None) -> None:
        self.fail_enter = fail_enter or {}
        self.entered = 0
        self.exited = 0

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[int]:
        n = self.entered
        self.entered += 1
        if n in self.fail_enter:
            raise self.fail_enter[n]
        try:
            yield n
        finally:
            self.exited += 1


async def test_failures_back_off_and_a_healthy_session_starts_the_delays_over() -> None:
    attempts = Attempts({0: UplinkError("refused"), 1: UplinkError("refused")})
    changes: list[SessionChange] = []
    loop: ReconnectLoop[int] = ReconnectLoop(
        attempts.connect,
        initial_s=0.001,
        max_s=0.05,
        on_change=changes.append,
        rng=random.Random(7),
    )

    async def body(n: int) -> str:
        loop.up()
        loop.up()  # reported once per session
        if n == 2:
            raise UplinkError("dropped")
        if n == 3:
            raise UplinkError("dropped again")
        return f"done on attempt {n}"

    assert await loop.run(body) == "done on attempt 4"
    assert [c.state for c in changes] == [
        "failed",
        "failed",
        "up",
        "lost",
        "up",
        "lost",
        "up",
        "closed",
    ]
    assert [c.error for c in changes if c.errors] == [
        "refused",
        "refused",
        "dropped",
        "dropped again",
    ]
    expected = backoff_delays(0.001, 0.05, rng=random.Random(7))
    first, second = next(expected), next(expected)
    assert [c.retry_in_s for c in changes[:2]] == [first, second]
    # after each "up" the schedule starts over: both "lost" waits are a first delay
    lost = [c.retry_in_s for c in changes if c.state == "lost"]
    assert all(0.0005 <= d <= 0.001 for d in lost)
    assert attempts.entered == 5
    assert attempts.exited == 3  # every session that was entered was left


async def test_without_up_the_delays_keep_growing() -> None:
    attempts = Attempts()
    changes: list[SessionChange] = []
    loop: ReconnectLoop[int] = ReconnectLoop(
        attempts.connect, initial_s=0.001, max_s=0.004, on_change=changes.append
    )

    async def body(n: int) -> None:
        if n < 4:
            raise UplinkError(f"dropped {n}")

    assert await loop.run(body) is None
    assert [c.state for c in changes] == ["failed"] * 4
    caps = [0.001, 0.002, 0.004, 0.004]
    assert all(cap / 2 <= c.retry_in_s <= cap for c, cap in zip(changes, caps, strict=True))


async def test_an_exception_group_of_retried_errors_is_retried_with_every_error() -> None:
    attempts = Attempts()
    changes: list[SessionChange] = []
    loop: ReconnectLoop[int] = ReconnectLoop(
        attempts.connect,
        initial_s=0.001,
        max_s=0.001,
        retry_on=(UplinkError, StoreError),
        on_change=changes.append,
    )

    async def body(n: int) -> int:
        if n == 0:
            raise ExceptionGroup(
                "task group", [UplinkError("lost"), ExceptionGroup("inner", [StoreError("db")])]
            )
        return n

    assert await loop.run(body) == 1
    assert changes[0].state == "failed"
    assert [type(e) for e in changes[0].errors] == [UplinkError, StoreError]
    assert changes[0].error == "lost; db"


async def test_an_error_it_does_not_retry_ends_the_loop_unchanged() -> None:
    attempts = Attempts()
    changes: list[SessionChange] = []
    loop: ReconnectLoop[int] = ReconnectLoop(
        attempts.connect, initial_s=0.001, max_s=0.001, on_change=changes.append
    )

    async def body(n: int) -> None:
        loop.up()
        raise KeyError("a bug")

    with pytest.raises(KeyError, match="a bug"):
        await loop.run(body)
    assert [c.state for c in changes] == ["up", "closed"]
    assert attempts.exited == 1
    assert not loop.is_up


async def test_stop_ends_the_wait_between_attempts_at_once() -> None:
    stop = asyncio.Event()
    changes: list[SessionChange] = []

    def on_change(change: SessionChange) -> None:
        changes.append(change)
        stop.set()  # during the (one hour) backoff

    loop: ReconnectLoop[int] = ReconnectLoop(
        Attempts({0: UplinkError("refused")}).connect,
        initial_s=3600.0,
        max_s=3600.0,
        on_change=on_change,
    )

    async def body(n: int) -> int:
        raise AssertionError("never connected")

    assert await asyncio.wait_for(loop.run(body, stop=stop), 10) is None
    assert [c.state for c in changes] == ["failed"]


async def test_a_cancel_leaves_the_session_and_reports_it_closed() -> None:
    attempts = Attempts()
    changes: list[SessionChange] = []
    loop: ReconnectLoop[int] = ReconnectLoop(
        attempts.connect, initial_s=0.001, max_s=0.001, on_change=changes.append
    )
    running = asyncio.Event()

    async def body(n: int) -> None:
        loop.up()
        running.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(loop.run(body))
    await asyncio.wait_for(running.wait(), 10)
    await cancel_and_wait(task)
    assert task.cancelled()
    assert [c.state for c in changes] == ["up", "closed"]
    assert attempts.exited == 1


async def test_retry_with_backoff_returns_the_first_success() -> None:
    tries: list[int] = []
    failures: list[SessionChange] = []

    async def bind() -> str:
        tries.append(len(tries))
        if len(tries) < 3:
            raise OSError(98, "Address already in use")
        return "bound"

    got = await retry_with_backoff(
        bind, initial_s=0.001, max_s=0.002, retry_on=(OSError,), on_failure=failures.append
    )
    assert got == "bound"
    assert tries == [0, 1, 2]
    assert [c.state for c in failures] == ["failed", "failed"]
    assert all("Address already in use" in c.error for c in failures)
