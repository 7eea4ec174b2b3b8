"""Coverage-guided fuzzing (atheris, libFuzzer) of every parser that takes outside input.

An optional companion of the hypothesis property tests in ``test_fuzz_handlers.py``
(which run in CI): the same property, arbitrary bytes are accepted or refused with the
documented error and nothing else is raised, driven by libFuzzer's coverage feedback
over the instrumented ``busbell``, ``edge`` and ``backend`` packages. Targets:

``token``       the token parser and verifier (any payload, any bus time)
``trace``       the trace reader (any lines after a valid meta line)
``stream``      the edge stream source's line handler
``vehicle``     the edge's vehicle signal handler (``buses/B/vehicle/*``)
``keys``        the edge's fleet key bundle handler (``buses/B/keys``)
``denylist``    the edge's deny list handler (``denylist``): only a backend-signed list
``ack``         the edge uploader's ``fares/ack`` and ``fares/resend`` handlers
``bells``       the edge bell core: waits, request statuses, driver acks
``ingest``      backend fare ingest decoding (``buses/B/fares``): nothing unsigned verified
``relay``       backend fleet view and request-status relay (status, display, ...)
``waits``       backend wait book and fleet positions (waits, statuses, display models)
``json``        ``busbell.loads_bounded``

Run (needs the ``fuzz`` extra: ``pip install -e '.[fuzz]'``)::

    python -m tests.fuzz.atheris_fuzz --seconds 60              # every target, 60 s each
    python -m tests.fuzz.atheris_fuzz --seconds 300 ingest waits

Each target runs in its own process (libFuzzer owns it); the driver prints executions,
time and crashes per target. A crash leaves its input in ``--artifacts`` (reproduce with
``python -m tests.fuzz.atheris_fuzz --target NAME FILE``).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

TARGETS = (
    "token",
    "trace",
    "stream",
    "vehicle",
    "keys",
    "denylist",
    "ack",
    "bells",
    "ingest",
    "relay",
    "waits",
    "json",
)
NOW = 1_790_000_000.0


def _build(name: str) -> Callable[[bytes], None]:
    """The one-input function of target ``name`` (imports are instrumented by the caller)."""
    from busbell import (
        BusbellError,
        ContractError,
        DeviceKey,
        JsonRejected,
        TokenRejected,
        TokenVerifier,
        Topics,
        TraceError,
        TraceReader,
        bus_kex_private,
        canonical_bytes,
        derive_rider_keys,
        encode_payload,
        loads_bounded,
        loads_object,
        parse_record,
        sign_denylist,
    )

    topics = Topics("fz/v1")
    key = DeviceKey.from_seed(bytes(range(32)))
    backend_key = DeviceKey.from_seed(b"\x42" * 32)

    if name == "token":
        fleet = {int(NOW // 86400): b"\x11" * 32}
        good = encode_payload(
            derive_rider_keys(bytes(range(16))), NOW, fleet_key=fleet[int(NOW // 86400)]
        )
        verifier = TokenVerifier(fleet.get)

        def token(data: bytes) -> None:
            # the first 8 bytes pick the bus time (any double, NaN and infinities too),
            # the rest is the payload; a payload of 1 byte flips that byte of a good one
            t = NOW
            if len(data) >= 8:
                t = _double(data[:8])
                data = data[8:]
            if len(data) == 2:
                data = good[: data[0] % 24] + bytes([data[1]]) + good[data[0] % 24 + 1 :]
            try:
                verifier.verify(data, t)
            except TokenRejected as exc:
                assert exc.reason in TokenRejected.REASONS

        return token

    if name == "trace":
        meta = b'{"kind":"meta","format":"busbell-trace/1","bus_id":"b"}\n'

        def trace(data: bytes) -> None:
            errors: list[TraceError] = []
            fp = io.TextIOWrapper(
                io.BytesIO(meta + data), encoding="utf-8", errors="surrogateescape"
            )
            list(TraceReader(fp, on_error=errors.append))
            assert all(e.reason for e in errors)

        return trace

    if name == "stream":
        from edge._stream_source import StreamSource

        src = StreamSource()

        def stream(data: bytes) -> None:
            src._line(data, 1, "fuzz", lambda rec: None)

        return stream

    if name == "vehicle":
        from edge._daemon import VEHICLE_LIMITS

        def vehicle(data: bytes) -> None:
            kind = ("gnss", "door", "trip")[len(data) % 3]
            try:
                obj = loads_object(data, VEHICLE_LIMITS)
                parse_record({**obj, "kind": kind}, 0)
            except (JsonRejected, TraceError):
                pass

        return vehicle

    if name == "keys":
        from edge._keyring import FleetKeyring

        def keys(data: bytes) -> None:
            ring = FleetKeyring(
                Path("/nonexistent/never-written.csv"), "bus-1", bus_kex_private(key)
            )
            try:
                ring.apply_bundle(data, NOW)
            except ContractError:
                assert ring.bundles_rejected == 1
            assert ring.keys == {}

        return keys

    if name == "denylist":
        from edge._keyring import Denylist

        signed = canonical_bytes(sign_denylist({"v": 1, "version": 5, "rids": ["00" * 12],
                                                "devices": []}, backend_key))  # fmt: skip

        def denylist(data: bytes) -> None:
            dl = Denylist("bus-1", backend_key.public)
            if len(data) < 4:  # a few bytes: edit the genuine list there
                i = int.from_bytes(data or b"\0", "big") % len(signed)
                data = signed[:i] + bytes(data[-1:]) + signed[i + 1 :]
            try:
                changed = dl.apply(data)
            except ContractError as exc:
                assert exc.reason
                return
            if changed:  # only a list the backend signed is ever taken
                obj = json.loads(data)
                body = {k: v for k, v in obj.items() if k != "sig"}
                backend_key.public.verify_b64(obj["sig"], canonical_bytes(body))

        return denylist

    if name == "ack":
        from edge._events import EventBuilder
        from edge._segment import SegmentDraft, SegmentEnd
        from edge._store import FareStore
        from edge._uplink import FareUploader, UplinkSettings

        loop = asyncio.new_event_loop()
        path = Path(tempfile.mkdtemp(prefix="busbell-atheris-")) / "f.db"
        store = loop.run_until_complete(FareStore.open(str(path), EventBuilder("bus-1", key)))
        h = "ab" * 32
        draft = SegmentDraft(
            rid=h[:24],
            interval=int(NOW // 600),
            route_id="R1",
            trip_id="T1",
            start=SegmentEnd(NOW, "S1", "boarded"),
            end=SegmentEnd(NOW + 60, "S2", "alighted"),
            distance_m=100.0,
            proof_first=h[:48],
            proof_last=h[16:64],
        )
        loop.run_until_complete(store.append_many([draft] * 5))
        up = FareUploader(store, "bus-1", topics, UplinkSettings())

        def ack(data: bytes) -> None:
            last = store.last_seq
            half = len(data) // 2
            loop.run_until_complete(up.handle_ack(data[:half]))
            loop.run_until_complete(up.handle_resend(data[half:]))
            assert store.acked_upto <= last  # never acked beyond what the bus recorded
            up._resends.clear()

        return ack

    if name == "bells":
        from busbell import load_gtfs
        from edge._bells import BellCore

        feed = load_gtfs(Path(__file__).resolve().parents[2] / "firmware_sim" / "data" / "gtfs")
        core = BellCore("B1", feed)

        def bells(data: bytes) -> None:
            which = len(data) % 3
            if which == 0:
                core.on_wait(NOW, "R1", "S1", "w-1", data)
            elif which == 1:
                core.on_status(NOW, "w-1", data)
            else:
                core.on_ack(NOW, data)

        return bells

    if name == "ingest":
        from backend._ingest import IngestCore
        from backend._keys import DeviceInfo

        core_i = IngestCore({"bus-1": DeviceInfo(key.public)})

        def ingest(data: bytes) -> None:
            try:
                verified, rejected = core_i.decode("bus-1", data)
            except BusbellError as exc:
                assert getattr(exc, "reason", "")
                return
            assert not verified  # nothing unsigned is ever verified
            assert all(r.reason for r in rejected)

        return ingest

    if name == "relay":
        from backend._gtfs_rt import FleetView
        from backend._status_relay import StatusRelay

        view = FleetView(topics)
        relay = StatusRelay(topics)
        kinds = [topics.vehicle("b1", "gnss"), topics.vehicle("b1", "trip"), topics.occupancy("b1"),
                 topics.status("b1"), topics.bus_request_status("b1", "r1")]  # fmt: skip

        def relay_target(data: bytes) -> None:
            topic = kinds[len(data) % len(kinds)]
            view.on_message(topic, data, now=NOW)
            out = relay.on_message(topic, data)
            if out is not None:
                obj = json.loads(out[1])
                assert obj["bus_id"] == "b1"
                assert obj["request_id"] == "r1"

        return relay_target

    if name == "waits":
        from backend._waits import FleetPositions, WaitBook
        from busbell import load_gtfs

        feed = load_gtfs(Path(__file__).resolve().parents[2] / "firmware_sim" / "data" / "gtfs")
        book = WaitBook(topics)
        pos = FleetPositions(feed)

        def waits(data: bytes) -> None:
            which = len(data) % 4
            if which == 0:
                book.on_wait("R1", "S1", f"w-{len(book.waits) % 50}", data, NOW)
            elif which == 1:
                book.on_status("w-1", data, NOW)
            elif which == 2:
                pos.on_display("b1", data)
            else:
                pos.on_status("b1", data)

        return waits

    if name == "json":

        def json_target(data: bytes) -> None:
            try:
                loads_bounded(data)
            except JsonRejected:
                pass

        return json_target

    raise SystemExit(f"unknown target {name!r}; targets: {', '.join(TARGETS)}")


def _double(b: bytes) -> float:
    import struct

    return float(struct.unpack(">d", b)[0])


def _fuzz_one(name: str, libfuzzer_args: list[str]) -> None:
    """Inside the child: instrument our packages, build the target, hand over to libFuzzer."""
    import atheris

    with atheris.instrument_imports(include=["busbell", "edge", "backend"]):
        import backend._gtfs_rt
        import backend._ingest
        import backend._status_relay
        import backend._waits
        import busbell
        import edge._bells
        import edge._keyring
        import edge._stream_source
        import edge._uplink

        _ = (backend, busbell, edge)
    from busbell import configure_logging

    configure_logging("critical")
    one = _build(name)
    atheris.Setup([sys.argv[0], *libfuzzer_args], one)
    atheris.Fuzz()


_DONE = re.compile(r"Done (\d+) runs in (\d+) second")


def _drive(targets: list[str], seconds: int, artifacts: Path) -> int:
    """Run each target in a child for ``seconds``; print a table; 1 if anything crashed."""
    artifacts.mkdir(parents=True, exist_ok=True)
    crashed = 0
    print(f"{'target':10} {'execs':>10} {'seconds':>8} {'crashes':>8}")
    for name in targets:
        corpus = artifacts / f"corpus-{name}"
        corpus.mkdir(exist_ok=True)
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "tests.fuzz.atheris_fuzz", "--target", name,
             f"-max_total_time={seconds}", f"-artifact_prefix={artifacts}/{name}-",
             "-rss_limit_mb=2048", "-timeout=10", "-print_final_stats=1", str(corpus)],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )  # fmt: skip
        took = time.monotonic() - t0
        out = proc.stdout + proc.stderr
        m = _DONE.search(out)
        execs = int(m.group(1)) if m else 0
        stat = re.search(r"stat::number_of_executed_units:\s*(\d+)", out)
        if stat:
            execs = int(stat.group(1))
        crash = proc.returncode != 0
        crashed += crash
        print(f"{name:10} {execs:>10} {took:>8.0f} {int(crash):>8}", flush=True)
        if crash:
            (artifacts / f"{name}.log").write_text(out)
            print(f"  see {artifacts / f'{name}.log'}", flush=True)
    return 1 if crashed else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.fuzz.atheris_fuzz``: the driver, or one target (``--target``)."""
    args = sys.argv[1:] if argv is None else argv
    if "--target" in args:
        i = args.index("--target")
        name = args[i + 1]
        _fuzz_one(name, args[:i] + args[i + 2 :])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("targets", nargs="*", default=list(TARGETS), help="default: all")
    ap.add_argument("--seconds", type=int, default=60, help="per target")
    ap.add_argument("--artifacts", type=Path, default=None, help="crash inputs and corpora")
    a = ap.parse_args(args)
    for t in a.targets:
        if t not in TARGETS:
            ap.error(f"unknown target {t!r}; targets: {', '.join(TARGETS)}")
    artifacts = a.artifacts or Path(tempfile.mkdtemp(prefix="busbell-atheris-"))
    print(f"artifacts: {artifacts}")
    return _drive(a.targets, a.seconds, artifacts)


if __name__ == "__main__":
    raise SystemExit(main())
