"""The fault campaign, reduced for CI (the full one: docs/reliability.md).

Edge SIGKILLs under load, a broker SIGKILL, a backend SIGKILL and a short partition on a
real Mosquitto and a real ``busbell backend run`` (SQLite): afterwards the ledger holds
every event the edge committed, once, in an intact chain.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.campaign import run_campaign

pytestmark = pytest.mark.mosquitto


def test_reduced_fault_campaign_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    r = run_campaign(
        tmp_path, edge_kills=6, broker_kills=1, backend_kills=2, partition_s=3.0, backend_terms=1
    )
    assert r.edge_kills == 6
    assert r.broker_kills == 1
    assert r.backend_kills == 2
    assert r.backend_term_exits == [0]  # SIGTERM under load: a clean exit
    assert r.partitions == 1
    assert r.reported > 0
    assert r.last_seq >= r.reported
    assert r.lost == []
    assert r.duplicates == 0
    assert r.gaps == []
    assert r.bad_links == 0
    assert r.bad_signatures == 0
    assert r.quarantined == 0
    assert r.backend_crashes == 0
    assert r.stored == r.last_seq
    assert r.ok
