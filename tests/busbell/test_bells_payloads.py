"""Bells v1 payload validators: wait, driver ack, request status, display model."""

from __future__ import annotations

from typing import Any

import pytest

from busbell import (
    MAX_ACK_IDS,
    REQUEST_STATES,
    ContractError,
    is_bell_id,
    validate_display,
    validate_driver_ack,
    validate_request_status,
    validate_wait,
)


def wait() -> dict[str, Any]:
    return {
        "request_id": "w-1",
        "route_id": "11",
        "stop_id": "S1",
        "t": 100.0,
        "expires_t": 700,
        "source": "stop_unit",
        "assist": True,
    }


def stop(**kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "stop_id": "S1",
        "name": "시청",
        "seq": 3,
        "waits": 1,
        "assist": False,
        "stop_requested": False,
        "request_ids": ["w-1"],
    }
    out.update(kw)
    return out


def display() -> dict[str, Any]:
    return {
        "v": 1,
        "bus_id": "B1",
        "t": 5.0,
        "route_id": "11",
        "trip_id": None,
        "online": True,
        "on_board": 4,
        "next_stop": stop(),
        "stops": [stop(), stop(stop_id="S2", seq=4, waits=0, request_ids=[])],
    }


def test_valid_payloads() -> None:
    assert validate_wait(wait())["source"] == "stop_unit"
    assert validate_driver_ack({"t": 1.0, "request_ids": ["w-1", "w-2"]})
    assert validate_driver_ack({"request_ids": ["w-1"]})
    for state in REQUEST_STATES:
        validate_request_status({"request_id": "w-1", "state": state, "t": 1, "bus_id": None})
    validate_request_status({"request_id": "w-1", "state": "seen", "t": 1, "bus_id": "B", "x": 1})
    assert validate_display(display())["on_board"] == 4
    d = display()
    d["next_stop"] = None
    d["stops"] = []
    validate_display(d)
    assert is_bell_id("w-정류장")
    assert not is_bell_id("a/b")
    assert not is_bell_id(3)


@pytest.mark.parametrize(
    ("mutate", "field", "reason"),
    [
        (lambda w: w.pop("t"), "t", "missing"),
        (lambda w: w.update(extra=1), "extra", "unknown_field"),
        (lambda w: w.update(request_id=""), "request_id", "invalid"),
        (lambda w: w.update(route_id="1#"), "route_id", "invalid"),
        (lambda w: w.update(stop_id=5), "stop_id", "invalid"),
        (lambda w: w.update(t=True), "t", "invalid"),
        (lambda w: w.update(expires_t=float("inf")), "expires_t", "invalid"),
        (lambda w: w.update(expires_t=99.0), "expires_t", "invalid"),
        (lambda w: w.update(source=None), "source", "invalid"),
        (lambda w: w.update(assist="yes"), "assist", "invalid"),
    ],
)
def test_wait_rejections(mutate: Any, field: str, reason: str) -> None:
    w = wait()
    mutate(w)
    with pytest.raises(ContractError) as e:
        validate_wait(w)
    assert (e.value.field, e.value.reason) == (field, reason)


def test_wait_rejects_non_objects() -> None:
    with pytest.raises(ContractError) as e:
        validate_wait([wait()])
    assert (e.value.field, e.value.reason) == ("", "not_an_object")
    with pytest.raises(ContractError) as e:
        validate_wait("x", prefix="wait.")
    assert e.value.field == "wait"


@pytest.mark.parametrize(
    ("ack", "field", "reason"),
    [
        ([], "", "not_an_object"),
        ({"t": 1}, "request_ids", "missing"),
        ({"request_ids": ["a"], "who": "x"}, "who", "unknown_field"),
        ({"request_ids": ["a"], "t": "now"}, "t", "invalid"),
        ({"request_ids": []}, "request_ids", "invalid"),
        ({"request_ids": "a"}, "request_ids", "invalid"),
        ({"request_ids": ["a"] * (MAX_ACK_IDS + 1)}, "request_ids", "invalid"),
        ({"request_ids": ["a", None]}, "request_ids[1]", "invalid"),
    ],
)
def test_driver_ack_rejections(ack: Any, field: str, reason: str) -> None:
    with pytest.raises(ContractError) as e:
        validate_driver_ack(ack)
    assert (e.value.field, e.value.reason) == (field, reason)


@pytest.mark.parametrize(
    ("status", "field"),
    [
        (None, ""),
        ({"state": "seen", "t": 1}, "request_id"),
        ({"request_id": "a", "t": 1}, "state"),
        ({"request_id": "a", "state": "seen"}, "t"),
        ({"request_id": "a/b", "state": "seen", "t": 1}, "request_id"),
        ({"request_id": "a", "state": "lost", "t": 1}, "state"),
        ({"request_id": "a", "state": "seen", "t": -1}, "t"),
        ({"request_id": "a", "state": "seen", "t": 1, "bus_id": ""}, "bus_id"),
    ],
)
def test_request_status_rejections(status: Any, field: str) -> None:
    with pytest.raises(ContractError) as e:
        validate_request_status(status)
    assert e.value.field == field


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(v=2), "v"),
        (lambda d: d.pop("online"), "online"),
        (lambda d: d.update(bus_id=""), "bus_id"),
        (lambda d: d.update(t=None), "t"),
        (lambda d: d.update(route_id=""), "route_id"),
        (lambda d: d.update(online=1), "online"),
        (lambda d: d.update(on_board=-1), "on_board"),
        (lambda d: d.update(next_stop=[]), "next_stop"),
        (lambda d: d.update(stops={}), "stops"),
        (lambda d: d["stops"][1].update(stop_id=""), "stops[1].stop_id"),
        (lambda d: d["stops"][1].update(name=None), "stops[1].name"),
        (lambda d: d["stops"][1].update(seq=-1), "stops[1].seq"),
        (lambda d: d["stops"][1].update(waits=1.5), "stops[1].waits"),
        (lambda d: d["stops"][1].update(assist=None), "stops[1].assist"),
        (lambda d: d["stops"][1].update(stop_requested=0), "stops[1].stop_requested"),
        (lambda d: d["stops"][1].update(request_ids=[1]), "stops[1].request_ids"),
        (lambda d: d["next_stop"].pop("waits"), "next_stop.waits"),
        (lambda d: d["next_stop"].update(x=1), "next_stop.x"),
    ],
)
def test_display_rejections(mutate: Any, field: str) -> None:
    d = display()
    mutate(d)
    with pytest.raises(ContractError) as e:
        validate_display(d)
    assert e.value.field == field
