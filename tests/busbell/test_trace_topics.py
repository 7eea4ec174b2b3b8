"""Trace v1 reader/writer and MQTT topic names."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from busbell import (
    AdvRecord,
    ContractError,
    DoorRecord,
    GnssRecord,
    Topics,
    TraceError,
    TraceReader,
    TraceWriter,
    TripRecord,
)
from busbell._trace import MAX_LINE

RECORDS = [
    TripRecord(1.0, "G6000", 0, "T1"),
    TripRecord(1.5, "11", 1),
    GnssRecord(2.0, 37.5, 127.0, 8.5, 90.0),
    GnssRecord(2.5, 37.5, 127.0, 0.0),
    DoorRecord(3.0, True),
    AdvRecord(3.25, "AA:BB:CC:DD:EE:FF", -61, {65535: bytes(24)}),
]


def write(records: list[object], bus_id: str = "bus-1") -> str:
    buf = io.StringIO()
    w = TraceWriter(buf, bus_id, scenario="x")
    for r in records:
        w.write(r)  # type: ignore[arg-type]
    w.flush()
    return buf.getvalue()


def test_round_trip() -> None:
    reader = TraceReader(io.StringIO(write(RECORDS)))
    assert reader.meta.bus_id == "bus-1"
    assert reader.meta.extra == {"scenario": "x"}
    assert list(reader) == RECORDS


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('{"kind":"adv","t":1,"addr":"a","rssi":-300,"mfr":{}}', "rssi"),
        ('{"kind":"adv","t":1,"addr":"a","rssi":-30,"mfr":{"x":"00"}}', "mfr"),
        ('{"kind":"adv","t":1,"addr":"a","rssi":-30,"mfr":{"1":"0g"}}', "mfr"),
        ('{"kind":"adv","t":1,"addr":"a","rssi":-30,"mfr":{"1":1}}', "mfr"),
        ('{"kind":"adv","t":1,"addr":"a","rssi":-30,"mfr":[]}', "mfr"),
        ('{"kind":"adv","t":1,"addr":"","rssi":-30,"mfr":{}}', "addr"),
        ('{"kind":"gnss","t":1,"lat":91,"lon":0,"speed_mps":0}', "lat"),
        ('{"kind":"gnss","t":1,"lat":1,"lon":190,"speed_mps":0}', "lon"),
        ('{"kind":"gnss","t":1,"lat":1,"lon":1,"speed_mps":-1}', "speed_mps"),
        ('{"kind":"gnss","t":1,"lat":1,"lon":1}', "speed_mps"),
        ('{"kind":"door","t":1,"open":1}', "open"),
        ('{"kind":"trip","t":1,"route_id":"r","direction_id":2}', "direction_id"),
        ('{"kind":"trip","t":1,"direction_id":0}', "route_id"),
        ('{"kind":"nope","t":1}', "kind"),
        ('{"kind":"door","open":true}', "t"),
        ('{"kind":"door","t":true,"open":true}', "t"),
        ("[1]", ""),
        ("{not json", ""),
    ],
)
def test_bad_lines_name_line_and_field(line: str, field: str) -> None:
    text = write([DoorRecord(1.0, False)]) + line + "\n"
    with pytest.raises(TraceError) as e:
        list(TraceReader(io.StringIO(text)))
    assert e.value.line == 3
    assert e.value.field == field
    errors: list[TraceError] = []
    recs = list(TraceReader(io.StringIO(text + "\n" + write([])[0:0]), on_error=errors.append))
    assert recs == [DoorRecord(1.0, False)]
    assert len(errors) == 1


@pytest.mark.parametrize(
    "first",
    [
        "",
        "{bad",
        '{"kind":"adv"}',
        '{"kind":"meta","format":"x","bus_id":"b"}',
        '{"kind":"meta","format":"busbell-trace/1"}',
    ],
)
def test_bad_meta_is_always_fatal(first: str) -> None:
    with pytest.raises(TraceError) as e:
        TraceReader(io.StringIO(first + "\n" if first else ""), on_error=lambda _: None)
    assert e.value.line == 1


@given(st.text(max_size=200))
def test_arbitrary_lines_only_raise_trace_error(junk: str) -> None:
    text = write([]) + junk.replace("\n", " ") + "\n"
    try:
        list(TraceReader(io.StringIO(text)))
    except TraceError:
        pass


@given(
    st.lists(
        st.builds(
            AdvRecord,
            st.floats(0, 2e9),
            st.text(min_size=1, max_size=20),
            st.integers(-127, 20),
            st.dictionaries(st.integers(0, 65535), st.binary(max_size=31), max_size=3),
        ),
        max_size=5,
    )
)
def test_adv_round_trip_property(recs: list[AdvRecord]) -> None:
    assert list(TraceReader(io.StringIO(write(list(recs))))) == recs


def test_topics_build_and_parse() -> None:
    t = Topics("fleet/x/busbell/v1/")
    assert t.status("b1") == "fleet/x/busbell/v1/buses/b1/status"
    assert t.vehicle("b1", "gnss").endswith("/buses/b1/vehicle/gnss")
    assert t.wait("11", "S1", "r1") == "fleet/x/busbell/v1/routes/11/stops/S1/waits/r1"
    assert t.shared_fares() == "$share/busbell-backend/fleet/x/busbell/v1/buses/+/fares"
    samples = {
        t.status("b"): ("status", {"bus": "b"}),
        t.display("b"): ("display", {"bus": "b"}),
        t.occupancy("b"): ("occupancy", {"bus": "b"}),
        t.vehicle("b", "doors"): ("vehicle_doors", {"bus": "b"}),
        t.vehicle("b", "trip"): ("vehicle_trip", {"bus": "b"}),
        t.driver_ack("b"): ("driver_ack", {"bus": "b"}),
        t.fares("b"): ("fares", {"bus": "b"}),
        t.fares_ack("b"): ("fares_ack", {"bus": "b"}),
        t.fares_resend("b"): ("fares_resend", {"bus": "b"}),
        t.fleet_keys("b"): ("fleet_keys", {"bus": "b"}),
        t.wait("r", "s", "q"): ("wait", {"route": "r", "stop": "s", "request": "q"}),
        t.request_status("q"): ("request_status", {"request": "q"}),
        t.denylist(): ("denylist", {}),
    }
    for topic, (kind, ids) in samples.items():
        parsed = t.parse(topic)
        assert parsed is not None
        assert (parsed.kind, parsed.ids) == (kind, ids)
    assert t.parse("$share/g/" + t.fares("b")).kind == "fares"  # type: ignore[union-attr]
    assert t.parse("other/buses/b/status") is None
    assert t.parse(t.prefix + "/buses/b/unknown") is None
    assert t.parse(t.prefix + "/buses//status") is None
    for bad in ("a/b", "+", "#", ""):
        with pytest.raises(ContractError):
            t.status(bad)
    with pytest.raises(ContractError):
        Topics("a/+/b")
    with pytest.raises(ContractError):
        t.vehicle("b", "horn")
    assert t.route_waits("11") == "fleet/x/busbell/v1/routes/11/stops/+/waits/+"
    assert t.everything() == "fleet/x/busbell/v1/#"


@given(st.text(min_size=1, max_size=30).filter(lambda s: not any(c in s for c in "/+#\0")))
def test_topic_ids_round_trip(bus: str) -> None:
    t = Topics()
    parsed = t.parse(t.fares_ack(bus))
    assert parsed is not None
    assert parsed.ids == {"bus": bus}


def test_record_json_shapes_match_design() -> None:
    lines = write(RECORDS).splitlines()
    meta = json.loads(lines[0])
    assert meta == {"kind": "meta", "format": "busbell-trace/1", "bus_id": "bus-1", "scenario": "x"}
    adv = json.loads(lines[-1])
    assert adv == {
        "kind": "adv",
        "t": 3.25,
        "addr": "AA:BB:CC:DD:EE:FF",
        "rssi": -61,
        "mfr": {"65535": "00" * 24},
    }


def test_hostile_lines_are_skipped_by_reason_and_reading_goes_on(tmp_path: Path) -> None:
    good = write([DoorRecord(1.0, False), DoorRecord(9.0, True)])
    head, tail = good.splitlines(keepends=True)[:2], good.splitlines(keepends=True)[2:]
    hostile = [
        b"[" * 100_000 + b"]" * 100_000 + b"\n",  # over the line limit: never read whole
        b"x" * (MAX_LINE * 5),  # an over-long line split across reads
        b"\n",
        b"[" * 5000 + b"]" * 5000 + b"\n",
        b'{"kind":"door","t":NaN,"open":true}\n',
        b'{"kind":"door","t":' + str(2**70).encode() + b',"open":true}\n',
        b'{"kind":"door","t":2.0,"open":"\xff\xfe"}\n',
    ]
    path = tmp_path / "t.jsonl"
    path.write_bytes("".join(head).encode() + b"".join(hostile) + "".join(tail).encode())
    errors: list[TraceError] = []
    with path.open(encoding="utf-8", errors="surrogateescape") as fp:
        recs = list(TraceReader(fp, on_error=errors.append))
    assert recs == [DoorRecord(1.0, False), DoorRecord(9.0, True)]
    assert [(e.line, e.reason) for e in errors] == [
        (3, "too_long"),
        (4, "too_long"),
        (5, "too_deep"),
        (6, "non_finite"),
        (7, "int_range"),
        (8, "not_utf8"),
    ]
    # a plain list of lines is bounded too, and the strict mode raises the first
    with pytest.raises(TraceError) as e:
        list(TraceReader([*head, "[" * 20 + "]" * 20 + "\n"]))
    assert e.value.reason == "too_deep"
    with pytest.raises(TraceError) as e:
        TraceReader(["x" * (MAX_LINE + 10)])
    assert e.value.reason == "too_long"
