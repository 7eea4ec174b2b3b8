"""Benchmark: the backend's boarding-wait path, each figure beside a bare ceiling.

Run: ``python -m benchmarks.backend_waits`` (``--waits N --requests M``). Prints:

1. the wait core (``WaitBook.on_status``) applying the statuses buses publish (seen,
   acknowledged, served; a third of the waits missed first) against bare ``json.loads``
   of the same payloads, in one run;
2. the rider API's ``POST /riders/{id}/waits`` end to end on this machine (HTTP over
   loopback to uvicorn, SQLite, real Mosquitto at 127.0.0.1:1883, both retained
   messages acknowledged by the broker) against a bare QoS 1 publish of the same two
   messages from the same process, p50/p99 in milliseconds.

The machine is shared: compare the ratios, not the absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from backend._waits import LiveWait, WaitBook, status_payload
from busbell._ports import free_port
from busbell._topics import Topics

T0 = 1_764_000_000.0


def _core(n: int) -> dict[str, float]:
    topics = Topics("bench/busbell/v1")
    book = WaitBook(topics)
    msgs: list[tuple[str, bytes]] = []
    for k in range(n):
        rid = f"w-{k:08d}"
        book.add(LiveWait(rid, "R1", f"S{k % 30:02d}", T0, T0 + 900))
        states = ["seen", "acknowledged", "served"]
        if k % 3 == 0:
            states = ["seen", "missed", "seen", "served"]
        for j, state in enumerate(states):
            bus = "bus-2" if j >= 2 and k % 3 == 0 else "bus-1"
            msgs.append((rid, status_payload(rid, state, T0 + 10 + j, bus)))
    t0 = time.perf_counter()
    for _, payload in msgs:
        json.loads(payload)
    bare = time.perf_counter() - t0
    t0 = time.perf_counter()
    for rid, payload in msgs:
        book.on_status(rid, payload, T0 + 20)
    core = time.perf_counter() - t0
    assert not book.waits, "every wait ends served"
    return {"messages": len(msgs), "bare_per_s": len(msgs) / bare, "core_per_s": len(msgs) / core}


async def _api(requests: int) -> dict[str, float]:
    import httpx
    import uvicorn

    from backend._api import ApiState, create_app
    from backend._api_auth import ApiAuth
    from backend._auth import OperatorRegistry, new_operator_token, operator_entry
    from backend._db import create_engine, migrate
    from backend._service import BrokerLink
    from busbell._gtfs import load_gtfs
    from busbell._http import http_server, serve_http
    from busbell._mqtt import MqttSession, MqttSettings
    from tests.factories.backend_world import write_gtfs

    prefix = f"bench-{secrets.token_hex(4)}/busbell/v1"
    settings = MqttSettings(prefix=prefix)
    with tempfile.TemporaryDirectory() as tmp:
        gtfs = Path(tmp) / "gtfs"
        write_gtfs(gtfs)
        engine = create_engine(f"sqlite+aiosqlite:///{tmp}/bench.db")
        await migrate(engine)
        token = new_operator_token()
        auth = ApiAuth(
            operators=OperatorRegistry([operator_entry("bench", ["riders:write"], token)])
        )
        from backend._waits import WaitRules

        state = ApiState(
            engine=engine,
            topics=Topics(prefix),
            feed=load_gtfs(gtfs),
            auth=auth,
            wait_rules=WaitRules(rate_max=requests + 1),
        )
        port = free_port()
        server = http_server(
            uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="warning")
        )
        link = asyncio.create_task(BrokerLink(settings, state, f"bench-{prefix[6:14]}").run())
        serving = asyncio.create_task(serve_http(server))
        headers = {"Authorization": f"Bearer {token}"}
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers) as c:
                while state.publisher is None or not server.started:  # noqa: ASYNC110 - start-up poll
                    await asyncio.sleep(0.02)
                rider = (await c.post("/riders", json={})).json()["rider_id"]
                api_ms = []
                for k in range(requests):
                    body = {"route_id": "R1", "stop_id": f"S{k % 29 + 1:02d}"}
                    t0 = time.perf_counter()
                    r = await c.post(f"/riders/{rider}/waits", json=body)
                    api_ms.append((time.perf_counter() - t0) * 1000)
                    assert r.status_code == 201, r.text
            async with MqttSession(settings, f"bench-bare-{prefix[6:14]}", clean_start=True) as s:
                bare_ms = []
                for k in range(requests):
                    t0 = time.perf_counter()
                    await s.publish(f"{prefix}/bench/wait/{k}", b"x" * 160, qos=1, retain=True)
                    await s.publish(f"{prefix}/bench/status/{k}", b"x" * 80, qos=1, retain=True)
                    bare_ms.append((time.perf_counter() - t0) * 1000)
                for k in range(requests):  # clear what the bare run retained
                    await s.publish(f"{prefix}/bench/wait/{k}", b"", qos=1, retain=True)
                    await s.publish(f"{prefix}/bench/status/{k}", b"", qos=1, retain=True)
        finally:
            server.should_exit = True
            link.cancel()
            await asyncio.gather(link, serving, return_exceptions=True)
            await engine.dispose()
    return {
        "api_p50_ms": statistics.median(api_ms),
        "api_p99_ms": _p99(api_ms),
        "bare_p50_ms": statistics.median(bare_ms),
        "bare_p99_ms": _p99(bare_ms),
    }


def _p99(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(0.99 * len(s)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.backend_waits")
    ap.add_argument("--waits", type=int, default=30_000, help="waits through the core")
    ap.add_argument("--requests", type=int, default=300, help="POSTs through the rider API")
    args = ap.parse_args(argv)
    from busbell import configure_logging

    configure_logging("warning")
    c = _core(args.waits)
    print(
        f"wait core: {c['messages']} statuses, {c['core_per_s']:,.0f}/s applied; "
        f"bare json.loads {c['bare_per_s']:,.0f}/s; ratio {c['core_per_s'] / c['bare_per_s']:.2f}"
    )
    a: dict[str, Any] = asyncio.run(_api(args.requests))
    print(
        f"rider API POST /riders/{{id}}/waits ({args.requests}, SQLite, mosquitto): "
        f"p50 {a['api_p50_ms']:.1f} ms, p99 {a['api_p99_ms']:.1f} ms; bare QoS 1 publish "
        f"of the two messages p50 {a['bare_p50_ms']:.1f} ms, p99 {a['bare_p99_ms']:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
