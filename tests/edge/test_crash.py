"""Crash safety: SIGKILL a writer process mid-flight, reopen, nothing committed is lost.

The writer (this file run as a script) records events as fast as it can while it also
"uploads" (reads unacked events, acks, prunes), and prints each seq to its stdout pipe
only AFTER the commit returned. The test kills it with SIGKILL at a random moment,
reopens the store and checks every reported seq is there (or was acked and pruned),
that no seq is reused, and that the chain and signatures verify end to end.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from busbell import DeviceKey, HashChain, configure_logging, verify_event
from edge._events import EventBuilder
from edge._store import FareStore
from tests.factories.drafts import synthetic_draft
from tests.factories.tasks import script_env

KEY = DeviceKey.from_seed(bytes(range(32)))
BUS = "bus-crash"


async def _writer(db: str, prune: bool) -> None:
    store = await FareStore.open(db, EventBuilder(BUS, KEY))
    i = store.last_seq
    rng = random.Random(os.getpid())
    out = sys.stdout
    while True:
        n = rng.randint(1, 3)
        events = await store.append_many(synthetic_draft(i + k) for k in range(n))
        i += n
        out.write("".join(f"{e['seq']}\n" for e in events))
        out.flush()
        if i % 7 == 0:
            await store.unacked(50)
            await store.ack(max(0, store.last_seq - 20))
        if prune and i % 11 == 0:
            await store.prune(0, time.time() + 1)


def _run_until_killed(db: Path, prune: bool, min_lines: int) -> list[int]:
    proc = subprocess.Popen(
        [sys.executable, __file__, str(db), "prune" if prune else "keep"],
        env=script_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    seen: list[int] = []
    target = min_lines + random.randint(0, min_lines)
    deadline = time.monotonic() + 60
    while len(seen) < target and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(int(line))
    os.kill(proc.pid, signal.SIGKILL)
    rest = proc.stdout.read()
    proc.stdout.close()
    proc.wait(10)
    for line in rest.split(b"\n"):
        if line.strip():
            seen.append(int(line))
    assert proc.returncode == -signal.SIGKILL
    assert len(seen) >= min_lines, "the writer reported too few commits before the kill"
    return seen


async def _check(db: Path, reported: list[int], *, from_genesis: bool) -> int:
    store = await FareStore.open(db, EventBuilder(BUS, KEY))
    try:
        assert reported == sorted(set(reported)), "a seq was reported twice (reused)"
        assert store.last_seq >= max(reported)
        kept = await store.range(1, store.last_seq)
        kept_seqs = {e.seq for e in kept}
        for seq in reported:
            assert seq in kept_seqs or seq <= store.acked_upto, f"committed seq {seq} lost"
        seqs = [e.seq for e in kept]
        assert seqs == list(range(seqs[0], store.last_seq + 1)), "gap in kept events"
        events = [e.event() for e in kept]
        if from_genesis:
            assert seqs[0] == 1
            chain = HashChain()
        else:
            chain = HashChain(seqs[0], events[0]["prev"])
        for ev in events:
            verify_event(ev, KEY.public)
            chain.check(ev)
            chain.advance(ev)
        assert chain.prev == store.prev
        assert all(e.acked for e in kept if e.seq <= store.acked_upto)
        # the next append continues the chain: no seq is reused after the crash
        nxt = await store.append(synthetic_draft(10**6 + store.last_seq))
        assert nxt["seq"] == max(reported[-1], store.last_seq - 1) + 1 or nxt["seq"] > max(reported)
        chain.check(nxt)
        return store.last_seq
    finally:
        await store.close()


@pytest.mark.timeout(120)
async def test_sigkill_during_recording_and_upload(tmp_path: Path) -> None:
    db = tmp_path / "fares.db"
    all_reported: list[int] = []
    last = 0
    for cycle in range(3):
        prune = cycle == 2
        reported = await asyncio.to_thread(_run_until_killed, db, prune, 150)
        assert reported[0] == last + 1, "the restarted writer did not continue the sequence"
        all_reported.extend(reported)
        last = await _check(db, reported, from_genesis=not prune)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


if __name__ == "__main__":
    configure_logging("error", stream=sys.stderr)
    asyncio.run(_writer(sys.argv[1], sys.argv[2] == "prune"))
