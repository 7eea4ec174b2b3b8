"""IngestWorker's batch wait: stopping it never loses the stop, nor a queued message."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from backend._db import create_engine
from backend._ingest import IngestWorker
from backend.config import BackendConfig, DatabaseSettings, IngestSettings


@pytest.mark.parametrize("waiting_for", ["first", "more"])
async def test_a_cancel_as_a_message_arrives_is_kept_and_the_message_stays_queued(
    tmp_path: Path, waiting_for: str
) -> None:
    # asyncio.wait_for (Python 3.11) returned the message and dropped this cancel
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/l.db")
    config = BackendConfig(
        database=DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path}/l.db"),
        ingest=IngestSettings(worker_id="t1"),
    )
    worker = IngestWorker(config, engine)
    queue = worker._queue
    if waiting_for == "more":
        queue.put_nowait(("bus-1", b"{}"))
    waiting = asyncio.create_task(worker._next_batch(1000, 5.0, 5.0))
    for _ in range(3):
        await asyncio.sleep(0)  # it waits on the empty queue now
    assert queue.empty()
    queue.put_nowait(("bus-2", b"{}"))
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert queue.get_nowait() == ("bus-2", b"{}")
    await engine.dispose()
