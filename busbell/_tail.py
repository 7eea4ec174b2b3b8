"""``busbell tail``: follow busbell MQTT topics, human-readable, with filters (for ops).

Waits and request statuses print as readable lines (route, stop name from GTFS with
``--gtfs``, state, the bus, age), display models as a one-line summary of the driver's
screen; high-rate vehicle GNSS is hidden unless ``--gnss`` (or ``--kind vehicle_gnss``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, cast

from busbell._errors import ContractError, UplinkError
from busbell._logging import configure_logging, get_logger
from busbell._mqtt import MqttMessage, MqttSession, MqttSettings, ReconnectLoop, SessionChange
from busbell._rejects import RejectLog
from busbell._safejson import JsonLimits, JsonRejected, loads_bounded
from busbell._topics import DEFAULT_PREFIX, Topics

_log = get_logger("busbell.tail")

TAIL_LIMITS = JsonLimits(max_bytes=1024 * 1024)
"""What ``busbell tail`` parses: the largest busbell payload is a fares batch
(``uplink.batch_max_bytes``, 256 KiB by default); depth and integers as everywhere."""

__all__ = ["TailFormatter", "format_message", "main"]

EPILOG = """\
examples:
  busbell tail                                   # everything under busbell/v1
  busbell tail --bus bus-0001 --kind status,fares_ack
  busbell tail --route 11 --gtfs gtfs/               # route 11's waits, statuses, buses
  busbell tail --bus bus-0001 --gnss               # with its GNSS fixes (hidden by default)
  busbell tail --route 11 --kind wait,request_status --json
  busbell tail --broker mqtt.example.net:8883 --prefix fleet-a/busbell/v1 --count 10

credentials (the shipped brokers refuse anonymous clients; use the read-only ops user):
  BUSBELL_MQTT__PASSWORD=... busbell tail --username ops   # the bus's own broker
  # the central broker, as the certificate with CN busbell+ops:
  busbell tail --broker mqtt.example.net:8883 --tls-ca ca.pem --tls-cert ops.pem --tls-key ops.key
"""

KINDS = (
    "status",
    "display",
    "occupancy",
    "vehicle_gnss",
    "vehicle_doors",
    "vehicle_trip",
    "driver_ack",
    "fares",
    "fares_ack",
    "fares_resend",
    "fleet_keys",
    "wait",
    "request_status",
    "denylist",
)


def _age(seconds: float) -> str:
    """A short human duration: ``0.4s``, ``12s``, ``3m05s``, ``2h01m``."""
    s = max(0.0, seconds)
    if s < 10:
        return f"{s:.1f}s"
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)


def _fares_words(body: dict[str, Any]) -> str:
    events = body.get("events", [body])
    if not isinstance(events, list):
        events = []
    seqs = [e["seq"] for e in events if isinstance(e, dict) and isinstance(e.get("seq"), int)]
    rng = f"seq {min(seqs)}..{max(seqs)}" if seqs else "no seq"
    return f"{len(events)} event(s), {rng}"


def _driver_ack_words(body: dict[str, Any]) -> str:
    ids = body.get("request_ids")
    return f"driver acknowledged {', '.join(map(str, ids)) if isinstance(ids, list) else '?'}"


def _summary(kind: str, body: Any) -> str:
    if not isinstance(body, dict):
        return json.dumps(body, ensure_ascii=False)[:200]
    words = _SUMMARIES.get(kind)
    if words is not None:
        return words(body)
    return " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in body.items())[:300]


def _denylist_words(body: dict[str, Any]) -> str:
    """The deny list in words; its rids are counted, never printed (they are riders')."""
    rids, devices = body.get("rids"), body.get("devices")
    n = len(rids) if isinstance(rids, list) else "?"
    span = f" over intervals {body.get('from_interval')}..{body.get('to_interval')}"
    if body.get("from_interval") is None:
        span = ""
    buses = ", ".join(map(str, devices)) if isinstance(devices, list) and devices else "none"
    signed = "signed" if body.get("sig") else "UNSIGNED (buses refuse it)"
    return f"deny list v{body.get('version')}: {n} rid(s){span}, buses revoked: {buses}; {signed}"


_SUMMARIES: dict[str, Callable[[dict[str, Any]], str]] = {
    "fares": _fares_words,
    "fares_ack": lambda b: f"acked up to seq {b.get('upto_seq')}",
    "fares_resend": lambda b: f"resend seq {b.get('from_seq')}..{b.get('to_seq')}",
    "fleet_keys": lambda b: "fleet keys delivered (encrypted)",
    "vehicle_gnss": lambda b: f"{b.get('lat')},{b.get('lon')} {b.get('speed_mps')} m/s",
    "vehicle_doors": lambda b: "doors OPEN" if b.get("open") else "doors closed",
    "vehicle_trip": lambda b: (
        f"trip {b.get('route_id')}/{b.get('direction_id')} {b.get('trip_id') or ''}"
    ),
    "driver_ack": _driver_ack_words,
    "denylist": _denylist_words,
}
"""One line's words for a message kind with no richer rendering (``_bus_words``, waits...)."""


def _sub(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key)
    return value if isinstance(value, dict) else {}


def _bus_words(kind: str, body: dict[str, Any]) -> str | None:
    """A bus's status or occupancy in words; ``None`` for anything else (or unreadable)."""
    if kind == "status" and isinstance(body.get("state"), str):
        return _bus_status(body)
    if kind == "occupancy" and isinstance(body.get("on_board"), int):
        return f"{body['on_board']} on board"
    return None


def _bus_status(body: dict[str, Any]) -> str:
    """A bus's status in words: state, what waits to upload, who is aboard, what is wrong."""
    state = body.get("state")
    words = [str(state) if state == "online" else str(state or "?").upper()]
    for key, fmt in (
        ("backlog", "{} fare event(s) to upload"),
        ("on_board", "{} on board"),
        ("tokens_in_range", "{} tokens in range"),
    ):
        if isinstance(body.get(key), int):
            words.append(fmt.format(body[key]))
    bells = _sub(body, "bells")
    if isinstance(bells.get("live_waits"), int):
        words.append(f"{bells['live_waits']} live wait(s)")
    if bells.get("missed_recorded"):
        words.append(f"{bells['missed_recorded']} missed stop(s) recorded")
    if _sub(body, "uplink").get("connected") is False:
        words.append("UPLINK DOWN")
    if _sub(body, "store").get("ok") is False:
        words.append("FARE STORE FAILING")
    if _sub(body, "fleet_keys").get("warning"):
        words.append("FLEET KEYS RUNNING OUT")
    if _sub(body, "denylist").get("bus_revoked"):
        words.append("BUS REVOKED")
    clock = _sub(body, "clock")
    if isinstance(clock.get("source"), str):
        words.append(f"clock {clock['source']}")
    if body.get("version") or body.get("build"):
        words.append(" ".join(str(body[k]) for k in ("version", "build") if body.get(k)))
    return ", ".join(words)


class TailFormatter:
    """Turns busbell messages into readable lines, remembering what gives them context.

    Waits tell which route and stop a request id is for (so a later status line says
    where), display models and trips which route a bus serves (for ``route``
    filtering). Stop names come from ``stops`` (GTFS) when given.

    Args:
        topics: topic names under the prefix followed.
        stops: stop id -> stop name (GTFS), for readable stops.
        clock: wall time, for the age of a message (its ``t``) and of a wait's expiry.
        route: only lines about this route (waits, their statuses, its buses).
    """

    def __init__(
        self,
        topics: Topics,
        *,
        stops: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        route: str | None = None,
    ) -> None:
        self.topics = topics
        self.stops = dict(stops or {})
        self.clock = clock
        self.route = route
        self._requests: dict[str, tuple[str, str]] = {}
        self._bus_route: dict[str, str] = {}
        self._skew: dict[str, float] = {}
        """Per bus, its clock (GNSS) minus ours: ages of what a bus says use its clock.

        Learnt from the bus's status (its clock's offset from its system clock) or from a
        live display or GNSS fix; until then a bus's messages carry no age (a retained
        one may be hours old, and a simulated bus's clock may be months from ours)."""
        self.rejects = RejectLog(_log, "tail_payload_rejected")
        """Payloads the bounded parser refused, by reason (logged to stderr, rate-limited)."""

    def _learn_clock(self, bus: str, body: Any) -> None:
        # A status says how far the bus's clock (GNSS) is from its system clock: the
        # skew of everything that bus stamps, retained or not.
        clock = body.get("clock") if isinstance(body, dict) else None
        if not isinstance(clock, dict):
            return
        if clock.get("source") == "external":
            self._skew[bus] = 0.0
        elif (offset := _num(clock.get("offset_s"))) is not None:
            self._skew[bus] = offset

    def _route_skew(self, route: str | None) -> float:
        """The buses' clock minus ours for what the backend stamps about a route (waits).

        A wait's ``t`` and ``expires_t`` are on the buses' time line (the backend's clock
        is theirs: UTC in service, the scenario's date in ``busbell demo``): they are
        measured on the clock of a bus of that route, or of any bus, once one is known.
        """
        known = [b for b in self._skew if self._bus_route.get(b) == route] or list(self._skew)
        return self._skew[known[-1]] if known else 0.0

    def stop(self, stop_id: Any) -> str:
        """``Name (id)`` when the name is known, else the id."""
        sid = str(stop_id)
        name = self.stops.get(sid)
        return f"{name} ({sid})" if name else sid

    def _about_route(self, kind: str, ids: Mapping[str, str]) -> bool:
        if self.route is None:
            return True
        if kind == "wait":
            return ids["route"] == self.route
        if kind == "request_status":
            return self._requests.get(ids["request"], ("", ""))[0] == self.route
        bus = ids.get("bus")
        return bus is not None and self._bus_route.get(bus) == self.route

    def _learn(self, kind: str, ids: Mapping[str, str], body: Any) -> None:
        if kind == "wait":
            self._requests[ids["request"]] = (ids["route"], ids["stop"])
            while len(self._requests) > 100_000:
                del self._requests[next(iter(self._requests))]
        elif kind in ("display", "vehicle_trip") and isinstance(body, dict):
            route = body.get("route_id")
            if isinstance(route, str):
                self._bus_route[ids["bus"]] = route

    def _wait(self, ids: Mapping[str, str], body: Any, now: float) -> str:
        where = f"{ids['route']} @ {self.stop(ids['stop'])}"
        if body is None:
            return f"{where}  {ids['request']}  (cleared: served, cancelled or expired)"
        if not isinstance(body, dict):
            return f"{where}  {ids['request']}  {_summary('wait', body)}"
        parts = [str(body.get("source") or "?")]
        if body.get("assist") is True:
            parts.append("ASSIST")
        expires = _num(body.get("expires_t"))
        left = "" if expires is None else f"  expires in {_age(expires - now)}"
        if expires is not None and expires <= now:
            left = "  EXPIRED"
        return f"{where}  {ids['request']}  {', '.join(parts)}{left}"

    def _status(self, ids: Mapping[str, str], body: Any) -> str:
        rid = ids["request"]
        where = self._requests.get(rid)
        at = f"  ({where[0]} @ {self.stop(where[1])})" if where else ""
        if not isinstance(body, dict):
            return f"{rid}  {_summary('request_status', body)}{at}"
        state = str(body.get("state", "?")).upper()
        bus = body.get("bus_id")
        by = f" by {bus}" if isinstance(bus, str) else ""
        return f"{rid}  {state}{by}{at}"

    def _display(self, body: Any) -> str:
        if not isinstance(body, dict):
            return _summary("display", body)

        def stop_words(s: Any) -> str:
            if not isinstance(s, dict):
                return "?"
            name = s.get("name")
            sid = s.get("stop_id")
            words = [f"{name} ({sid})" if isinstance(name, str) and name else self.stop(sid)]
            waits = s.get("waits")
            if isinstance(waits, int) and waits > 0:
                words.append(f"{waits} waiting")
            if s.get("assist") is True:
                words.append("ASSIST")
            if s.get("stop_requested") is True:
                words.append("STOP REQUESTED")
            return words[0] + (f" [{', '.join(words[1:])}]" if len(words) > 1 else "")

        route = body.get("route_id") or "no trip"
        nxt = body.get("next_stop")
        head = f"route {route}, next " + (stop_words(nxt) if nxt else "stop unknown")
        stops = body.get("stops")
        later = [s for s in stops if s != nxt] if isinstance(stops, list) else []
        then = f"; then {', '.join(stop_words(s) for s in later[:3])}" if later else ""
        more = f" +{len(later) - 3} more" if len(later) > 3 else ""
        on_board = body.get("on_board")
        tail = f"; {on_board} on board" if isinstance(on_board, int) else ""
        online = "" if body.get("online", True) else "; OFFLINE (no uplink)"
        return head + then + more + tail + online

    def format(self, msg: MqttMessage, *, as_json: bool = False) -> str | None:
        """One line for a message; ``None`` if not a busbell topic or not for ``route``."""
        parsed = self.topics.parse(msg.topic)
        if parsed is None:
            return None
        body: Any
        if not msg.payload:
            body = None
        else:
            try:
                body = loads_bounded(msg.payload, TAIL_LIMITS)
            except JsonRejected as exc:
                self.rejects.reject(exc.reason, topic=msg.topic)
                body = {
                    "invalid_json": msg.payload[:80].decode("utf-8", "replace"),
                    "reason": exc.reason,
                }
        self._learn(parsed.kind, parsed.ids, body)
        if not self._about_route(parsed.kind, parsed.ids):
            return None
        now = self.clock()
        stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%H:%M:%S.%f")[:-3]
        if as_json:
            return json.dumps(
                {
                    "at": stamp,
                    "kind": parsed.kind,
                    **parsed.ids,
                    "retained": msg.retain,
                    "body": body,
                },
                ensure_ascii=False,
            )
        who = "/".join(parsed.ids.values()) or "-"
        if parsed.kind == "wait":
            text, who = (
                self._wait(parsed.ids, body, now + self._route_skew(parsed.ids["route"])),
                "-",
            )
        elif parsed.kind == "request_status" and body is not None:
            text, who = self._status(parsed.ids, body), "-"
        elif parsed.kind == "display" and body is not None:
            text = self._display(body)
        elif isinstance(body, dict) and (words := _bus_words(parsed.kind, body)) is not None:
            text = words
        else:
            text = "(cleared)" if body is None else _summary(parsed.kind, body)
        t = _num(body.get("t")) if isinstance(body, dict) else None
        bus = parsed.ids.get("bus")
        if bus is None and isinstance(body, dict) and isinstance(body.get("bus_id"), str):
            bus = body["bus_id"]  # a request status a bus published
        age = ""
        if t is not None and parsed.kind != "fares":
            if parsed.kind == "status" and bus is not None:
                self._learn_clock(bus, body)
            if bus is not None:
                skew = self._skew.get(bus)
            elif parsed.kind not in ("wait", "request_status"):
                skew = 0.0  # the deny list: the backend's own (wall) clock
            else:  # a wait, or the backend's status of one: on the buses' time line
                route = (
                    parsed.ids.get("route")
                    or self._requests.get(parsed.ids.get("request", ""), ("", ""))[0]
                )
                skew = self._route_skew(route or None)
            if skew is not None:
                age = f" (age {_age(now + skew - t)})"
            if parsed.kind in ("display", "vehicle_gnss") and not msg.retain:
                # fresh from the bus: its time is the bus's clock now (after its own age)
                self._skew[parsed.ids["bus"]] = t - now
        flag = " [retained]" if msg.retain else ""
        lead = f"{stamp} {parsed.kind:<14} " + (f"{who:<24} " if who != "-" else "")
        return f"{lead}{text}{age}{flag}"


def format_message(topics: Topics, msg: MqttMessage, *, as_json: bool = False) -> str | None:
    """One human-readable (or JSON) line for a message; ``None`` if not a busbell topic."""
    return TailFormatter(topics).format(msg, as_json=as_json)


def _filters(topics: Topics, a: argparse.Namespace) -> list[str]:
    if a.bus:
        return [f"{topics.prefix}/buses/{a.bus}/#"]
    return [topics.everything()]


def _stop_names(gtfs: str | None) -> dict[str, str]:
    if not gtfs:
        return {}
    from busbell._gtfs import load_gtfs

    return {sid: s.name for sid, s in load_gtfs(gtfs).stops.items() if s.name}


async def _run(a: argparse.Namespace, out: IO[str]) -> int:
    host, _, port = a.broker.partition(":")
    try:
        password = _password(a)
    except OSError as exc:
        sys.stderr.write(f"busbell tail: cannot read the password file: {exc}\n")
        return 2
    settings = MqttSettings(
        host=host or "127.0.0.1",
        port=int(port or 1883),
        prefix=a.prefix,
        username=a.username,
        password=password,
        tls_ca=a.tls_ca,
        tls_cert=a.tls_cert,
        tls_key=a.tls_key,
    )
    topics = Topics(a.prefix)
    kinds = set(a.kind.split(",")) if a.kind else None
    unknown = (kinds or set()) - set(KINDS)
    if unknown:
        sys.stderr.write(f"busbell tail: unknown kind(s) {sorted(unknown)}; known: {KINDS}\n")
        return 2
    try:
        stops = _stop_names(a.gtfs)
    except ContractError as exc:
        sys.stderr.write(f"busbell tail: {exc}\n")
        return 2
    fmt = TailFormatter(topics, stops=stops, route=a.route)
    hidden = set() if a.gnss or (kinds and "vehicle_gnss" in kinds) else {"vehicle_gnss"}
    seen = 0

    async def follow(s: MqttSession) -> int:
        nonlocal seen
        await s.subscribe(_filters(topics, a), qos=0)
        loop.up()
        async for msg in s.messages():
            parsed = topics.parse(msg.topic)
            if parsed is None or parsed.kind in hidden:
                continue
            if a.bus and parsed.ids.get("bus", a.bus) != a.bus:
                continue
            line = fmt.format(msg, as_json=a.json)
            if line is None or (kinds and parsed.kind not in kinds):
                continue
            out.write(line + "\n")
            out.flush()
            seen += 1
            if a.count and seen >= a.count:
                return 0
        raise UplinkError("message stream ended")

    def reconnecting(change: SessionChange) -> None:
        if change.errors:
            sys.stderr.write(f"busbell tail: {change.error}; reconnecting\n")

    loop: ReconnectLoop[MqttSession] = ReconnectLoop(
        lambda: MqttSession(settings, f"busbell-tail-{secrets.token_hex(4)}", clean_start=True),
        initial_s=0.5,
        max_s=10.0,
        on_change=reconnecting,
    )
    return cast(int, await loop.run(follow))  # without stop, run ends only by returning


PASSWORD_ENV = "BUSBELL_MQTT__PASSWORD"  # noqa: S105 - a variable's name
"""The broker password's environment variable (as the edge's and backend's configs read it)."""


def _password(a: argparse.Namespace) -> str | None:
    """``--password-file``'s first line, else :data:`PASSWORD_ENV`, else none.

    Raises:
        OSError: the file cannot be read.
    """
    if a.password_file is not None:
        lines = a.password_file.read_text(encoding="utf-8").splitlines()
        return lines[0] if lines else ""
    return os.environ.get(PASSWORD_ENV) or None


def main(argv: Sequence[str], prog: str = "busbell tail") -> int:
    """Entry point of ``busbell tail``."""
    a = parser(prog).parse_args(list(argv))
    configure_logging("warning")  # refused payloads are logged on stderr, lines go to stdout
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_run(a, sys.stdout))
    return 130


def parser(prog: str = "busbell tail") -> argparse.ArgumentParser:
    """The command line of ``busbell tail``."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Follow busbell MQTT topics and print one readable line per message.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--broker", default="127.0.0.1:1883", help="HOST:PORT (default %(default)s)")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="topic prefix (default %(default)s)")
    p.add_argument("--bus", help="only this bus's topics")
    p.add_argument(
        "--route", help="only this route: its waits, their statuses, its buses' messages"
    )
    p.add_argument(
        "--gnss",
        action="store_true",
        help="show vehicle GNSS fixes too (hidden by default: one per bus per second)",
    )
    p.add_argument("--gtfs", help="GTFS directory: print stop names next to stop ids")
    p.add_argument("--kind", help=f"comma-separated kinds: {','.join(KINDS)}")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    p.add_argument("--count", type=int, default=0, help="exit after N messages (0: never)")
    p.add_argument("--username", help="broker user name (the shipped bus broker's: ops)")
    p.add_argument(
        "--password-file",
        type=Path,
        help=f"file whose first line is the broker password (default: ${PASSWORD_ENV})",
    )
    p.add_argument("--tls-ca", type=Path, help="CA bundle; setting it turns TLS on")
    p.add_argument("--tls-cert", type=Path, help="client certificate (PEM) for mutual TLS")
    p.add_argument("--tls-key", type=Path, help="client private key (PEM) for mutual TLS")
    return p
