"""The backend relays a bus's request status only when the bus speaks for itself."""

from __future__ import annotations

import json

from backend._status_relay import StatusRelay
from busbell import Topics, canonical_bytes

T = Topics("p/v1")


def status(**kw: object) -> bytes:
    body: dict[str, object] = {"request_id": "r1", "state": "seen", "bus_id": "bus-1", "t": 5.0}
    body.update(kw)
    return json.dumps(body).encode()


def test_relays_own_statuses_once_and_rejects_the_rest_by_reason() -> None:
    relay = StatusRelay(T)
    assert relay.subscription() == "p/v1/buses/+/requests/+/status"
    topic = T.bus_request_status("bus-1", "r1")
    out = relay.on_message(topic, status())
    assert out == (
        T.request_status("r1"),
        canonical_bytes({"request_id": "r1", "state": "seen", "bus_id": "bus-1", "t": 5.0}),
    )
    assert relay.on_message(topic, status()) is None  # a repeat (e.g. a retained re-send)
    assert relay.on_message(topic, status(state="acknowledged")) is not None
    assert relay.on_message(topic, b"") is None  # cleared
    assert relay.on_message(T.request_status("r1"), status()) is None  # not a bus topic
    cases = {
        "bus_mismatch": (topic, status(bus_id="bus-2")),
        "request_mismatch": (topic, status(request_id="r2")),
        "state_not_for_bus": (topic, status(state="cancelled")),
        "too_deep": (topic, b"[" * 1000 + b"]" * 1000),
        "too_large": (topic, b"[" * 5000 + b"]" * 5000),
        "non_finite": (topic, status().replace(b"5.0", b"NaN")),
        "not_json": (topic, b"{"),
    }
    for reason, (tp, payload) in cases.items():
        assert relay.on_message(tp, payload) is None, reason
    assert relay.on_message(topic, status(bus_id=None)) is None
    assert relay.relayed == 2
    assert set(cases) <= set(relay.rejected)
    assert relay.rejected["bus_mismatch"] == 2  # bus_id null: a bus must name itself
    assert sum(relay.rejected.values()) == len(cases) + 1


def test_memory_of_relayed_statuses_is_bounded() -> None:
    relay = StatusRelay(T, max_tracked=3)
    for i in range(10):
        rid = f"r{i}"
        assert relay.on_message(T.bus_request_status("bus-1", rid), status(request_id=rid))
    assert len(relay._last) == 3
