"""busbell._mqtt reaches into aiomqtt 2.5's private attributes to close the socket of a
failed or cancelled connect and free the client for the next attempt (aiomqtt leaves both
to the garbage collector). The version is pinned exactly in pyproject.toml; this test
fails loudly, before any broker test, if an upgrade moves what the adapter relies on."""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect

import aiomqtt

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
