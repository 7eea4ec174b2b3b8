"""The whole system under faults, reduced for CI (the full runs: docs/reliability.md).

A real ``busbell edge run`` (SIGKILLed and restarted; its store on a tmpfs that fills up;
its system clock stepped by libfaketime) and a real ``busbell backend run`` (SIGKILLed
right after a commit, before its ack reaches the broker), a bus broker bridged to a
central one that goes away for a while: afterwards the ledger holds every event the bus
recorded, once, in an intact chain, and both daemons exit 0 on SIGTERM.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.faults.live import LIBFAKETIME, run_live

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(300)]


def test_edge_and_backend_under_every_fault_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    lines: list[str] = []
    r = run_live(
        tmp_path,
        scenario="quiet_route",
        scale="small",
        speed=15.0,
        edge_kills=3,
        commit_ack_kills=1,
        backend_terms=1,
        partition_s=8.0,
        disk_full_s=6.0,
        clock_steps=True,
        log=lines.append,
    )
    assert r.edge_kills == 3
    assert r.edge_kills_running == 3  # each on a running daemon, not in its start-up
    assert r.commit_ack_kills == 1
    assert r.commit_ack_checked == 1  # the unsent ack named only committed events
    assert r.backend_terms == 1
    assert r.backend_terms_clean == 1  # exit 0, nothing acked beyond the ledger
    assert r.partitions == 1
    assert r.edge_events > 0
    assert r.stored == r.edge_events
    assert r.lost == []
    assert r.extra == []
    assert r.mismatched == 0
    assert r.duplicates == 0
    assert r.gaps == []
    assert r.bad_links == 0
    assert r.bad_signatures == 0
    assert r.quarantined == 0
    assert r.overlaps == 0  # no segment emitted again after a restart
    assert r.edge_crashes == 0
    assert r.backend_crashes == 0
    assert r.edge_exit == 0
    assert r.backend_exit == 0
    if os.geteuid() == 0 and not r.disk_full_skipped.startswith("mount failed"):
        # root, and a tmpfs could be mounted (not in a container without CAP_SYS_ADMIN)
        assert r.disk_full_skipped == "", r.disk_full_skipped
        assert r.status_store_not_ok > 0  # the status said so
        assert r.display_during_disk_full > 0  # the bells' display went on
        assert r.status_store_ok_after  # and recording resumed
        assert r.store_failure_logs <= 2  # logged when it started, not per retry
    if LIBFAKETIME is not None:
        assert r.clock_steps == [3600.0, -86400.0, 172800.0, 0.0]
    assert r.ok, lines
