"""busbell._mqtt reaches into aiomqtt 2.5's private attributes to close the socket of a
failed or cancelled connect and free the client for the next attempt (aiomqtt leaves both
to the garbage collector). The version is pinned exactly in pyproject.toml; this test
fails loudly, before any broker test, if an upgrade moves what the adapter relies on."""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import socket
import uuid
from typing import Any

import aiomqtt
import pytest

from busbell._mqtt import MqttSession, MqttSettings


def test_aiomqtt_is_the_pinned_version() -> None:
    assert importlib.metadata.version("aiomqtt") == "2.5.1"
    requires = importlib.metadata.requires("busbell") or []
    assert "aiomqtt==2.5.1" in requires


async def test_private_attributes_the_adapter_uses_exist() -> None:
    session = MqttSession(MqttSettings(port=1), "internals-check")
    client = session._client
    assert isinstance(client, aiomqtt.Client)
    # the executor connect step aiomqtt submits by attribute lookup on the instance
    assert callable(client._client_connect)
    src = inspect.getsource(aiomqtt.Client.__aenter__)
    assert "self._client_connect" in src
    assert "run_in_executor" in src
    # what _abandon() closes and resets
    assert callable(client._client._sock_close)
    assert isinstance(client._connected, asyncio.Future)
    assert isinstance(client._disconnected, asyncio.Future)
    assert isinstance(client._lock, asyncio.Lock)


def test_aiomqtt_reads_the_socket_through_paho_loop_read_on_the_instance() -> None:
    # MqttSession._ack_at_once wraps loop_read on the paho instance
    src = inspect.getsource(aiomqtt.Client._on_socket_open)
    assert "client.loop_read()" in src


@pytest.mark.mosquitto
async def test_every_read_of_the_socket_acknowledges_at_once(
    shared_broker: Any, topic_prefix: str
) -> None:
    settings = MqttSettings(host=shared_broker.host, port=shared_broker.port)
    session = MqttSession(settings, f"quickack-{uuid.uuid4().hex[:8]}", clean_start=True)
    paho = session._client._client
    ours = paho.loop_read
    after_reads: list[int] = []

    def probe(max_packets: int = 1) -> Any:
        sock = paho.socket()
        assert isinstance(sock, socket.socket)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)  # delayed ACKs
        rc = ours(max_packets)
        after_reads.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK))
        return rc

    setattr(paho, "loop_read", probe)  # noqa: B010
    topic = f"{topic_prefix}/quickack"
    async with session:
        await session.subscribe([topic])
        await session.publish(topic, b"x", qos=1)
        async with asyncio.timeout(10):
            async for m in session.messages():
                assert m.payload == b"x"
                break
    assert after_reads
    assert set(after_reads) == {1}


async def test_a_cancel_as_a_confirmation_completes_is_kept() -> None:
    # aiomqtt's own _wait_for (asyncio.wait_for) returns the result and drops this cancel
    # on Python 3.11; a task group's stop then hung on a link that was publishing
    session = MqttSession(MqttSettings(port=1), "cancel-check")
    confirmation: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiting = asyncio.create_task(session._client._wait_for(confirmation, 5.0))
    await asyncio.sleep(0)  # it waits for the confirmation now
    confirmation.set_result(None)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_a_confirmation_that_never_comes_still_times_out() -> None:
    session = MqttSession(MqttSettings(port=1), "timeout-check")
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with pytest.raises(aiomqtt.MqttError, match="Operation timed out"):
        await session._client._wait_for(never, 0.01)


@pytest.mark.mosquitto
async def test_a_fan_out_of_publishes_logs_no_aiomqtt_warning(
    shared_broker: Any, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # a backend acks every bus of a batch at once (one QoS-1 round trip for all);
    # aiomqtt's plain-text "pending publish calls" warning, one line per publish over
    # 10 in flight, must not interleave with the JSON logs
    settings = MqttSettings(host=shared_broker.host, port=shared_broker.port)
    session = MqttSession(settings, f"fanout-{uuid.uuid4().hex[:8]}", clean_start=True)
    async with session:
        with caplog.at_level("WARNING", logger="mqtt"):
            await asyncio.gather(
                *(session.publish(f"{topic_prefix}/fanout/{i}", b"x", qos=1) for i in range(50))
            )
    assert [r.getMessage() for r in caplog.records if r.name == "mqtt"] == []
