"""The ingest worker as a child process (the scale-out test and benchmark start several)."""

from __future__ import annotations

__all__ = ["INGEST_WORKER"]

INGEST_WORKER = """
import asyncio, signal
from busbell import configure_logging, load_config
from backend.config import BackendConfig
from backend._ingest import run_ingest

async def main() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await run_ingest(load_config(BackendConfig), stop=stop)

configure_logging("info", json=True)
asyncio.run(main())
"""
"""``python -c`` source of one ingest worker: configured from ``BUSBELL_*`` environment
variables, JSON logs on stderr, stops cleanly on SIGTERM."""
