"""The MQTT adapter and ``busbell tail`` against a real mosquitto."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from busbell import Topics, UplinkError
from busbell._mqtt import MqttMessage, MqttSession, MqttSettings, backoff_delays
from busbell._tail import format_message

pytestmark = pytest.mark.mosquitto


async def next_message(s: MqttSession, timeout: float = 5.0) -> MqttMessage:
    async def first() -> MqttMessage:
        async for m in s.messages():
            return m
        raise AssertionError("no message")

    return await asyncio.wait_for(first(), timeout)


async def test_publish_subscribe_retain_and_expiry(shared_broker: Any, topic_prefix: str) -> None:
    settings = MqttSettings(host=shared_broker.host, port=shared_broker.port, prefix=topic_prefix)
    t = Topics(topic_prefix)
    async with MqttSession(settings, f"{topic_prefix}-pub", clean_start=True) as pub:
        await pub.publish(t.status("b1"), b'{"state":"online"}', qos=1, retain=True)
        await pub.publish(t.wait("11", "S1", "q1"), b'{"x":1}', qos=1, retain=True, expiry_s=1)
    await asyncio.sleep(1.5)  # the wait's 1 s message expiry runs out on the broker
    async with MqttSession(settings, f"{topic_prefix}-sub", clean_start=True) as sub:
        await sub.subscribe([t.everything()])
        m = await next_message(sub)
        assert m.topic == t.status("b1")
        assert m.retain
        assert json.loads(m.payload) == {"state": "online"}
        # the expired retained wait request is not delivered: the next message is a
        # marker published after the subscription (retained ones come before it)
        await sub.publish(f"{topic_prefix}/test/marker", b"", qos=1)
        assert (await next_message(sub)).topic == f"{topic_prefix}/test/marker"
        await sub.publish(t.status("b1"), b"", qos=1, retain=True)


async def test_last_will_is_published_when_the_client_dies(
    shared_broker: Any, topic_prefix: str, tmp_path: Path
) -> None:
    t = Topics(topic_prefix)
    script = tmp_path / "client.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio, sys
            from busbell._mqtt import MqttSession, MqttSettings
            async def main():
                s = MqttSettings(
                    host="{shared_broker.host}", port={shared_broker.port}, keepalive_s=1
                )
                will = ("{t.status("b9")}", b'{{"state":"offline"}}', True)
                async with MqttSession(s, "{topic_prefix}-dying", will=will, clean_start=True) as c:
                    await c.publish("{t.status("b9")}", b'{{"state":"online"}}', qos=1, retain=True)
                    print("ready", flush=True)
                    await asyncio.sleep(60)
            asyncio.run(main())
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    settings = MqttSettings(host=shared_broker.host, port=shared_broker.port)
    async with MqttSession(settings, f"{topic_prefix}-watch", clean_start=True) as sub:
        await sub.subscribe([t.status("b9")])
        for _ in range(10):
            m = await next_message(sub, timeout=5)
            if json.loads(m.payload) == {"state": "offline"}:
                break
        else:
            pytest.fail("no LWT")
        await sub.publish(t.status("b9"), b"", qos=1, retain=True)


async def test_connect_failure_is_uplink_error() -> None:
    from tests.conftest import free_port

    settings = MqttSettings(host="127.0.0.1", port=free_port())
    with pytest.raises(UplinkError, match="cannot connect"):
        async with MqttSession(settings, "nobody"):
            pass


async def test_an_abandoned_connection_attempt_closes_its_socket() -> None:
    """A broker that accepts TCP but never answers CONNECT: the attempt, cancelled (or
    timed out), must close its socket at once, not leave it to the garbage collector."""
    accepted: asyncio.Queue[asyncio.StreamReader] = asyncio.Queue()
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await accepted.put(reader)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = MqttSettings(host="127.0.0.1", port=port)
    try:
        # two attempts in a row with one client id, as a reconnect loop makes them (a new
        # session each; entering one session again is in test_mqtt_session.py)
        for attempt in range(2):
            session = MqttSession(settings, f"t-silent-{os.getpid()}")
            entering = asyncio.create_task(session.__aenter__())
            reader = await asyncio.wait_for(accepted.get(), 10)
            await reader.readexactly(2)  # the CONNECT packet's fixed header arrived
            entering.cancel()
            with pytest.raises(asyncio.CancelledError):
                await entering
            rest = await asyncio.wait_for(reader.read(), 10)  # EOF: the client closed
            assert isinstance(rest, bytes), attempt
            assert reader.at_eof(), attempt
    finally:
        for w in writers:
            w.close()
            await w.wait_closed()
        server.close()
        await server.wait_closed()


def test_backoff_grows_with_jitter_and_caps() -> None:
    import random

    d = backoff_delays(0.5, 8.0, rng=random.Random(1))
    values = [next(d) for _ in range(10)]
    assert 0.25 <= values[0] <= 0.5
    assert all(4.0 <= v <= 8.0 for v in values[5:])
    assert len(set(values)) == 10


def test_tail_prints_filtered_human_lines(shared_broker: Any, topic_prefix: str) -> None:
    t = Topics(topic_prefix)

    async def publish() -> None:
        settings = MqttSettings(host=shared_broker.host, port=shared_broker.port)
        async with MqttSession(settings, f"{topic_prefix}-p", clean_start=True) as p:
            await p.publish(t.status("b1"), b'{"state":"online","backlog":3}', qos=1, retain=True)
            await p.publish(t.occupancy("b2"), b'{"on_board":7}', qos=1, retain=True)

    asyncio.run(publish())
    base = [sys.executable, "-m", "busbell.cli", "tail", "--broker", "127.0.0.1:1883"]
    r = subprocess.run(
        [*base, "--prefix", topic_prefix, "--bus", "b1", "--count", "1"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    assert "status" in r.stdout
    assert "3 fare event(s) to upload" in r.stdout
    assert "[retained]" in r.stdout
    r = subprocess.run(
        [*base, "--prefix", topic_prefix, "--kind", "occupancy", "--count", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    line = json.loads(r.stdout)
    assert line["kind"] == "occupancy"
    assert line["bus"] == "b2"
    assert line["body"] == {"on_board": 7}
    bad = subprocess.run(
        [*base, "--kind", "nonsense"], capture_output=True, text=True, timeout=20, check=False
    )
    assert bad.returncode == 2

    async def clear() -> None:
        settings = MqttSettings(host=shared_broker.host, port=shared_broker.port)
        async with MqttSession(settings, f"{topic_prefix}-c", clean_start=True) as p:
            await p.publish(t.status("b1"), b"", qos=1, retain=True)
            await p.publish(t.occupancy("b2"), b"", qos=1, retain=True)

    asyncio.run(clear())


def test_format_message_summaries() -> None:
    t = Topics()
    fares = json.dumps({"bus_id": "b", "events": [{"seq": 4}, {"seq": 6}]}).encode()
    line = format_message(t, MqttMessage(t.fares("b"), fares, False, 1))
    assert line is not None
    assert "2 event(s), seq 4..6" in line
    assert "acked up to seq 9" in (
        format_message(t, MqttMessage(t.fares_ack("b"), b'{"upto_seq":9}', False, 1)) or ""
    )
    assert "(cleared" in (format_message(t, MqttMessage(t.wait("r", "s", "q"), b"", True, 1)) or "")
    assert "invalid_json" in (
        format_message(t, MqttMessage(t.status("b"), b"\xff{", False, 0)) or ""
    )
    assert format_message(t, MqttMessage("other/topic", b"{}", False, 0)) is None
    assert "doors OPEN" in (
        format_message(t, MqttMessage(t.vehicle("b", "doors"), b'{"open":true}', False, 0)) or ""
    )
    # a bus's status in words, not a cut-off dump of its health (it read "... bells={"counts":
    # {"clock_steps": 1, ...}} build="pure" bus_i")
    status = {
        "state": "online",
        "bus_id": "b",
        "version": "0.1.0",
        "build": "pure",
        "backlog": 3,
        "on_board": 12,
        "tokens_in_range": 40,
        "uplink": {"connected": False},
        "store": {"ok": True},
        "fleet_keys": {"days_remaining": 1, "warning": True},
        "clock": {"source": "gnss", "offset_s": 0.2},
        "bells": {"live_waits": 2, "missed_recorded": 1, "counts": {"seen": 2}},
    }
    line = format_message(t, MqttMessage(t.status("b"), json.dumps(status).encode(), True, 1))
    assert line is not None
    assert line.endswith(
        "online, 3 fare event(s) to upload, 12 on board, 40 tokens in range, 2 live wait(s), "
        "1 missed stop(s) recorded, UPLINK DOWN, FLEET KEYS RUNNING OUT, clock gnss, "
        "0.1.0 pure [retained]"
    ), line
    will = format_message(t, MqttMessage(t.status("b"), b'{"state":"offline"}', True, 1))
    assert (will or "").endswith("status         b                        OFFLINE [retained]")
    occ = b'{"bus_id":"b","on_board":7}'
    assert (format_message(t, MqttMessage(t.occupancy("b"), occ, False, 1)) or "").endswith(
        "7 on board"
    )


def test_waits_statuses_and_displays_read_as_words() -> None:
    from busbell._tail import TailFormatter

    t = Topics("x/busbell/v1")
    now = 1_764_000_100.0
    fmt = TailFormatter(t, stops={"S05": "City Hall"}, clock=lambda: now)
    wait = {
        "request_id": "w-1",
        "route_id": "11",
        "stop_id": "S05",
        "t": now - 100,
        "expires_t": now + 800,
        "source": "app",
        "assist": True,
    }
    line = fmt.format(MqttMessage(t.wait("11", "S05", "w-1"), json.dumps(wait).encode(), True, 1))
    assert line is not None
    assert (
        "11 @ City Hall (S05)  w-1  app, ASSIST  expires in 13m20s (age 1m40s) [retained]" in line
    )
    bus_status = {"bus_id": "bus-7", "t": now, "clock": {"source": "gnss", "offset_s": 0.0}}
    fmt.format(MqttMessage(t.status("bus-7"), json.dumps(bus_status).encode(), True, 1))
    status = {"request_id": "w-1", "state": "seen", "bus_id": "bus-7", "t": now - 2}
    line = fmt.format(MqttMessage(t.request_status("w-1"), json.dumps(status).encode(), True, 1))
    assert line is not None
    assert "w-1  SEEN by bus-7  (11 @ City Hall (S05)) (age 2.0s)" in line
    line = fmt.format(MqttMessage(t.wait("11", "S05", "w-1"), b"", True, 1))
    assert line is not None
    assert "11 @ City Hall (S05)  w-1  (cleared: served, cancelled or expired)" in line
    display = {
        "v": 1,
        "bus_id": "bus-7",
        "t": now,
        "route_id": "11",
        "trip_id": "T1",
        "online": True,
        "on_board": 12,
        "next_stop": {
            "stop_id": "S05",
            "name": "시청",
            "seq": 5,
            "waits": 2,
            "assist": True,
            "stop_requested": True,
            "request_ids": ["w-1"],
        },
        "stops": [
            {
                "stop_id": "S05",
                "name": "시청",
                "seq": 5,
                "waits": 2,
                "assist": True,
                "stop_requested": True,
                "request_ids": ["w-1"],
            },
            {
                "stop_id": "S06",
                "name": "",
                "seq": 6,
                "waits": 0,
                "assist": False,
                "stop_requested": False,
                "request_ids": [],
            },
        ],
    }
    line = fmt.format(MqttMessage(t.display("bus-7"), json.dumps(display).encode(), True, 1))
    assert line is not None
    assert (
        "route 11, next 시청 (S05) [2 waiting, ASSIST, STOP REQUESTED]; then S06; 12 on board"
        in line
    )
    assert "{" not in line  # words, not JSON
    assert fmt.format(MqttMessage(t.display("bus-7"), b"[1]", True, 1)) is not None


def test_route_filter_follows_waits_to_their_statuses_and_buses() -> None:
    from busbell._tail import TailFormatter

    t = Topics("x/busbell/v1")
    fmt = TailFormatter(t, route="11", clock=lambda: 0.0)
    w = json.dumps({"request_id": "w-1", "route_id": "11", "stop_id": "S1"}).encode()
    other = json.dumps({"request_id": "w-2", "route_id": "12", "stop_id": "S1"}).encode()
    assert fmt.format(MqttMessage(t.wait("11", "S1", "w-1"), w, True, 1)) is not None
    assert fmt.format(MqttMessage(t.wait("12", "S1", "w-2"), other, True, 1)) is None
    st = b'{"request_id":"w-1","state":"served","bus_id":"b1","t":0}'
    assert fmt.format(MqttMessage(t.request_status("w-1"), st, True, 1)) is not None
    st2 = b'{"request_id":"w-2","state":"served","bus_id":"b2","t":0}'
    assert fmt.format(MqttMessage(t.request_status("w-2"), st2, True, 1)) is None
    trip = b'{"t":0,"route_id":"11","direction_id":0}'
    assert fmt.format(MqttMessage(t.vehicle("b1", "trip"), trip, True, 1)) is not None
    assert fmt.format(MqttMessage(t.status("b1"), b'{"state":"online"}', True, 1)) is not None
    assert fmt.format(MqttMessage(t.status("b2"), b'{"state":"online"}', True, 1)) is None


def test_tail_hides_gnss_unless_asked(shared_broker: Any, topic_prefix: str) -> None:
    t = Topics(topic_prefix)
    gnss = b'{"t":1,"lat":37.5,"lon":127.0,"speed_mps":3.0}'

    async def publish() -> None:
        settings = MqttSettings(host=shared_broker.host, port=shared_broker.port)
        async with MqttSession(settings, f"{topic_prefix}-g", clean_start=True) as p:
            await p.publish(t.vehicle("b1", "gnss"), gnss, qos=1, retain=True)
            await p.publish(t.vehicle("b1", "doors"), b'{"t":1,"open":true}', qos=1, retain=True)

    asyncio.run(publish())
    base = [sys.executable, "-m", "busbell.cli", "tail", "--prefix", topic_prefix]
    try:
        r = subprocess.run(
            [*base, "--bus", "b1", "--count", "1"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        assert "vehicle_doors" in r.stdout
        assert "vehicle_gnss" not in r.stdout
        r = subprocess.run(
            [*base, "--bus", "b1", "--count", "2", "--gnss"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        assert "vehicle_gnss" in r.stdout
        assert "37.5,127.0 3.0 m/s" in r.stdout
        bad = subprocess.run(
            [*base, "--gtfs", "/nonexistent"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert bad.returncode == 2
        assert "GTFS" in bad.stderr
    finally:

        async def clear() -> None:
            settings = MqttSettings(host=shared_broker.host, port=shared_broker.port)
            async with MqttSession(settings, f"{topic_prefix}-gc", clean_start=True) as p:
                await p.publish(t.vehicle("b1", "gnss"), b"", qos=1, retain=True)
                await p.publish(t.vehicle("b1", "doors"), b"", qos=1, retain=True)

        asyncio.run(clear())


def test_ages_of_what_a_bus_says_use_the_bus_clock() -> None:
    """A replay or the demo's scenario time: the bus's clock is months behind ours."""
    from busbell._tail import TailFormatter

    t = Topics("x/busbell/v1")
    now = 1_764_000_000.0
    bus_t = now - 200 * 86400
    fmt = TailFormatter(t, clock=lambda: now)
    gnss = json.dumps({"t": bus_t, "lat": 37.5, "lon": 127.0, "speed_mps": 3.0}).encode()
    # the first fix is the bus's clock now: no 4800-hour age, and it sets the skew
    first = fmt.format(MqttMessage(t.vehicle("b1", "gnss"), gnss, False, 0)) or ""
    assert "lat" in first or "37.5" in first
    assert "age" not in first
    st = json.dumps({"request_id": "w-1", "state": "seen", "bus_id": "b1", "t": bus_t - 3}).encode()
    assert "(age 3.0s)" in (fmt.format(MqttMessage(t.request_status("w-1"), st, True, 1)) or "")
    disp = json.dumps({"bus_id": "b1", "t": bus_t - 12, "route_id": "11"}).encode()
    assert "(age 12s)" in (fmt.format(MqttMessage(t.display("b1"), disp, True, 1)) or "")
    # the backend's own statuses (no bus) are on the buses' time line too (its clock is
    # theirs: UTC in service, the scenario's in the demo)
    mine = json.dumps(
        {"request_id": "w-2", "state": "pending", "bus_id": None, "t": bus_t - 1}
    ).encode()
    assert "(age 1.0s)" in (fmt.format(MqttMessage(t.request_status("w-2"), mine, True, 1)) or "")


def test_a_wait_is_measured_on_the_buses_clock() -> None:
    """The demo's waits are stamped on its buses' clock (the scenario's date): the tail
    said 'EXPIRED (age 6548h16m)' of a live one, measuring it on the wall clock."""
    from busbell._tail import TailFormatter

    t = Topics("x/busbell/v1")
    now = 1_796_668_600.0
    bus_t = 1_773_094_960.0
    fmt = TailFormatter(t, clock=lambda: now)
    wait = {"request_id": "w-1", "route_id": "17", "stop_id": "S3", "source": "app"}
    wait |= {"t": bus_t - 60, "expires_t": bus_t + 840, "assist": False}

    def wait_line() -> str:
        msg = MqttMessage(t.wait("17", "S3", "w-1"), json.dumps(wait).encode(), True, 1)
        return fmt.format(msg) or ""

    # no bus clock known yet: ours (as in service, where they agree)
    assert "EXPIRED" in wait_line()
    status = {"bus_id": "b9", "t": bus_t, "clock": {"source": "gnss", "offset_s": bus_t - now}}
    fmt.format(MqttMessage(t.status("b9"), json.dumps(status).encode(), False, 1))
    first = wait_line()
    assert "app  expires in 14m00s (age 1m00s) [retained]" in first, first
    # the deny list is on the backend's own clock, not the buses'
    deny = {"version": 1, "rids": [], "devices": [], "t": now - 42}
    line = fmt.format(MqttMessage(t.denylist(), json.dumps(deny).encode(), True, 1)) or ""
    assert (
        "deny list v1: 0 rid(s), buses revoked: none; UNSIGNED (buses refuse it) (age 42s)" in line
    )
    deny |= {"version": 7, "rids": ["9f" * 12, "a0" * 12], "devices": ["B17"], "sig": "x"}
    deny |= {"from_interval": 2933333, "to_interval": 2933621}
    line = fmt.format(MqttMessage(t.denylist(), json.dumps(deny).encode(), True, 1)) or ""
    assert (
        "deny list v7: 2 rid(s) over intervals 2933333..2933621, buses revoked: B17; signed" in line
    )
    assert "9f9f" not in line  # a rider's rids are counted, never printed
    # a bus of the wait's route is preferred to another bus
    disp = {"bus_id": "b1", "t": bus_t + 600, "route_id": "17"}
    fmt.format(MqttMessage(t.display("b1"), json.dumps(disp).encode(), False, 1))
    assert "expires in 4m00s (age 11m00s)" in wait_line(), wait_line()


def test_refused_payloads_are_counted_logged_and_shown_with_the_reason() -> None:
    from structlog.testing import capture_logs

    from busbell._tail import TailFormatter

    t = Topics()
    fmt = TailFormatter(t)
    deep = b"[" * 100 + b"]" * 100
    with capture_logs() as logs:
        lines = [
            fmt.format(MqttMessage(t.status("b"), deep, False, 0)),
            fmt.format(MqttMessage(t.status("b"), b'{"n":' + b"9" * 30 + b"}", False, 0)),
        ]
    assert all(line is not None and "invalid_json" in line for line in lines)
    assert "too_deep" in (lines[0] or "")
    assert "int_range" in (lines[1] or "")
    assert fmt.rejects.counts == {"too_deep": 1, "int_range": 1}
    assert [(e["event"], e["reason"]) for e in logs] == [
        ("tail_payload_rejected", "too_deep"),
        ("tail_payload_rejected", "int_range"),
    ]


def test_ages_of_a_bus_use_its_clock_and_none_is_guessed_before_it_is_known() -> None:
    # A simulated bus runs on scenario time months from ours; a retained display may be
    # hours old. Ages use the bus's clock offset from its status or a live display.
    from busbell._tail import TailFormatter

    t = Topics("x/busbell/v1")
    now = 1_796_000_000.0
    months = -23_000_000.0  # the bus's clock minus ours
    fmt = TailFormatter(t, clock=lambda: now)

    def line(topic: str, body: dict[str, object], retain: bool) -> str:
        out = fmt.format(MqttMessage(topic, json.dumps(body).encode(), retain, 1))
        assert out is not None
        return out

    display = {"v": 1, "bus_id": "b1", "t": now + months - 30, "route_id": "11", "stops": []}
    first = line(t.display("b1"), display, True)
    assert "age" not in first  # retained and the bus's clock not known yet: no guess
    occ = {"bus_id": "b1", "t": now + months - 1, "on_board": 3}
    assert "age" not in line(t.occupancy("b1"), occ, False)
    status = {"bus_id": "b1", "t": now + months, "clock": {"source": "gnss", "offset_s": months}}
    assert "(age 0.0s)" in line(t.status("b1"), status, True)
    assert "(age 30s)" in line(t.display("b1"), display, True)
    # a live display is the bus's clock now; a retained one never moves the skew
    line(t.display("b2"), {**display, "bus_id": "b2", "t": now + months - 3600}, True)
    assert "age" not in line(t.occupancy("b2"), {**occ, "bus_id": "b2"}, False)
    line(t.display("b2"), {**display, "bus_id": "b2", "t": now + months}, False)
    assert "(age 1.0s)" in line(t.occupancy("b2"), {**occ, "bus_id": "b2"}, False)
    # a bus without a GNSS clock stamps with its system clock
    ext = {"bus_id": "b3", "t": now - 5, "clock": {"source": "external"}}
    assert "(age 5.0s)" in line(t.status("b3"), ext, False)
