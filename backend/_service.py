"""The ``busbell backend run`` service.

The rider API, its broker link, ingest, key distribution and the wait ticker run in
one task group until ``stop``.

:class:`BrokerLink` keeps the API's MQTT session up (through
:class:`busbell._mqtt.ReconnectLoop`): it publishes for the API, feeds the fleet view and
the wait service, and relays the buses' request statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable, Coroutine
from typing import Any

from backend._api import ApiState, create_app
from backend._api_auth import ApiAuth
from busbell._errors import UplinkError
from busbell._http import serve_http
from busbell._logging import get_logger
from busbell._mqtt import SessionChange
from busbell._topics import Topics

__all__ = ["BrokerLink", "run_service"]

log = get_logger("backend.api")


class BrokerLink:
    """Keeps one MQTT session up for the API.

    It publishes for the API, feeds the fleet view and the wait service, and relays
    buses' request statuses (:mod:`backend._status_relay`).
    """

    def __init__(self, settings: Any, state: ApiState, client_id: str) -> None:
        from backend._status_relay import StatusRelay

        self.settings = settings
        self.state = state
        self.client_id = client_id
        self.relay = StatusRelay(state.topics)

    async def run(self) -> None:
        from busbell._mqtt import MqttSession, ReconnectLoop

        topics = self.state.topics
        waits = self.state.waits
        assert waits is not None
        subs = [
            f"{topics.prefix}/buses/+/vehicle/gnss",
            f"{topics.prefix}/buses/+/vehicle/trip",
            f"{topics.prefix}/buses/+/occupancy",
            *waits.subscriptions(),
            self.relay.subscription(),
        ]
        loop: ReconnectLoop[MqttSession] = ReconnectLoop(
            lambda: MqttSession(self.settings, self.client_id),
            initial_s=self.settings.backoff_initial_s,
            max_s=self.settings.backoff_max_s,
            on_change=self._changed,
        )

        async def follow(session: MqttSession) -> None:
            await session.subscribe(subs, qos=1)
            self.state.publisher = session
            loop.up()
            async for m in session.messages():
                assert self.state.fleet is not None
                try:
                    self.state.fleet.on_message(m.topic, m.payload)
                    await waits.on_message(m.topic, m.payload)
                    out = self.relay.on_message(m.topic, m.payload)
                    if out is not None:
                        await session.publish(out[0], out[1], qos=1, retain=True)
                except UplinkError:
                    raise
                except Exception:  # one message must never stop the API's link
                    log.exception("api_broker_message_failed", topic=m.topic[:200])

        await loop.run(follow)

    def _changed(self, change: SessionChange) -> None:
        if change.state == "up":
            log.info("api_broker_connected")
            return
        self.state.publisher = None
        if change.errors:
            log.warning("api_broker_lost", error=change.error)


async def run_service(config_path: Any = None, *, stop: asyncio.Event | None = None) -> int:
    """Run the backend: migrate, ingest, rider API, key publisher (until ``stop``).

    Returns:
        The exit status.
    """
    import uvicorn

    from backend._db import engine_for, migrate
    from backend.config import BackendConfig
    from busbell._config import load_config
    from busbell._gtfs import load_gtfs

    config = load_config(BackendConfig, config_path)
    db = config.database
    engine = engine_for(db)
    if db.migrate_on_start:
        await migrate(engine)
    feed = load_gtfs(config.files.gtfs) if config.files.gtfs is not None else None
    topics = Topics(config.mqtt.prefix)
    state = ApiState(
        engine=engine,
        topics=topics,
        feed=feed,
        wait_rules=config.waits.rules(),
        auth=ApiAuth.from_settings(config.api),
        clock=config.api.clock(),
    )
    assert state.waits is not None
    await state.waits.restore()
    app = create_app(state)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=config.api.host, port=config.api.port, log_level="warning", lifespan="off"
        )
    )
    stopper = stop or asyncio.Event()
    tasks: list[tuple[str, Callable[[], Coroutine[Any, Any, Any]]]] = [
        ("busbell-backend.api", lambda: serve_http(server)),
        (
            "busbell-backend.api-broker",
            BrokerLink(config.mqtt, state, f"busbell-backend-api-{secrets.token_hex(3)}").run,
        ),
    ]
    tasks.append(
        ("busbell-backend.waits", lambda: _wait_ticker(state, config.waits.tick_s, stopper))
    )
    from backend._ingest import run_ingest

    tasks.append(("busbell-backend.ingest", lambda: run_ingest(config, stop=stopper)))
    from backend._keys import run_key_distribution

    denylist_changed = asyncio.Event()
    state.on_denylist_changed = denylist_changed.set
    tasks.append(
        (
            "busbell-backend.keys",
            lambda: run_key_distribution(
                config, stop=stopper, changed=denylist_changed, engine=engine
            ),
        )
    )
    try:
        async with asyncio.TaskGroup() as tg:
            started = {
                name: tg.create_task(_stopping_the_rest(name, fn, stopper), name=name)
                for name, fn in tasks
            }

            async def _stop() -> None:
                await stopper.wait()
                # ingest sees `stop` too: it finishes the batch in flight (commit, then
                # ack), acks nothing it has not committed, and returns; only then (or
                # after the grace) is the rest cancelled
                await asyncio.wait({started["busbell-backend.ingest"]}, timeout=STOP_GRACE_S)
                server.should_exit = True
                raise _Stopped  # ends the task group: cancels the other tasks

            tg.create_task(_stop(), name="busbell-backend.stop")
    except* _Stopped:
        pass
    finally:
        await engine.dispose()
    return 0


async def _stopping_the_rest(
    name: str, fn: Callable[[], Coroutine[Any, Any, Any]], stop: asyncio.Event
) -> None:
    """Run one task of the service; when it ends (it failed, say), stop the others too.

    The task group cancels the others when one fails; setting ``stop`` as well lets the
    loops that watch it (ingest) finish their batch in flight instead of being cut off.
    """
    try:
        await fn()
    except Exception as exc:
        log.error("backend_task_failed", task=name, error=str(exc))
        raise
    finally:
        stop.set()


STOP_GRACE_S = 20.0
"""How long a stopping service waits for ingest to finish its batch in flight."""


class _Stopped(Exception):
    """Raised inside the service's task group when ``stop`` is set."""


async def _wait_ticker(state: ApiState, tick_s: float, stop: asyncio.Event) -> None:
    """Expire the waits whose lifetime is over, every ``tick_s``."""
    assert state.waits is not None
    while not stop.is_set():
        if state.publisher is not None:
            try:
                await state.waits.tick()
            except UplinkError as exc:
                log.warning("wait_expiry_deferred", error=str(exc))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(tick_s):
                await stop.wait()
