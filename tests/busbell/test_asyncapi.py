"""docs/asyncapi.yaml: well-formed, every reference resolves, and real payloads validate."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from busbell import GENESIS_PREV, DeviceKey, Topics, derive_event_id, event_hash, sign_event
from tests.factories.asyncapi import SPEC, check, validator


def resolve(ref: str) -> Any:
    node: Any = SPEC
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def all_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [
            r for v in node.values() for r in all_refs(v)
        ]
    if isinstance(node, list):
        return [r for v in node for r in all_refs(v)]
    return []


def test_spec_structure() -> None:
    assert SPEC["asyncapi"] == "3.0.0"
    for ref in all_refs(SPEC):
        assert resolve(ref) is not None, ref
    for op in SPEC["operations"].values():
        assert op["action"] in ("send", "receive")
        assert op["bindings"]["mqtt"]["qos"] in (0, 1, 2)
    for name in SPEC["components"]["schemas"]:
        jsonschema.Draft202012Validator.check_schema(SPEC["components"]["schemas"][name])


def test_every_topic_of_the_topic_builder_is_documented() -> None:
    t = Topics()
    documented = {ch["address"] for ch in SPEC["channels"].values()}
    built = {
        t.status("{bus}"),
        t.display("{bus}"),
        t.occupancy("{bus}"),
        t.vehicle("{bus}", "gnss"),
        t.vehicle("{bus}", "doors"),
        t.vehicle("{bus}", "trip"),
        t.driver_ack("{bus}"),
        t.fares("{bus}"),
        t.fares_ack("{bus}"),
        t.fares_resend("{bus}"),
        t.fleet_keys("{bus}"),
        t.wait("{route}", "{stop}", "{request}"),
        t.request_status("{request}"),
        t.bus_request_status("{bus}", "{request}"),
        t.denylist(),
    }
    assert built == documented


def signed_events(n: int) -> list[dict[str, Any]]:
    key = DeviceKey.from_seed(bytes(32))
    prev, out = GENESIS_PREV, []
    for seq in range(1, n + 1):
        ev = sign_event(
            {
                "v": 1,
                "type": "segment",
                "bus_id": "bus-1",
                "seq": seq,
                "event_id": derive_event_id("bus-1", seq, "ab" * 12, 10.0),
                "prev": prev,
                "rid": "ab" * 12,
                "interval": 0,
                "route_id": "11",
                "trip_id": None,
                "start": {"t": 10.0, "stop_id": "S1", "cause": "boarded"},
                "end": {"t": 20.0, "stop_id": "S2", "cause": "alighted"},
                "distance_m": 100.0,
                "proof": {"first": "21" * 24, "last": "21" * 24},
                "evidence": {"n_adv": 3},
            },
            key,
        )
        prev = event_hash(ev)
        out.append(ev)
    return out


def test_contract_payloads_validate() -> None:
    check("FareBatch", {"bus_id": "bus-1", "events": signed_events(3)})
    check("FareAck", {"upto_seq": 3})
    check("FareResend", {"from_seq": 2, "to_seq": 3})
    check("Gnss", {"t": 1.0, "lat": 37.5, "lon": 127.0, "speed_mps": 3.0})
    check("Doors", {"t": 1.0, "open": True})
    check("Trip", {"t": 1.0, "route_id": "11", "direction_id": 0, "trip_id": None})


@pytest.mark.parametrize(
    ("schema", "payload"),
    [
        ("FareBatch", {"bus_id": "b", "events": []}),
        ("FareAck", {"upto": 3}),
        ("Gnss", {"t": 1.0, "lat": 99, "lon": 0, "speed_mps": 0}),
        ("Doors", {"t": 1.0, "open": "yes"}),
        ("RequestStatus", {"request_id": "q", "state": "lost"}),
    ],
)
def test_bad_payloads_fail(schema: str, payload: Any) -> None:
    assert list(validator(schema).iter_errors(payload))


def test_fare_event_schema_agrees_with_validate_event() -> None:
    ev = signed_events(1)[0]
    check("FareEvent", json.loads(json.dumps(ev)))
    bad = dict(ev, extra=1)
    assert list(validator("FareEvent").iter_errors(bad))


def test_missed_record_and_bells_payloads_agree_with_the_validators() -> None:
    from busbell import (
        derive_missed_event_id,
        validate_display,
        validate_driver_ack,
        validate_event,
        validate_request_status,
        validate_wait,
    )

    key = DeviceKey.from_seed(bytes(32))
    seg = signed_events(1)[0]
    wait = {
        "request_id": "w-1",
        "route_id": "11",
        "stop_id": "S2",
        "t": 10.0,
        "expires_t": 910.0,
        "source": "app",
        "assist": True,
    }
    missed = sign_event(
        {
            "v": 1,
            "type": "missed",
            "bus_id": "bus-1",
            "seq": 2,
            "event_id": derive_missed_event_id("bus-1", 2, "w-1", 15.0),
            "prev": event_hash(seg),
            "request_id": "w-1",
            "route_id": "11",
            "trip_id": None,
            "stop_id": "S2",
            "wait": wait,
            "passed": {"t": 15.0, "lat": 37.5, "lon": 127.0, "speed_mps": 9.0, "distance_m": 4.0},
            "doors_opened": False,
        },
        key,
    )
    validate_event(missed)
    check("MissedRecord", missed)
    check("FareBatch", {"bus_id": "bus-1", "events": [seg, missed]})
    assert list(validator("MissedRecord").iter_errors(dict(missed, doors_opened=True)))
    assert list(
        validator("FareBatch").iter_errors({"bus_id": "b", "events": [dict(missed, rid="x")]})
    )
    check("Wait", validate_wait(wait))
    assert list(validator("Wait").iter_errors(dict(wait, extra=1)))
    status = {"request_id": "w-1", "state": "missed", "bus_id": "bus-1", "t": 15.0}
    check("RequestStatus", validate_request_status(status))
    check("DriverAck", validate_driver_ack({"t": 1.0, "request_ids": ["w-1"]}))
    stop = {
        "stop_id": "S2",
        "name": "Stop 2",
        "seq": 2,
        "waits": 1,
        "assist": True,
        "stop_requested": False,
        "request_ids": ["w-1"],
    }
    display = {
        "v": 1,
        "bus_id": "bus-1",
        "t": 12.0,
        "route_id": "11",
        "trip_id": None,
        "online": True,
        "on_board": 0,
        "next_stop": stop,
        "stops": [stop],
    }
    check("Display", validate_display(display))
    assert list(validator("Display").iter_errors(dict(display, next_stop={})))
