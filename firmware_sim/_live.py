"""Live mode: play one bus of a scenario in real time to a running edge daemon.

Vehicle signals go over MQTT (``buses/{bus}/vehicle/gnss|doors|trip``, JSON shaped like
the trace records without ``kind``), boarding-wait requests of the bus's route to
``routes/{route}/stops/{stop}/waits/{request}`` (retained, with a message expiry), and
advertisements either as trace-v1 ``adv`` lines over a TCP connection to the edge's
StreamSource (``tcp://HOST:PORT``) or through an emulated bluetoothd on D-Bus
(``bluez`` / ``bluez:ADDRESS``, :mod:`firmware_sim._bluez_feed`), where the edge's
bleak scanner hears them.

:func:`timed_adverts` is the hook for other live front-ends (for instance the
dbusmock BlueZ path of the edge's tests): it yields a scenario bus's advertisements in
time order, each stamped with its scenario time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from busbell import (
    AdvRecord,
    DoorRecord,
    GnssRecord,
    Topics,
    TraceRecord,
    TripRecord,
    get_logger,
    record_to_json,
)
from busbell._mqtt import MqttSession, MqttSettings
from firmware_sim._bluez_feed import BluezFeed, PrivateBluez, parse_bluez_target
from firmware_sim._output import GenerateOptions, generate, run_scenario

__all__ = ["LiveRun", "parse_tcp_target", "run_live", "timed_adverts", "timed_records"]


def _log() -> Any:
    """The module's logger (looked up per use: it must follow configure_logging)."""
    return get_logger("firmware_sim.live")


WAIT_EXPIRY_S = 900
SKIPPED_WAIT_LEAD_S = 240.0
"""How long (scenario time) before the bus passes a skipped stop its rider asks."""


def timed_records(
    name: str,
    seed: int,
    bus_id: str,
    *,
    scale: str = "small",
    options: GenerateOptions | None = None,
) -> Iterator[TraceRecord]:
    """Every record of one bus of a scenario, in time order (scenario time).

    Raises:
        KeyError: unknown scenario or bus.
    """
    run = run_scenario(name, seed, scale, options)
    if bus_id not in run.result.records:
        raise KeyError(f"scenario {name} has no bus {bus_id!r}; buses: {list(run.result.records)}")
    yield from run.result.records[bus_id]


def timed_adverts(
    name: str,
    seed: int,
    bus_id: str,
    *,
    scale: str = "small",
    options: GenerateOptions | None = None,
) -> Iterator[AdvRecord]:
    """The advertisements one bus's scanner hears in a scenario, in time order.

    Each :class:`busbell.AdvRecord` carries the scenario time ``t`` at which it is
    heard, its random address, RSSI and manufacturer data: a live front-end sleeps until
    ``t`` (scaled) and emits it.
    """
    for rec in timed_records(name, seed, bus_id, scale=scale, options=options):
        if isinstance(rec, AdvRecord):
            yield rec


def parse_tcp_target(text: str) -> tuple[str, int]:
    """Parse ``tcp://HOST:PORT`` (or ``HOST:PORT``).

    Raises:
        ValueError: not of that form.
    """
    rest = text.removeprefix("tcp://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected tcp://HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


class LiveRun:
    """Counters of a live run."""

    def __init__(self) -> None:
        self.gnss = 0
        self.doors = 0
        self.trips = 0
        self.adverts = 0
        self.waits = 0
        self.waits_failed = 0
        self.t_first = 0.0
        self.wall_start = 0.0
        self.bluez: dict[str, int] = {}
        self.bluez_address = ""


def _signal(rec: TraceRecord) -> tuple[str, dict[str, Any]] | None:
    obj = record_to_json(rec)
    obj.pop("kind", None)
    if isinstance(rec, GnssRecord):
        return "gnss", obj
    if isinstance(rec, DoorRecord):
        return "doors", obj
    if isinstance(rec, TripRecord):
        return "trip", obj
    return None


async def run_live(
    name: str,
    seed: int,
    bus_id: str,
    *,
    mqtt: MqttSettings,
    speed: float = 1.0,
    adv_target: str | None = None,
    scale: str = "small",
    now: bool = True,
    out_dir: Path | None = None,
    options: GenerateOptions | None = None,
    clock: Callable[[], float] = time.monotonic,
    wait_scanner_s: float = 60.0,
    on_ready: Callable[[LiveRun], None] | None = None,
    on_start: Callable[[LiveRun], None] | None = None,
    waits_api: str | None = None,
    api_token: str | None = None,
    start_unix: float | None = None,
) -> LiveRun:
    """Play one bus of a scenario live.

    Args:
        name: scenario.
        seed: seed.
        bus_id: which bus of the scenario.
        mqtt: broker settings (prefix included).
        speed: time factor (> 0).
        adv_target: ``tcp://HOST:PORT`` of the edge's StreamSource; ``bluez`` (start a
            private bus with the emulated bluetoothd) or ``bluez:ADDRESS`` (one already
            running the template); or None (no adverts).
        scale: scenario scale.
        now: shift the scenario to start a few seconds from now (token times then
            match the wall clock at speed 1).
        out_dir: also write the scenario (keys, FLEET.csv, truth) there, for the edge.
        options: generator options.
        clock: monotonic clock (injected for tests).
        wait_scanner_s: BlueZ path: wait this long for a client (the edge) to scan
            before playing (0: do not wait); playing starts anyway after it.
        on_ready: called once the advert target is up (``stats.bluez_address`` set for
            the BlueZ path), before waiting for the scanner.
        on_start: called as the first record is played (``stats.t_first`` is played
            at UNIX time ``stats.wall_start``; later records follow at ``speed``).
        waits_api: base URL of the backend's rider API: the riders' app waits are posted
            there (``POST /riders/{rider_id}/waits``), as their phones do, instead of
            being published on MQTT; stop call units still publish on MQTT.
        api_token: bearer token for ``waits_api`` (an operator's, ``riders:write``).
        start_unix: play the scenario's start (``truth.json`` ``t_start``) at this UNIX
            time, so that every bus of the scenario played with the same value keeps
            one clock with the others (and with a backend whose ``[api] clock_t`` is
            ``t_start`` at ``clock_at_unix`` = this, ``clock_speed`` = ``speed``); a bus
            started later catches up. ``None``: this bus's first record plays as it starts.

    With ``options.skip_stop_bus`` naming this bus, the bus drives past a stop nobody
    uses and a rider app asks it to stop there 4 minutes (scenario time) before: a
    missed stop for the edge to record.

    Raises:
        busbell.UplinkError: the broker is unreachable.
        OSError: the advert target refused the connection.
        RuntimeError: the BlueZ path could not start.
    """
    async with contextlib.AsyncExitStack() as stack:
        return await _run_live(
            stack,
            name=name,
            seed=seed,
            bus_id=bus_id,
            mqtt=mqtt,
            speed=speed,
            adv_target=adv_target,
            scale=scale,
            now=now,
            out_dir=out_dir,
            options=options,
            clock=clock,
            wait_scanner_s=wait_scanner_s,
            on_ready=on_ready,
            on_start=on_start,
            waits_api=waits_api,
            api_token=api_token,
            start_unix=start_unix,
        )


async def _stand_until_first_fix(
    session: MqttSession,
    topics: Topics,
    bus_id: str,
    records: list[TraceRecord],
    *,
    wall0: float,
    t_first: float,
    speed: float,
    clock: Callable[[], float],
) -> None:
    """Until the bus's first fix plays, its receiver has a fix where it stands, once a second.

    A shared start (``start_unix``) leaves a bus waiting before its first record. Its
    edge's clock is the system clock until a fix comes, but the run's clock is the
    scenario's date: a rider's wait (stamped by that clock) that came first would look
    long expired to the edge. With these fixes (each at the run's time then) the edge
    keeps the run's clock from the start, as a bus's receiver has its fix before the
    bus leaves the depot.
    """
    first = next((r for r in records if isinstance(r, GnssRecord)), None)
    if first is None:
        return
    first_at = wall0 + (first.t - t_first) / speed
    while (ahead := first_at - clock()) > 0.5:
        fix = dataclasses.replace(first, t=round(first.t - ahead * speed, 3), speed_mps=0.0)
        obj = record_to_json(fix)
        obj.pop("kind", None)
        await session.publish(
            topics.vehicle(bus_id, "gnss"), json.dumps(obj, separators=(",", ":")), qos=1
        )
        await asyncio.sleep(min(1.0, ahead - 0.5))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _post_wait(api: str, token: str | None, wait: dict[str, Any], expires_in_s: int) -> str:
    """POST a rider's wait to the rider API (blocking; run in a thread); its outcome.

    A rider API on this machine (a loopback host, as in ``busbell demo``) is reached
    directly even when ``http_proxy`` is set without a ``no_proxy`` for it: a proxy
    cannot reach this machine's loopback. A post that fails is logged as a warning
    (``live_wait_post_failed``), one that the API takes as ``live_wait_posted``.
    """
    body = {
        "route_id": wait["route_id"],
        "stop_id": wait["stop_id"],
        "assist": bool(wait.get("assist", False)),
        "expires_in_s": expires_in_s,
    }
    url = f"{api.rstrip('/')}/riders/{urllib.parse.quote(wait['rider_id'], safe='')}/waits"
    req = urllib.request.Request(  # noqa: S310 - an http(s) URL given by the operator
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {token}"} if token else {}),
        method="POST",
    )
    direct = _is_loopback(urllib.parse.urlsplit(url).hostname or "")
    opener = urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if direct else []))
    log = _log().bind(rider_id=wait["rider_id"], stop_id=wait["stop_id"], url=url)
    try:
        with opener.open(req, timeout=10) as resp:
            outcome = str(json.loads(resp.read()).get("request_id", "posted"))
    except urllib.error.HTTPError as exc:
        log.warning("live_wait_post_failed", reason=f"http_{exc.code}")
        return f"refused {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log.warning("live_wait_post_failed", reason=type(exc).__name__, error=str(exc))
        return f"failed: {exc}"
    log.info("live_wait_posted", outcome=outcome)
    return outcome


async def _run_live(  # noqa: PLR0912, PLR0915 - one linear script of a live run
    stack: contextlib.AsyncExitStack,
    *,
    name: str,
    seed: int,
    bus_id: str,
    mqtt: MqttSettings,
    speed: float,
    adv_target: str | None,
    scale: str,
    now: bool,
    out_dir: Path | None,
    options: GenerateOptions | None,
    clock: Callable[[], float],
    wait_scanner_s: float,
    on_ready: Callable[[LiveRun], None] | None,
    on_start: Callable[[LiveRun], None] | None,
    waits_api: str | None,
    api_token: str | None,
    start_unix: float | None,
) -> LiveRun:
    if speed <= 0:
        raise ValueError("speed must be positive")
    base = options or GenerateOptions()
    opts = GenerateOptions(
        gtfs_dir=base.gtfs_dir,
        radio=base.radio,
        cutoff_m=base.cutoff_m,
        pass_radius_m=base.pass_radius_m,
        alight_hold_s=base.alight_hold_s,
        gnss_sigma_m=base.gnss_sigma_m,
        tq_window_s=base.tq_window_s,
        start_at=float(int(time.time()) + 15) if now else base.start_at,
        skip_stop_bus=base.skip_stop_bus,
    )
    if out_dir is not None:
        generate(name, seed, out_dir, scale, opts)
    run = run_scenario(name, seed, scale, opts)
    records = run.result.records.get(bus_id)
    if records is None:
        raise KeyError(f"scenario {name} has no bus {bus_id!r}; buses: {list(run.result.records)}")
    route = run.result.plans[bus_id].path.route_id
    waits = sorted((r for r in run.result.requests if r["route_id"] == route), key=lambda r: r["t"])
    first_t = min((r.t for r in records), default=0.0)
    for skipped in run.result.skipped_stops:
        if skipped["bus_id"] != bus_id:
            continue
        # a rider app's wait at the stop the driver will not stop at
        asking = sorted(
            set(run.result.rider_keys) - {w.get("rider_id") for w in run.result.requests}
        )
        waits.append(
            {
                "t": max(first_t, skipped["t"] - SKIPPED_WAIT_LEAD_S),
                "route_id": route,
                "stop_id": skipped["stop_id"],
                "source": "app",
                "request_id": f"rq-{seed}-skipped-{bus_id}",
                "rider_id": asking[0] if asking else sorted(run.result.rider_keys)[0],
            }
        )
        _log().info("live_skipped_stop", bus_id=bus_id, stop_id=skipped["stop_id"])
    waits.sort(key=lambda r: r["t"])
    topics = Topics(mqtt.prefix)
    stats = LiveRun()
    writer: asyncio.StreamWriter | None = None
    feed: BluezFeed | None = None
    if adv_target and adv_target.startswith("bluez"):
        address = parse_bluez_target(adv_target)
        if address is None:
            bluez = await stack.enter_async_context(PrivateBluez())
            address = bluez.address
        feed = BluezFeed(address)
        await feed.connect()
        stack.callback(feed.close)
        await feed.ensure_adapter()
        stats.bluez_address = address
    elif adv_target:
        host, port = parse_tcp_target(adv_target)
        _, writer = await asyncio.open_connection(host, port)
    if on_ready is not None:
        on_ready(stats)
    if feed is not None and wait_scanner_s > 0 and not await feed.wait_scanning(wait_scanner_s):
        _log().warning("live_no_scanner", waited_s=wait_scanner_s)
    items: list[tuple[float, int, Any]] = [(r.t, 1, r) for r in records]
    items += [(float(w["t"]), 0, w) for w in waits]
    items.sort(key=lambda it: (it[0], it[1]))
    if not items:
        return stats
    t_first = items[0][0]
    if start_unix is not None:
        t_first = run.result.t0
    client_id = mqtt.client_id or f"busbell-sim-{bus_id}"
    _log().info("live_started", scenario=name, bus_id=bus_id, records=len(items), speed=speed)
    try:
        async with MqttSession(mqtt, client_id, clean_start=True) as session:
            wall0 = clock()
            stats.t_first, stats.wall_start = t_first, time.time()
            if start_unix is not None:
                # the scenario's start plays at start_unix on every bus's run
                wall0 += start_unix - stats.wall_start
                stats.wall_start = start_unix
                await _stand_until_first_fix(
                    session,
                    topics,
                    bus_id,
                    records,
                    wall0=wall0,
                    t_first=t_first,
                    speed=speed,
                    clock=clock,
                )
            if on_start is not None:
                on_start(stats)
            for t, order, item in items:
                delay = wall0 + (t - t_first) / speed - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                if order == 0 and waits_api and item.get("source") == "app":
                    outcome = await asyncio.to_thread(
                        _post_wait, waits_api, api_token, item, WAIT_EXPIRY_S
                    )
                    stats.waits += 1
                    if outcome.startswith(("refused ", "failed: ")):
                        stats.waits_failed += 1
                    continue
                if order == 0:
                    payload = {
                        **item,
                        "expires_t": item["t"] + WAIT_EXPIRY_S,
                        "assist": bool(item.get("assist", False)),
                    }  # exactly the Bells v1 wait (busbell.validate_wait)
                    payload.pop("bus_id", None)
                    payload.pop("rider_id", None)
                    topic = topics.wait(item["route_id"], item["stop_id"], item["request_id"])
                    await session.publish(
                        topic, json.dumps(payload), qos=1, retain=True, expiry_s=WAIT_EXPIRY_S
                    )
                    stats.waits += 1
                    continue
                rec: TraceRecord = item
                if isinstance(rec, AdvRecord):
                    if feed is not None:
                        await feed.advertise(rec)
                        stats.adverts += 1
                    elif writer is not None:
                        line = json.dumps(record_to_json(rec), separators=(",", ":")) + "\n"
                        writer.write(line.encode())
                        if writer.transport.get_write_buffer_size() > 1 << 20:
                            await writer.drain()
                        stats.adverts += 1
                    continue
                sig = _signal(rec)
                if sig is None:
                    continue
                kind, obj = sig
                await session.publish(
                    topics.vehicle(bus_id, kind),
                    json.dumps(obj, separators=(",", ":")),
                    qos=1,
                    retain=kind == "trip",
                )
                if kind == "gnss":
                    stats.gnss += 1
                elif kind == "doors":
                    stats.doors += 1
                else:
                    stats.trips += 1
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    if feed is not None:
        stats.bluez = dict(feed.outcomes)
    _log().info(
        "live_finished",
        bluez=stats.bluez,
        scenario=name,
        bus_id=bus_id,
        gnss=stats.gnss,
        doors=stats.doors,
        adverts=stats.adverts,
        waits=stats.waits,
    )
    return stats
