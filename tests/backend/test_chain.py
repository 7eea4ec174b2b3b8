"""The chain core (backend._chain.ChainPlanner) on its own: event-id ownership and gaps."""

from __future__ import annotations

from typing import Any

from backend._chain import ChainPlanner, ChainPosition
from backend._ingest import IngestCore, VerifiedEvent
from backend._keys import DeviceInfo
from busbell import sign_event
from tests.factories.fare_events import batch_payload, device_key_for, make_events

KEYS = {b: device_key_for(b) for b in ("B1", "B2")}
CORE = IngestCore({b: DeviceInfo(k.public) for b, k in KEYS.items()})


def verified(bus: str, events: list[dict[str, Any]]) -> list[VerifiedEvent]:
    ok, bad = CORE.decode(bus, batch_payload(bus, events))
    assert bad == []
    return ok


def test_a_held_record_claims_no_event_id_in_one_transaction() -> None:
    """B1's seq 2 is held when B2's seq 1, with the same id, links: B2's wins, B1's
    is event_id_conflict when B1's seq 1 arrives, and B1's head stays at 2."""
    b1 = make_events("B1", KEYS["B1"], 3)
    b2 = make_events("B2", KEYS["B2"], 1)
    taker = sign_event(dict(b2[0], event_id=b1[1]["event_id"]), KEYS["B2"])
    held, took, first = verified("B1", b1[1:2]), verified("B2", [taker]), verified("B1", b1[:1])
    planner = CORE.planner()
    for bus in ("B1", "B2"):
        planner.open(bus, ChainPosition(), {})
    planner.take_all([*held, *took, *first])  # arrival order across buses
    one, two = planner.finish()
    assert [e.seq for e in one.store] == [1]
    assert [r.reason for r in one.rejected] == ["event_id_conflict"]
    assert one.position.next_seq == 2
    assert one.held == {}
    assert [e.seq for e in two.store] == [1]
    assert planner.claims[taker["event_id"]] == ("B2", 1)


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
