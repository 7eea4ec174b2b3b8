"""The chain core (backend._chain.ChainPlanner) on its own: gaps."""

from __future__ import annotations

from typing import Any

from backend._chain import ChainPlanner, ChainPosition
from backend._ingest import IngestCore, VerifiedEvent
from backend._keys import DeviceInfo
from tests.factories.fare_events import batch_payload, device_key_for, make_events

KEYS = {b: device_key_for(b) for b in ("B1", "B2")}
CORE = IngestCore({b: DeviceInfo(k.public) for b, k in KEYS.items()})


def verified(bus: str, events: list[dict[str, Any]]) -> list[VerifiedEvent]:
    ok, bad = CORE.decode(bus, batch_payload(bus, events))
    assert bad == []
    return ok


def test_skip_gap_links_from_the_lowest_held_seq() -> None:
    chain = make_events("B1", KEYS["B1"], 6)
    planner: ChainPlanner[VerifiedEvent] = ChainPlanner(
        verify=CORE.check_signature, max_held=None, resend_after_s=None
    )
    planner.open("B1", ChainPosition(), {})
    assert planner.skip_gap("B1") == 0  # nothing held
    planner.take_all(verified("B1", chain[2:4] + chain[5:]))  # 3, 4 and 6
    assert planner.skip_gap("B1") == 2  # 1 and 2 never came
    assert planner.skip_gap("B1") == 1  # nor 5
    (plan,) = planner.finish()
    assert [e.seq for e in plan.store] == [3, 4, 6]
    assert plan.gap is None  # gaps are not tracked without a grace
    assert plan.position.next_seq == 7
