"""``busbell tail``: follow busbell MQTT topics, human-readable, with filters (for ops)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import secrets
import sys
from collections.abc import Sequence
from typing import IO, Any

from busbell._errors import UplinkError
from busbell._mqtt import MqttMessage, MqttSession, MqttSettings, backoff_delays
from busbell._topics import DEFAULT_PREFIX, Topics

__all__ = ["format_message", "main"]

EPILOG = """\
examples:
  busbell tail                                   # everything under busbell/v1
  busbell tail --bus bus-0001 --kind status,fares_ack
  busbell tail --route 11 --kind wait,request_status --json
  busbell tail --broker mqtt.example.net:8883 --prefix fleet-a/busbell/v1 --count 10
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


def _summary(kind: str, body: Any) -> str:
    if not isinstance(body, dict):
        return json.dumps(body, ensure_ascii=False)[:200]
    if kind == "fares":
        events = body.get("events", [body])
        seqs = [e["seq"] for e in events if isinstance(e, dict) and isinstance(e.get("seq"), int)]
        rng = f"seq {min(seqs)}..{max(seqs)}" if seqs else "no seq"
        return f"{len(events)} event(s), {rng}"
    if kind == "fares_ack":
        return f"acked up to seq {body.get('upto_seq')}"
    if kind == "fares_resend":
        return f"resend seq {body.get('from_seq')}..{body.get('to_seq')}"
    if kind == "fleet_keys":
        return "fleet keys delivered (encrypted)"
    if kind == "vehicle_gnss":
        return f"{body.get('lat')},{body.get('lon')} {body.get('speed_mps')} m/s"
    if kind == "vehicle_doors":
        return "doors OPEN" if body.get("open") else "doors closed"
    if kind == "vehicle_trip":
        return f"trip {body.get('route_id')}/{body.get('direction_id')} {body.get('trip_id') or ''}"
    return " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in body.items())[:300]


def format_message(topics: Topics, msg: MqttMessage, *, as_json: bool = False) -> str | None:
    """One human-readable (or JSON) line for a message; ``None`` if not a busbell topic."""
    parsed = topics.parse(msg.topic)
    if parsed is None:
        return None
    body: Any
    if not msg.payload:
        body = None
    else:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            body = {"invalid_json": msg.payload[:80].decode("utf-8", "replace")}
    now = dt.datetime.now(dt.UTC).strftime("%H:%M:%S.%f")[:-3]
    if as_json:
        return json.dumps(
            {"at": now, "kind": parsed.kind, **parsed.ids, "retained": msg.retain, "body": body},
            ensure_ascii=False,
        )
    who = "/".join(parsed.ids.values()) or "-"
    text = "(cleared)" if body is None else _summary(parsed.kind, body)
    flag = " [retained]" if msg.retain else ""
    return f"{now} {parsed.kind:<14} {who:<24} {text}{flag}"


def _filters(topics: Topics, a: argparse.Namespace) -> list[str]:
    bus = a.bus or "+"
    if a.route:
        return [f"{topics.prefix}/routes/{a.route}/stops/+/waits/+"]
    if a.bus:
        return [f"{topics.prefix}/buses/{bus}/#"]
    return [topics.everything()]


async def _run(a: argparse.Namespace, out: IO[str]) -> int:
    host, _, port = a.broker.partition(":")
    settings = MqttSettings(host=host or "127.0.0.1", port=int(port or 1883), prefix=a.prefix)
    topics = Topics(a.prefix)
    kinds = set(a.kind.split(",")) if a.kind else None
    unknown = (kinds or set()) - set(KINDS)
    if unknown:
        sys.stderr.write(f"busbell tail: unknown kind(s) {sorted(unknown)}; known: {KINDS}\n")
        return 2
    seen = 0

    delays = backoff_delays(0.5, 10.0)
    while True:
        try:
            async with MqttSession(
                settings, f"busbell-tail-{secrets.token_hex(4)}", clean_start=True
            ) as s:
                await s.subscribe(_filters(topics, a), qos=0)
                async for msg in s.messages():
                    parsed = topics.parse(msg.topic)
                    if parsed is None or (kinds and parsed.kind not in kinds):
                        continue
                    if a.bus and parsed.ids.get("bus", a.bus) != a.bus:
                        continue
                    line = format_message(topics, msg, as_json=a.json)
                    if line is None:
                        continue
                    out.write(line + "\n")
                    out.flush()
                    seen += 1
                    if a.count and seen >= a.count:
                        return 0
        except UplinkError as exc:
            sys.stderr.write(f"busbell tail: {exc}; reconnecting\n")
            await asyncio.sleep(next(delays))


def main(argv: Sequence[str], prog: str = "busbell tail") -> int:
    """Entry point of ``busbell tail``."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Follow busbell MQTT topics and print one readable line per message.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--broker", default="127.0.0.1:1883", help="HOST:PORT (default %(default)s)")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="topic prefix (default %(default)s)")
    p.add_argument("--bus", help="only this bus's topics")
    p.add_argument("--route", help="only boarding-wait requests on this route")
    p.add_argument("--kind", help=f"comma-separated kinds: {','.join(KINDS)}")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    p.add_argument("--count", type=int, default=0, help="exit after N messages (0: never)")
    a = p.parse_args(list(argv))
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_run(a, sys.stdout))
    return 130
