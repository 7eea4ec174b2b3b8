"""The in-memory broker of tests/factories/mqtt.py does what Mosquitto does.

Each check runs against the fake and against the machine's Mosquitto (under a private
topic prefix and client ids), so tests that use the fake where the broker is not the
point rely on behaviour the real broker has. Failure injection (refuse, drop, stop)
exists only in the fake and is checked on it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest

from busbell import UplinkError
from busbell._mqtt import MqttMessage, MqttSession, MqttSettings, Session
from tests.factories.mqtt import FakeBroker

END = b"end"


@dataclass
class Broker:
    """One of the two brokers, seen through the session factory the code under test gets."""

    name: str
    prefix: str
    settings: MqttSettings
    factory: Callable[..., contextlib.AbstractAsyncContextManager[Any]]

    def session(self, client_id: str, **kw: Any) -> contextlib.AbstractAsyncContextManager[Any]:
        return self.factory(self.settings, f"{client_id}-{uuid.uuid4().hex[:8]}", **kw)

    def topic(self, rest: str) -> str:
        return f"{self.prefix}/{rest}"


@pytest.fixture(params=["fake", pytest.param("mosquitto", marks=pytest.mark.mosquitto)])
def broker(request: pytest.FixtureRequest, topic_prefix: str) -> Broker:
    settings = MqttSettings(prefix=topic_prefix)
    if request.param == "fake":
        return Broker("fake", topic_prefix, settings, FakeBroker().session)
    request.getfixturevalue("shared_broker")
    return Broker("mosquitto", topic_prefix, settings, MqttSession)


async def until_end(s: Session) -> list[MqttMessage]:
    """The messages before the first one whose payload is ``END``."""
    got: list[MqttMessage] = []
    async with asyncio.timeout(10):
        async for m in s.messages():
            if m.payload == END:
                return got
            got.append(m)
    raise AssertionError("unreachable: messages() ends only by raising")


async def test_wildcards_and_qos(broker: Broker) -> None:
    async with (
        broker.session("sub", clean_start=True) as sub,
        broker.session("pub", clean_start=True) as pub,
    ):
        await sub.subscribe([broker.topic("a/+/c")], qos=1)
        await sub.subscribe([broker.topic("b/#")], qos=0)
        for rest, qos in [("a/x/c", 1), ("a/x/y/c", 1), ("a/c", 1), ("b", 1), ("b/1/2", 1)]:
            await pub.publish(broker.topic(rest), rest.encode(), qos=qos)
        await pub.publish(broker.topic("b/end"), END, qos=1)
        got = await until_end(sub)
    assert [(m.topic, m.qos, m.retain) for m in got] == [
        (broker.topic("a/x/c"), 1, False),
        (broker.topic("b"), 0, False),  # '#' matches the parent level too
        (broker.topic("b/1/2"), 0, False),  # QoS is the lower of publish and subscription
    ]


async def test_retained_messages_on_subscribe_and_cleared_by_an_empty_payload(
    broker: Broker,
) -> None:
    async with broker.session("pub", clean_start=True) as pub:
        await pub.publish(broker.topic("r/1"), b"one", qos=1, retain=True)
        await pub.publish(broker.topic("r/2"), b"two", qos=1, retain=True)
        await pub.publish(broker.topic("r/2"), b"", qos=1, retain=True)  # cleared
        async with broker.session("sub", clean_start=True) as sub:
            await sub.subscribe([broker.topic("r/+")], qos=1)
            await pub.publish(broker.topic("r/3"), b"live", qos=1, retain=True)
            await pub.publish(broker.topic("r/end"), END, qos=1)
            got = await until_end(sub)
        await pub.publish(broker.topic("r/1"), b"", qos=1, retain=True)
        await pub.publish(broker.topic("r/3"), b"", qos=1, retain=True)
    assert [(m.topic, m.payload, m.retain) for m in got] == [
        (broker.topic("r/1"), b"one", True),
        (broker.topic("r/3"), b"live", False),  # live: retain as published is off
    ]


async def test_a_persistent_session_keeps_subscriptions_and_queues_qos1(broker: Broker) -> None:
    client_id = f"persist-{uuid.uuid4().hex[:8]}"
    settings = broker.settings

    def session(**kw: Any) -> contextlib.AbstractAsyncContextManager[Any]:
        return broker.factory(settings, client_id, **kw)

    async with session(clean_start=True):
        pass  # starts from nothing
    async with session() as s:
        await s.subscribe([broker.topic("q/#")], qos=1)
    async with broker.session("pub", clean_start=True) as pub:
        await pub.publish(broker.topic("q/1"), b"queued", qos=1)
        await pub.publish(broker.topic("q/2"), b"not queued (QoS 0)", qos=0)
        await pub.publish(broker.topic("q/end"), END, qos=1)
    async with session() as s:  # no subscribe: the session still has it
        got = await until_end(s)
    assert [(m.topic, m.payload) for m in got] == [(broker.topic("q/1"), b"queued")]
    async with broker.session("pub", clean_start=True) as pub:
        await pub.publish(broker.topic("q/3"), b"dropped by clean start", qos=1)
    async with session(clean_start=True) as s:
        await s.subscribe([broker.topic("q/end")], qos=1)
        async with broker.session("pub", clean_start=True) as pub:
            await pub.publish(broker.topic("q/end"), END, qos=1)
        assert await until_end(s) == []
    no_expiry = replace(settings, session_expiry_s=0)
    async with broker.factory(no_expiry, client_id, clean_start=True) as s:
        await s.subscribe([broker.topic("q/#")], qos=1)
    async with broker.session("pub", clean_start=True) as pub:
        await pub.publish(broker.topic("q/4"), b"nobody keeps this", qos=1)
    async with broker.factory(settings, client_id) as s:
        await s.subscribe([broker.topic("q/end")], qos=1)
        async with broker.session("pub", clean_start=True) as pub:
            await pub.publish(broker.topic("q/end"), END, qos=1)
        assert await until_end(s) == []
    async with broker.factory(no_expiry, client_id, clean_start=True):
        pass  # leaves no session behind on the shared broker


async def test_a_shared_subscription_gives_each_message_to_one_member(broker: Broker) -> None:
    group = f"g{uuid.uuid4().hex[:6]}"
    shared = f"$share/{group}/{broker.topic('s/+')}"
    async with (
        broker.session("m1", clean_start=True) as m1,
        broker.session("m2", clean_start=True) as m2,
        broker.session("pub", clean_start=True) as pub,
    ):
        await m1.subscribe([shared, broker.topic("end")], qos=1)
        await m2.subscribe([shared, broker.topic("end")], qos=1)
        for i in range(20):
            await pub.publish(broker.topic(f"s/{i}"), str(i).encode(), qos=1)
        await pub.publish(broker.topic("end"), END, qos=1)
        a, b = await until_end(m1), await until_end(m2)
    assert sorted(int(m.payload) for m in [*a, *b]) == list(range(20))


# --- failure injection (the fake only) --------------------------------------------------


async def test_refused_connects_and_a_dropped_connection_raise_uplink_error() -> None:
    broker, settings = FakeBroker(), MqttSettings(prefix="t")
    broker.refuse(2)
    for _ in range(2):
        with pytest.raises(UplinkError, match="refused"):
            async with broker.session(settings, "c"):
                pass
    async with broker.session(settings, "c", will=("t/will", b"gone", True)) as s:
        await s.subscribe(["t/x"])
        broker.drop("c")
        with pytest.raises(UplinkError, match="connection lost"):
            async for _ in s.messages():
                pass
        with pytest.raises(UplinkError, match="publish to t/x failed"):
            await s.publish("t/x", b"late")
    assert broker.retained["t/will"].payload == b"gone"
    async with broker.session(settings, "c2", will=("t/will2", b"gone", True)):
        pass  # a clean exit leaves no will
    assert "t/will2" not in broker.retained


async def test_stop_drops_everyone_until_start_and_a_takeover_drops_the_first() -> None:
    broker, settings = FakeBroker(), MqttSettings(prefix="t")
    async with broker.session(settings, "c") as first:
        async with broker.session(settings, "c"):  # same client id: takes over
            assert broker.is_connected("c")
            with pytest.raises(UplinkError, match="taken over"):
                await first.subscribe(["t/x"])
        broker.stop()
        with pytest.raises(UplinkError, match="refused"):
            async with broker.session(settings, "d"):
                pass
        broker.start()
        async with broker.session(settings, "d"):
            assert broker.is_connected("d")
