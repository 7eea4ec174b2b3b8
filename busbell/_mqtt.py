"""The one MQTT 5 adapter of busbell (aiomqtt 2.x lives here and nowhere else).

aiomqtt 2.x does not reconnect by itself, acknowledges incoming QoS 1 messages before
application code runs, and by default starts a clean session with a random client id.
:class:`MqttSession` therefore always uses a stable client id, ``clean_start=False``
and a session expiry. :class:`ReconnectLoop` is the one reconnect loop of the tree:
it enters a session, runs the caller's body on it, and after a failure waits a
jittered exponential delay (:func:`backoff_delays`) before the next attempt, starting
the delays over once a session was healthy; :func:`retry_with_backoff` is the same
loop for an attempt that holds no session (binding a listening socket).
:class:`Session` is the protocol the loop's bodies use: :class:`MqttSession`, or the
in-memory fake of the tests. ``aiomqtt.MqttError`` is translated into
:class:`~busbell._errors.UplinkError` here.

:class:`MqttSession` closes the socket of a failed or cancelled connect and frees the
client for the next attempt through aiomqtt's private attributes (``_client_connect``,
``_connected``, ``_disconnected``, ``_lock``, paho's ``_sock_close``): aiomqtt is
therefore pinned to one exact version in ``pyproject.toml``, and
``tests/busbell/test_mqtt_internals.py`` fails first if an upgrade moves any of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Generic, Literal, Protocol, TypeVar, cast

import aiomqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from busbell._config import option
from busbell._errors import UplinkError
from busbell._logging import get_logger

__all__ = [
    "PENDING_PUBLISHES_QUIET",
    "MqttMessage",
    "MqttSession",
    "MqttSettings",
    "Publisher",
    "ReconnectLoop",
    "Session",
    "SessionChange",
    "backoff_delays",
    "retry_with_backoff",
    "topic_matches",
]

_log = get_logger("busbell.mqtt")
_FILTERS_PER_PACKET = 100


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """Connection settings for a broker (the ``[mqtt]`` config section)."""

    host: str = option("127.0.0.1", doc="Broker host name or address.")
    port: int = option(1883, doc="Broker TCP port.")
    client_id: str = option(
        "", doc="Stable MQTT client id; empty means derive one from the component and bus id."
    )
    username: str | None = option(None, doc="User name, if the broker requires one.")
    password: str | None = option(None, doc="Password, if the broker requires one.")
    prefix: str = option("busbell/v1", doc="Topic prefix for every busbell topic.")
    keepalive_s: int = option(30, doc="MQTT keep-alive interval in seconds.")
    session_expiry_s: int = option(
        86400, doc="Session expiry the broker keeps our subscriptions/queued QoS 1 for."
    )
    tls_ca: Path | None = option(None, doc="CA bundle; setting it turns TLS on.")
    tls_cert: Path | None = option(None, doc="Client certificate (PEM) for mutual TLS.")
    tls_key: Path | None = option(None, doc="Client private key (PEM) for mutual TLS.")
    backoff_initial_s: float = option(0.5, doc="First reconnect delay in seconds.")
    backoff_max_s: float = option(30.0, doc="Longest reconnect delay in seconds.")


@dataclass(frozen=True, slots=True)
class MqttMessage:
    """An incoming message."""

    topic: str
    payload: bytes
    retain: bool
    qos: int


def backoff_delays(
    initial_s: float, max_s: float, *, rng: random.Random | None = None
) -> Iterator[float]:
    """Endless "equal jitter" backoff delays: uniform(cap/2, cap), cap doubling up to max."""
    r = rng or random.Random()
    n = 0
    while True:
        cap = min(max_s, initial_s * (2**n))
        yield r.uniform(cap / 2, cap)
        n = min(n + 1, 30)


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches an MQTT ``topic_filter`` (``+`` one level, ``#`` the rest)."""
    fparts = topic_filter.split("/")
    tparts = topic.split("/")
    for i, f in enumerate(fparts):
        if f == "#":
            return True
        if i >= len(tparts) or (f != "+" and f != tparts[i]):
            return False
    return len(fparts) == len(tparts)


class Publisher(Protocol):
    """Where a component publishes: a :class:`Session`, or a test's recorder."""

    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 0,
        retain: bool = False,
        expiry_s: int | None = None,
    ) -> None:
        """Publish (QoS 1: returns once the broker has it); UplinkError when lost."""


class Session(Publisher, Protocol):
    """What a connected session offers: :class:`MqttSession` or an in-memory fake."""

    async def subscribe(self, topics: Sequence[str], qos: int = 1) -> None:
        """Subscribe to topic filters; UplinkError when lost."""

    async def unsubscribe(self, topics: Sequence[str]) -> None:
        """Unsubscribe from topic filters; UplinkError when lost."""

    def messages(self) -> AsyncIterator[MqttMessage]:
        """Incoming messages; raises UplinkError when the connection is lost."""


S = TypeVar("S")
R = TypeVar("R")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SessionChange:
    """A change of a :class:`ReconnectLoop`'s session, as given to its ``on_change``.

    ``state`` is ``"up"`` when the body reported the session healthy
    (:meth:`ReconnectLoop.up`), ``"lost"`` when a session that was up failed,
    ``"failed"`` when an attempt failed before it was up (both: the next attempt
    follows in ``retry_in_s``), and ``"closed"`` when the loop ended (stopped,
    cancelled, the body returned, or an error it does not retry) with a session up.
    """

    state: Literal["up", "lost", "failed", "closed"]
    errors: tuple[BaseException, ...] = ()
    retry_in_s: float = 0.0

    @property
    def error(self) -> str:
        """The errors' messages, ``"; "``-joined."""
        return "; ".join(str(e) for e in self.errors)


def _leaves(exc: BaseException) -> tuple[BaseException, ...]:
    if isinstance(exc, BaseExceptionGroup):
        return tuple(leaf for e in exc.exceptions for leaf in _leaves(e))
    return (exc,)


class ReconnectLoop(Generic[S]):
    """Connect, run a body on the session, back off and connect again after a failure.

    :meth:`run` enters ``connect()`` (an async context manager: a :class:`MqttSession`
    or a fake), awaits ``body(session)`` and returns what the body returns. An error in
    ``retry_on`` from entering or from the body (also inside an exception group, as
    a task group raises them) closes the session, is reported to ``on_change``
    (``"lost"``, or ``"failed"`` when the session never was up) and the next attempt
    follows after the next :func:`backoff_delays` delay. The body calls :meth:`up` once
    the session works (typically: subscribed): that is reported (``"up"``) and starts
    the delays over. Any other error ends the loop, as does a cancel or ``stop``.

    Args:
        connect: makes the session context manager for one attempt.
        initial_s: the first delay (seconds).
        max_s: the longest delay.
        retry_on: the errors that mean "try again" (default: UplinkError).
        on_change: called with every :class:`SessionChange` (counters, logs, flags).
        rng: the jitter's random source (tests).
    """

    def __init__(
        self,
        connect: Callable[[], AbstractAsyncContextManager[S]],
        *,
        initial_s: float,
        max_s: float,
        retry_on: tuple[type[Exception], ...] = (UplinkError,),
        on_change: Callable[[SessionChange], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._connect = connect
        self._initial_s = initial_s
        self._max_s = max_s
        self._retry_on = retry_on
        self._on_change = on_change
        self._rng = rng
        self._delays = backoff_delays(initial_s, max_s, rng=rng)
        self.is_up = False
        """Whether the current session was reported healthy (:meth:`up`)."""

    def up(self) -> None:
        """The current session works: report ``"up"`` (once) and start the delays over."""
        self._delays = backoff_delays(self._initial_s, self._max_s, rng=self._rng)
        if not self.is_up:
            self.is_up = True
            self._report(SessionChange("up"))

    def _report(self, change: SessionChange) -> None:
        if self._on_change is not None:
            self._on_change(change)

    async def run(
        self, body: Callable[[S], Awaitable[R]], *, stop: asyncio.Event | None = None
    ) -> R | None:
        """Run ``body`` on a session until it returns (its result), or until ``stop`` (None).

        Raises:
            Exception: an error that is not in ``retry_on``, unchanged.
        """
        try:
            while stop is None or not stop.is_set():
                failure: BaseException | None = None
                try:
                    async with self._connect() as session:
                        return await body(session)
                except* self._retry_on as group:
                    failure = group
                assert failure is not None  # the body returned otherwise
                was_up, self.is_up = self.is_up, False
                delay = next(self._delays)
                self._report(SessionChange("lost" if was_up else "failed", _leaves(failure), delay))
                if stop is None:
                    await asyncio.sleep(delay)
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):  # not wait_for: keeps a cancel
                            await stop.wait()
            return None
        finally:
            if self.is_up:
                self.is_up = False
                self._report(SessionChange("closed"))


async def retry_with_backoff(
    attempt: Callable[[], Awaitable[R]],
    *,
    initial_s: float,
    max_s: float,
    retry_on: tuple[type[Exception], ...],
    on_failure: Callable[[SessionChange], None] | None = None,
) -> R:
    """``attempt()`` until it succeeds, with :class:`ReconnectLoop`'s backoff between.

    For what holds no session (binding a listening socket): each failure in
    ``retry_on`` is reported to ``on_failure`` (state ``"failed"``, with the delay
    before the next attempt).
    """

    async def body(_: None) -> R:
        return await attempt()

    loop: ReconnectLoop[None] = ReconnectLoop(
        contextlib.nullcontext,
        initial_s=initial_s,
        max_s=max_s,
        retry_on=retry_on,
        on_change=on_failure,
    )
    # without stop, run ends only by returning the body's result
    return cast(R, await loop.run(body))


def _props(expiry_s: int | None) -> Properties | None:
    if expiry_s is None:
        return None
    p = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    p.MessageExpiryInterval = int(expiry_s)
    return p


@dataclass(slots=True)
class _ConnectStep:
    """One run of aiomqtt's blocking connect step in the executor thread.

    A cancel cannot stop that thread: ``finished`` (resolved on the event loop once the
    step returned, raised or was skipped) tells the cancelled ``__aenter__`` when the
    socket the step may have made exists and can be closed. ``abandoned`` makes a step
    still queued in the executor skip the connect.
    """

    finished: asyncio.Future[None]
    abandoned: bool = False


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


PENDING_PUBLISHES_QUIET = 100_000
"""Publishes in flight before aiomqtt logs a warning (its default: 10)."""


class MqttSession:
    """One connection to the broker (``async with``); reconnecting is the caller's loop.

    A session can be entered again after it exited or after an attempt failed or was
    cancelled, but not while it is connected or connecting (that raises
    :class:`~busbell._errors.UplinkError` and leaves the live connection alone).

    Args:
        settings: broker settings.
        client_id: the stable client id for this component.
        will: optional ``(topic, payload, retain)`` last-will message (QoS 1).
        clean_start: ``False`` (default) resumes the broker-side session.
        max_queued_incoming: incoming messages held before aiomqtt drops new ones.
        timeout_s: how long to wait for CONNACK, PUBACK or SUBACK, and how long a
            cancelled attempt waits for its TCP connect to return before it leaves the
            socket to be closed when it does.
    """

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        will: tuple[str, bytes, bool] | None = None,
        clean_start: bool = False,
        max_queued_incoming: int = 10000,
        timeout_s: float = 10.0,
    ) -> None:
        tls: ssl.SSLContext | None = None
        if settings.tls_ca is not None:
            tls = ssl.create_default_context(cafile=str(settings.tls_ca))
            if settings.tls_cert is not None:
                tls.load_cert_chain(
                    str(settings.tls_cert), settings.tls_key and str(settings.tls_key)
                )
        connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect_props.SessionExpiryInterval = settings.session_expiry_s
        self._client = aiomqtt.Client(
            settings.host,
            settings.port,
            identifier=client_id,
            username=settings.username,
            password=settings.password,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=clean_start,
            keepalive=settings.keepalive_s,
            properties=connect_props,
            tls_context=tls,
            will=aiomqtt.Will(will[0], will[1], qos=1, retain=will[2]) if will else None,
            max_queued_incoming_messages=max_queued_incoming,
            timeout=timeout_s,
        )
        # aiomqtt warns (plain text, once per publish) whenever more than 10 publishes
        # are in flight; busbell sends its QoS-1 fan-outs (a backend's acks to every bus
        # of a batch, an edge fleet's uploads) concurrently by design, one round trip
        # for all, so the warning only interleaved unstructured lines with the JSON logs.
        self._client.pending_calls_threshold = PENDING_PUBLISHES_QUIET
        self._timeout_s = timeout_s
        self._where = f"{settings.host}:{settings.port}"
        self._ack_at_once()
        self._keep_cancels()
        # aiomqtt runs this (paho's connect: DNS, TCP, TLS, CONNECT queued) with
        # loop.run_in_executor and keeps no handle on it; __aenter__ wraps it per attempt.
        self._connect_step: Callable[[], None] = self._client._client_connect

    async def __aenter__(self) -> MqttSession:
        step = _ConnectStep(asyncio.get_running_loop().create_future())
        self._track(step)
        try:
            await self._client.__aenter__()
        except aiomqtt.MqttReentrantError as exc:
            # raised before aiomqtt touched anything: the live attempt stays as it is
            raise UplinkError(
                f"MQTT session to {self._where} is already connected or connecting "
                "(a session is reusable, not reentrant)"
            ) from exc
        except aiomqtt.MqttError as exc:
            self._abandon()
            raise UplinkError(f"cannot connect to broker: {exc}") from exc
        except BaseException:
            await self._abandon_after(step)
            raise
        return self

    def _track(self, step: _ConnectStep) -> None:
        """Make aiomqtt's executor connect step of this attempt report to ``step``."""
        original = self._connect_step
        loop = step.finished.get_loop()

        def connect_step() -> None:  # runs in the executor thread
            try:
                if not step.abandoned:
                    original()
                    self._no_delay()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is already closed
                    loop.call_soon_threadsafe(_resolve, step.finished)

        # aiomqtt looks the step up on the instance when it submits it; setattr because
        # mypy does not let a method be assigned to
        setattr(self._client, "_client_connect", connect_step)  # noqa: B010

    def _no_delay(self) -> None:
        """Turn Nagle's algorithm off on the new socket (paho leaves it on).

        With it on, a small QoS 1 publish that follows another one waits for the
        broker's delayed ACK (40 ms on Linux) before it leaves: a display update or a
        request status would reach the driver tens of milliseconds late.
        """
        sock = self._client._client.socket()
        if isinstance(sock, socket.socket):  # ssl.SSLSocket is one too
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _keep_cancels(self) -> None:
        """Wait for aiomqtt's confirmations so that a cancel is never lost.

        aiomqtt waits for every PUBACK, SUBACK and CONNACK with ``asyncio.wait_for``, which
        on Python 3.11 drops a cancel that arrives as the awaited confirmation completes
        (the task goes on as if never cancelled: a task group's stop hung on the rider
        API's broker link, which was publishing). ``asyncio.timeout`` keeps the cancel;
        the timeout still ends as aiomqtt's ``MqttError("Operation timed out")``.
        """
        client = self._client

        async def wait_for(fut: Awaitable[T], timeout: float | None) -> T:  # noqa: ASYNC109
            limit = client.timeout if timeout is None else timeout
            try:
                async with asyncio.timeout(None if limit == math.inf else limit):
                    return await fut
            except TimeoutError:
                raise aiomqtt.MqttError("Operation timed out") from None

        setattr(client, "_wait_for", wait_for)  # noqa: B010 - mypy: assigning to a method

    def _ack_at_once(self) -> None:
        """Acknowledge what the broker sent at once, not after Linux's 40-ms delayed ACK.

        A broker that leaves Nagle's algorithm on (Mosquitto's default: no
        ``set_tcp_nodelay``) holds each small packet it has for us until we acknowledged
        the previous one; a client that had nothing to send back (a PUBACK received, a
        QoS 0 message) acknowledges only when the kernel's delayed-ACK timer fires. A
        wait then reached the bus ~40 ms late, and a display the terminal, after every
        publish. So after each read of the socket (aiomqtt calls paho's public
        ``loop_read`` by attribute on the instance) the pending ACK is pushed out with
        ``TCP_QUICKACK``, which Linux clears by itself and therefore must be set again.
        """
        quickack = getattr(socket, "TCP_QUICKACK", None)
        if quickack is None:  # not Linux
            return
        paho = self._client._client
        read = paho.loop_read

        def loop_read(max_packets: int = 1) -> MQTTErrorCode:
            rc = read(max_packets)
            sock = paho.socket()
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
            return rc

        setattr(paho, "loop_read", loop_read)  # noqa: B010 - mypy: assigning to a method

    async def _abandon_after(self, step: _ConnectStep) -> None:
        """Clean up an attempt that was cancelled (or failed unexpectedly).

        If the cancel came while the executor thread still connects, wait for that
        thread (up to ``timeout_s``, further cancels notwithstanding: the task still ends
        cancelled) so that the socket it makes is closed before ``__aenter__`` returns
        and no late CONNECT under our client id races the caller's next attempt. If the
        thread takes longer (a DNS lookup that hangs), the socket is closed and the
        session freed the moment it returns; until then entering it raises.
        """
        step.abandoned = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        cancelled_meanwhile = False
        while not step.finished.done() and (remaining := deadline - loop.time()) > 0:
            try:
                await asyncio.wait([step.finished], timeout=remaining)
            except asyncio.CancelledError:
                cancelled_meanwhile = True
        if step.finished.done():
            self._abandon()
        else:
            _log.warning(
                "mqtt_connect_outlived_cancel", broker=self._where, waited_s=self._timeout_s
            )
            step.finished.add_done_callback(lambda _: self._abandon())
        if cancelled_meanwhile:
            raise asyncio.CancelledError

    def _abandon(self) -> None:
        """Close the socket of a failed or cancelled attempt; ready the next one.

        aiomqtt 2.5 leaves the socket open when no CONNACK came in time or the attempt
        was cancelled (and keeps its reuse lock held and its ``_connected`` future
        cancelled when cancelled): every reconnect attempt to a broker that accepts but
        does not answer would hold a descriptor until the garbage collector found it,
        and entering the session again would fail at once. paho's own close also
        unregisters the socket from the loop. Must only run when the executor connect
        step has returned.
        """
        client = self._client
        client._client._sock_close()
        if client._connected.done():
            if not client._connected.cancelled():
                client._connected.exception()  # retrieved: no asyncio log
            client._connected = asyncio.get_running_loop().create_future()
        if client._disconnected.done():
            if not client._disconnected.cancelled():
                client._disconnected.exception()
            client._disconnected = asyncio.get_running_loop().create_future()
        if client._lock.locked():
            client._lock.release()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            await self._client.__aexit__(exc_type, exc, tb)

    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 0,
        retain: bool = False,
        expiry_s: int | None = None,
    ) -> None:
        """Publish; QoS 1 returns once the broker acknowledged (PUBACK).

        Raises:
            UplinkError: when the connection failed.
        """
        try:
            await self._client.publish(
                topic, payload, qos=qos, retain=retain, properties=_props(expiry_s)
            )
        except aiomqtt.MqttError as exc:
            raise UplinkError(f"publish to {topic} failed: {exc}") from exc

    async def subscribe(self, topics: Sequence[str], qos: int = 1) -> None:
        """Subscribe to topic filters (up to 100 filters per SUBSCRIBE packet).

        Raises:
            UplinkError: when the connection failed.
        """
        try:
            for i in range(0, len(topics), _FILTERS_PER_PACKET):
                chunk = topics[i : i + _FILTERS_PER_PACKET]
                if len(chunk) == 1:
                    await self._client.subscribe(chunk[0], qos=qos)
                else:
                    await self._client.subscribe([(t, qos) for t in chunk])
        except aiomqtt.MqttError as exc:
            raise UplinkError(f"subscribe failed: {exc}") from exc

    async def unsubscribe(self, topics: Sequence[str]) -> None:
        """Unsubscribe from topic filters (up to 100 per UNSUBSCRIBE packet).

        Raises:
            UplinkError: when the connection failed.
        """
        try:
            for i in range(0, len(topics), _FILTERS_PER_PACKET):
                await self._client.unsubscribe(list(topics[i : i + _FILTERS_PER_PACKET]))
        except aiomqtt.MqttError as exc:
            raise UplinkError(f"unsubscribe failed: {exc}") from exc

    async def messages(self) -> AsyncIterator[MqttMessage]:
        """Incoming messages until the connection drops.

        Raises:
            UplinkError: when the connection is lost.
        """
        try:
            async for m in self._client.messages:
                data = bytes(m.payload or b"")
                yield MqttMessage(m.topic.value, data, bool(m.retain), int(m.qos))
        except aiomqtt.MqttError as exc:
            raise UplinkError(f"connection lost: {exc}") from exc
