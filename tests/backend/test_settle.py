"""End-to-end settlement of generated, signed fare events (``busbell backend settle``)."""

from __future__ import annotations

import hashlib
import hmac
import json
import marshal
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from backend._errors import REJECTION_REASONS
from backend._fare_engine import FareEngine, FareLeg
from backend._fare_rules import load_rules
from backend._journeys import JourneyBuilder, JourneyPolicy
from backend._resolve import ProofRejected, Resolver, RiderKeyring
from backend._settle import Settler, check_line, segment_of
from backend.cli import main as backend_main
from busbell import (
    derive_bk,
    derive_event_id,
    derive_rider_keys,
    load_gtfs,
    read_devices,
    sign_event,
    tq_of,
)
from busbell.cli import main as busbell_main
from tests.factories.backend_world import STOP_SPACING_M, T0, World


def _settle(world: World, events_path: Path, out: Path, *extra: str) -> int:
    return backend_main(
        [
            "settle",
            str(events_path),
            "--gtfs",
            str(world.gtfs),
            "--riders",
            str(world.riders_csv),
            "--devices",
            str(world.devices_csv),
            "--out",
            str(out),
            *extra,
        ]
    )


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _price(legs: list[tuple[str, str, float, float]]) -> int:
    engine = FareEngine(load_rules())
    fare_legs = [FareLeg(r, n, t, t + 60, d) for r, n, t, d in legs]
    return engine.price(fare_legs).fare_krw


def _settler(world: World, **policy: Any) -> Settler:
    feed = load_gtfs(world.gtfs)
    rules = load_rules(timezone=feed.timezone)
    ring = RiderKeyring.from_token_keys(sorted(world.token_keys.items()))
    builder = JourneyBuilder(FareEngine(rules), feed, JourneyPolicy(**policy))
    return Settler(read_devices(world.devices_csv), Resolver(ring), builder)


def test_settle_end_to_end_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    world = World(tmp_path, riders=3, buses=2)
    # r0001: R1 S01->S05 then transfers to R2 S05->S20 (one journey, one fare)
    world.ride("r0001", "bus-01", board=1, alight=5, t=T0, route_id="R1", trip_id="T1")
    world.ride("r0001", "bus-02", board=5, alight=20, t=T0 + 900, route_id="R2", trip_id="T2")
    # r0002: long ride crossing interval boundaries (rotated/continued -> one leg)
    world.ride("r0002", "bus-01", board=2, alight=25, t=T0 + 100)
    events = world.write_events(tmp_path / "EVENTS.jsonl")
    out = tmp_path / "JOURNEYS.jsonl"
    assert _settle(world, events, out) == 0
    journeys = _read(out)
    assert [j["rider_id"] for j in journeys] == ["r0001", "r0002"]
    j1, j2 = journeys
    assert [
        (leg["bus_id"], leg["route_id"], leg["board_stop_id"], leg["alight_stop_id"])
        for leg in j1["legs"]
    ] == [("bus-01", "R1", "S01", "S05"), ("bus-02", "R2", "S05", "S20")]
    # one journey: 4 + 15 hops of 800 m, priced as the fare engine prices those legs
    assert j1["fare_krw"] == _price(
        [("R1", "gyeonggi_city", T0, 4 * 800.0), ("R2", "gyeonggi_wide_area", T0 + 900, 12_000.0)]
    )
    assert j1["legs"][0]["board_t"] == T0
    assert len(j2["legs"]) == 1
    leg = j2["legs"][0]
    assert (leg["board_stop_id"], leg["alight_stop_id"]) == ("S02", "S25")
    assert len(leg["event_ids"]) >= 2  # stitched across rid rotation
    assert leg["distance_m"] == 23 * 800.0
    assert j2["fare_krw"] == _price([("R1", "gyeonggi_city", T0 + 100, 23 * 800.0)])
    assert set(leg) >= {
        "bus_id",
        "route_id",
        "board_stop_id",
        "board_t",
        "alight_stop_id",
        "alight_t",
    }
    err = capsys.readouterr().err
    assert "0 rejected" in err


def test_settle_is_deterministic_under_shuffle_and_duplicates(tmp_path: Path) -> None:
    world = World(tmp_path, riders=4, buses=3)
    rng = random.Random(7)
    t = T0
    for k in range(40):
        rider = f"r{1 + k % 4:04d}"
        bus = f"bus-{1 + (k // 4) % 3:02d}"
        board = rng.randint(1, 15)
        world.ride(rider, bus, board=board, alight=board + rng.randint(1, 12), t=t)
        if k % 4 == 3:
            t += 3000
    events = [e for c in world.buses.values() for e in c.events]
    a = world.write_events(tmp_path / "a.jsonl", events)
    shuffled = events + events[:10]
    rng.shuffle(shuffled)
    b = world.write_events(tmp_path / "b.jsonl", shuffled)
    assert _settle(world, a, tmp_path / "ja.jsonl") == 0
    assert _settle(world, b, tmp_path / "jb.jsonl") == 0
    assert (tmp_path / "ja.jsonl").read_bytes() == (tmp_path / "jb.jsonl").read_bytes()
    s = _settler(world)
    for e in shuffled:
        s.feed_event(e)
    res = s.finish()
    assert res.stats.duplicates == 10
    assert not res.stats.rejected
    assert res.stats.accepted == len(events)


def test_forged_rtag_is_rejected(tmp_path: Path) -> None:
    """A bus with the fleet key replays a sniffed rid with a fresh tq: rtag cannot verify."""
    world = World(tmp_path, riders=2, buses=1)
    honest = world.ride("r0001", "bus-01", board=1, alight=3, t=T0)
    sniffed_rid = bytes.fromhex(honest[0]["rid"])
    t = T0 + 200

    def forged(t: float) -> str:
        head = bytes([1 << 5]) + tq_of(t).to_bytes(2, "big") + sniffed_rid
        bk = derive_bk(world.fleet_key, sniffed_rid)
        body = head + hmac.digest(bk, head, "sha256")[:4]
        return (body + hashlib.sha256(body).digest()[:4] + b"\x00").hex()

    fields = world.segment_fields(
        "r0001",
        route_id="R1",
        trip_id="T1",
        start=(t, "S03", "boarded"),
        end=(t + 60, "S04", "alighted"),
        distance_m=800,
        proof=(forged(t), forged(t + 60)),
    )
    fields["rid"] = sniffed_rid.hex()
    fields["interval"] = honest[0]["interval"]
    world.buses["bus-01"].emit(fields)
    s = _settler(world)
    for e in world.buses["bus-01"].events:
        s.feed_event(e)
    res = s.finish()
    assert res.stats.rejected == {"bad_rtag": 1}
    assert [len(j.legs) for j in res.journeys] == [1]


def test_bad_signature_unknown_bus_chain_and_garbage(tmp_path: Path) -> None:
    world = World(tmp_path, riders=2, buses=2)
    for k in range(5):
        world.ride("r0001", "bus-01", board=1, alight=3, t=T0 + k * 3000)
    evs = list(world.buses["bus-01"].events)
    tampered = dict(evs[1], distance_m=1.0)  # signature no longer verifies
    other = dict(evs[2])
    other["bus_id"] = "bus-99"
    s = _settler(world)
    s.feed_line(b"not json\n")
    s.feed_line(b"\n")
    s.feed_line(json.dumps({"v": 1}))
    s.feed_event(evs[0])
    s.feed_event(tampered)
    s.feed_event(other)
    s.feed_event(evs[1])
    # seq 3 re-signed by the right key but with a wrong prev: a broken link
    key = world.buses["bus-01"].key
    broken = sign_event(dict(evs[2], prev="1" * 64), key)
    s.feed_event(broken)
    s.feed_event(evs[2])  # the genuine seq 3 still links
    s.feed_event(evs[3])
    s.feed_event(evs[4])
    res = s.finish()
    # the same reasons as online ingest's quarantine (backend._errors.REJECTION_REASONS)
    assert res.stats.rejected == {
        "malformed_payload": 1,
        "schema": 1,
        "bad_signature": 1,
        "unknown_device": 1,
        "prev_mismatch": 1,
    }
    assert set(res.stats.rejected) <= set(REJECTION_REASONS)
    assert res.stats.accepted == 5
    # a missing seq is only a warning
    s2 = _settler(world)
    for e in (evs[0], evs[1], evs[3], evs[4]):
        s2.feed_event(e)
    res2 = s2.finish()
    assert res2.stats.warnings["chain_gap"] == 1
    assert res2.stats.accepted == 4


def test_lost_policies_via_cli(tmp_path: Path) -> None:
    world = World(tmp_path, riders=1, buses=1)
    world.ride(
        "r0001", "bus-01", board=2, alight=4, t=T0, end_cause="lost", alight_stop_known=False
    )
    events = world.write_events(tmp_path / "e.jsonl")
    assert _settle(world, events, tmp_path / "last.jsonl") == 0
    assert _settle(world, events, tmp_path / "pen.jsonl", "--lost-policy", "penalty") == 0
    (last,) = _read(tmp_path / "last.jsonl")
    (pen,) = _read(tmp_path / "pen.jsonl")
    # the last stop named is the boarding stop: the last stop it was carried past
    # (S02 + the 1,600 m the bus travelled, less 30 m of slack: S03), never S02 -> S02
    assert last["legs"][0]["alight_stop_id"] == "S03"
    assert last["fare_krw"] == _price([("R1", "gyeonggi_city", T0, 800.0)])
    assert set(last["flags"]) == {"lost", "review"}
    # penalty: the whole route (29 hops x 800 m = 23.2 km)
    assert pen["fare_krw"] == _price([("R1", "gyeonggi_city", T0, 29 * 800.0)])
    assert pen["fare_krw"] > last["fare_krw"]
    assert "penalty" in pen["flags"]


def test_cli_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    world = World(tmp_path, riders=1, buses=1)
    events = world.write_events(tmp_path / "e.jsonl")
    bad = tmp_path / "RIDERS_BAD.csv"
    bad.write_text("rider,key\n")
    with pytest.raises(SystemExit) as exc:
        busbell_main(
            [
                "backend",
                "settle",
                str(events),
                "--gtfs",
                str(world.gtfs),
                "--riders",
                str(bad),
                "--devices",
                str(world.devices_csv),
                "--out",
                str(tmp_path / "o.jsonl"),
            ]
        )
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("busbell: error: ")
    assert "header must be rider_id,token_key" in err


def test_seen_hashes_dense_sparse_and_unseen() -> None:
    from backend._settle import _SeenHashes

    def h(n: int) -> str:
        return f"{n:064x}"

    seen = _SeenHashes()
    assert seen.get(5) is None
    seen.put(5, h(1))
    seen.put(6, h(0xABC))
    seen.put(9, h(0xDEF))  # a hole: 7 and 8 stay unseen
    seen.put(3, h(0x123))  # below the first seq: kept aside
    seen.put(10**12, h(0x456))  # far beyond: kept aside, no huge allocation
    assert (seen.get(5), seen.get(6), seen.get(9)) == (h(1), h(0xABC), h(0xDEF))
    assert (seen.get(7), seen.get(8)) == (None, None)
    assert seen.get(3) == h(0x123)
    assert seen.get(10**12) == h(0x456)
    assert seen.get(10**12 + 1) is None
    assert [s for s, _ in seen.items()] == [3, 5, 6, 9, 10**12]
    seen.put(7, h(7))  # a hole filled in place
    assert seen.get(7) == h(7)
    assert len(seen._flat) == 32 * 5  # seqs 5..9


def test_process_pool_settles_exactly_like_one_process(tmp_path: Path) -> None:
    """Checks in worker processes, chain in this one: same stats, same journeys, whatever
    the order (bus order and shuffled), with duplicates, forgeries and garbage mixed in."""
    world = World(tmp_path, riders=6, buses=3)
    for k in range(30):
        world.ride(f"r{1 + k % 6:04d}", f"bus-{1 + k % 3:02d}", board=1, alight=6, t=T0 + k * 700)
    evs = [e for c in world.buses.values() for e in c.events]
    rnd = random.Random(7)
    lines = [json.dumps(e).encode() for e in evs]
    lines += [json.dumps(e).encode() for e in rnd.sample(evs, 10)]  # duplicates
    lines.append(json.dumps(dict(evs[3], distance_m=1.0)).encode())  # bad signature
    lines += [b"not json", b"[" * 100_000, b"", json.dumps([evs[0], {"v": 1}]).encode()]
    for order in ("bus", "shuffled"):
        if order == "shuffled":
            rnd.shuffle(lines)
        one, two = _settler(world), _settler(world)
        one.feed_lines(iter(lines), processes=1)
        two.feed_lines(iter(lines), processes=2)
        a, b = one.finish(), two.finish()
        assert a.stats == b.stats
        assert [j.to_json() for j in a.journeys] == [j.to_json() for j in b.journeys]
        assert a.stats.rejected == {"bad_signature": 1, "malformed_payload": 2, "schema": 1}
        assert a.stats.duplicates == 11


def test_one_event_lines_decide_as_the_general_path(tmp_path: Path) -> None:
    """A line holding one event takes the typed fast path; the same event inside an array
    takes loads_bounded + convert: every verdict, digest and field is the same."""
    world = World(tmp_path, riders=2, buses=1)
    ev = world.ride("r0001", "bus-01", board=1, alight=3, t=T0)[0]
    key = world.buses["bus-01"].key
    body = json.dumps(ev)
    variants = [
        body,
        json.dumps(dict(ev, distance_m=1.0)),  # bad signature
        json.dumps(dict(ev, seq=0)),  # schema
        json.dumps(dict(ev, bus_id="bus-77")),  # unknown device
        json.dumps(sign_event(dict(ev, evidence={"adv_count": 3, "deep": {"x": [1]}}), key)),
        json.dumps(sign_event(dict(ev, evidence={"adv_count": 2**70}), key)),
        json.dumps(sign_event(dict(ev, evidence={"rssi_med": -61.5}), key)),
        body.replace('"S01"', '"S\\u00e9"'),  # escaped text: bad signature, not schema
        body.replace('"S01"', '"S\\ud800"'),  # a lone surrogate
        body.replace('"adv_count": 10', '"adv_count": 1e999'),
        body.replace('"adv_count": 10', '"adv_count": NaN'),
        body[:-1] + ', "extra": 1}',
        body + " ",
        "[" + body + "]",
    ]
    devices = read_devices(world.devices_csv)
    verified = 0
    for text in variants:
        one = check_line(text.encode(), devices)
        wrapped = check_line(("[" + text + "]").encode(), devices)
        if text.startswith("["):
            continue
        assert one == wrapped, text[:80]
        verified += one[0].reason is None
    assert verified == 4  # genuine (also with a trailing space), re-signed deep and rssi
    assert check_line(body.encode(), devices)[0].segment is not None


def test_bulk_resolution_equals_segment_of(tmp_path: Path) -> None:
    """Stage 3 resolves in bulk and checks proofs rider by rider: the same segments and
    the same reasons as resolving each event with segment_of (what online settles with)."""
    world = World(tmp_path, riders=5, buses=2)
    for k in range(12):
        world.ride(f"r{1 + k % 5:04d}", f"bus-{1 + k % 2:02d}", board=1, alight=4, t=T0 + k * 500)
    chain = world.buses["bus-01"]
    # the rid of the interval before the event's (token clock behind): resolves there
    early = world.segment_fields(
        "r0002",
        route_id="R1",
        trip_id="T1",
        start=(T0 + 9000, "S01", "boarded"),
        end=(T0 + 9060, "S02", "alighted"),
        distance_m=800,
    )
    early["interval"] += 1
    chain.emit(early)
    stranger = derive_rider_keys(b"\x07" * 16)  # a rider nobody enrolled
    chain.emit(
        world.segment_fields(
            stranger,
            route_id="R1",
            trip_id="T1",
            start=(T0 + 9500, "S01", "boarded"),
            end=(T0 + 9560, "S02", "alighted"),
            distance_m=800,
        )
    )
    swapped = world.segment_fields(  # another rider's proof for this rid
        "r0003",
        route_id="R1",
        trip_id="T1",
        start=(T0 + 9900, "S01", "boarded"),
        end=(T0 + 9960, "S02", "alighted"),
        distance_m=800,
    )
    swapped["proof"] = {
        "first": world.payload("r0004", T0 + 9900),
        "last": swapped["proof"]["last"],
    }
    chain.emit(swapped)
    late_tq = world.segment_fields(  # proof times far from the segment's
        "r0003",
        route_id="R1",
        trip_id="T1",
        start=(T0 + 10_500, "S01", "boarded"),
        end=(T0 + 10_560, "S02", "alighted"),
        distance_m=800,
        proof=(world.payload("r0003", T0 + 10_205), world.payload("r0003", T0 + 10_210)),
    )
    chain.emit(late_tq)
    events = [e for c in world.buses.values() for e in c.events]
    s = _settler(world)
    for e in events:
        s.feed_event(e)
    expected: list[Any] = []
    reasons: Counter[str] = Counter()
    for e in events:
        try:
            expected.append(segment_of(e, s.resolver))
        except ProofRejected as exc:
            reasons[exc.reason] += 1
    assert set(reasons) == {"rid_mismatch", "unresolved_rid", "tq_mismatch"}
    by_rider = sorted(expected, key=lambda seg: seg.rider_id)
    assert s.segments() == by_rider
    res = s.finish()
    assert res.stats.rejected == reasons
    assert res.stats.accepted == len(expected)


def test_journeys_built_in_a_pool_equal_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import backend._settle as settle_mod

    monkeypatch.setattr(settle_mod, "_RIDERS_PER_TASK", 16)  # many tasks, in order
    world = World(tmp_path, riders=300, buses=3)
    for k in range(700):
        world.ride(
            f"r{1 + k % 300:04d}",
            f"bus-{1 + k % 3:02d}",
            board=1 + k % 9,
            alight=12,
            t=T0 + (k // 300) * 3000 + k,
        )
    lines = [json.dumps(e).encode() for c in world.buses.values() for e in c.events]
    one, two = _settler(world), _settler(world)
    for s in (one, two):
        s.feed_lines(iter(lines), processes=2)
    a = list(one.iter_journey_lines(processes=1))
    b = list(two.iter_journey_lines(processes=2))
    assert a == b
    assert len(a) >= 300  # every rider, rides within a transfer window merged
    assert one.stats == two.stats
    assert one.stats.accepted == len(lines)


def test_journey_line_is_json_dumps_sorted(tmp_path: Path) -> None:
    """The journey line written directly equals ``json.dumps(sort_keys=True,
    ensure_ascii=False)`` of the journey, for odd strings and numbers too."""
    import dataclasses
    import math

    from backend._settle import journey_line
    from tests.backend.test_journeys_properties import world

    world_dir = World(tmp_path, riders=1, buses=1)
    feed = load_gtfs(world_dir.gtfs)
    builder = JourneyBuilder(FareEngine(load_rules(timezone=feed.timezone)), feed)
    journeys = []
    for seed in range(60):
        _, segs, _ = world(random.Random(seed), feed)
        journeys += builder.build(segs)
    assert len(journeys) > 100
    odd = journeys[0]
    leg = dataclasses.replace(
        odd.legs[0],
        board_stop_id='S"\\\n\x00\x1f\x7f é 漢 \u2028',
        alight_stop_id=None,
        route_id=None,
        board_t=1e16,
        alight_t=1e-05,
        distance_m=math.inf,
        flags=(),
        event_ids=("a", "\x85"),
    )
    journeys.append(dataclasses.replace(odd, legs=(leg, *odd.legs[1:]), quote=None, fare_krw=0))
    for j in journeys:
        assert journey_line(j) == json.dumps(j.to_json(), sort_keys=True, ensure_ascii=False)


def test_files_read_by_the_workers_settle_like_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers reading byte ranges of the files themselves (cut after newlines, small
    ranges here) give the same stats and journeys as one process reading the lines:
    two files, CRLF lines, blank lines, garbage, a last line with no newline."""
    import backend._settle as settle_mod

    world = World(tmp_path, riders=20, buses=3)
    for k in range(60):
        world.ride(f"r{1 + k % 20:04d}", f"bus-{1 + k % 3:02d}", board=1, alight=7, t=T0 + k * 300)
    evs = [e for c in world.buses.values() for e in c.events]
    lines = [json.dumps(e).encode() for e in evs]
    lines[5] += b"\r"
    lines[9:9] = [b"", b"not json", b"  ", json.dumps(evs[2]).encode()]  # + a duplicate
    half = len(lines) // 2
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_bytes(b"\n".join(lines[:half]) + b"\n")
    b.write_bytes(b"\n".join(lines[half:]))  # no newline at the end
    monkeypatch.setattr(settle_mod, "_CHUNK_BYTES", 700)
    one, two = _settler(world), _settler(world)
    taken: list[int] = []
    one.feed_files([a, b], processes=1)
    two.feed_files([a, b], processes=2, progress=taken.append)
    assert len(taken) > 10  # many ranges
    # the rid tables of every interval were built while the events were checked
    assert all(two.resolver.ready(e["interval"]) for e in evs)
    assert not any(one.resolver.ready(e["interval"]) for e in evs)
    assert sum(taken) == two.stats.read == one.stats.read == len(evs) + 2
    assert one.stats.rejected == two.stats.rejected == {"malformed_payload": 1}
    assert one.stats.duplicates == two.stats.duplicates == 1
    assert list(one.iter_journey_lines(processes=1)) == list(two.iter_journey_lines(processes=2))
    # one signature per chain: one process checks them in one chunk of lines; the pool
    # decides the runs over the whole input, however small its tasks
    assert one.stats == two.stats
    assert one.stats.signatures == 3
    assert one.stats.accepted == len(evs)


def test_a_ride_ending_just_short_of_a_rid_boundary_settles(tmp_path: Path) -> None:
    """The 1M-event benchmark rejected 2 events ``rid_mismatch``: the generator wrote an
    end 0.4 ms short of an interval boundary as the boundary itself (times are written
    to the millisecond), so its last payload carried the next interval's rid. The world
    now cuts the ride where the written time falls; every event settles."""
    world = World(tmp_path, riders=2, buses=1)
    duration = 4 * STOP_SPACING_M / 8.0  # board 1 -> alight 5 at 8 m/s
    boundary = (int(T0 // 600) + 3) * 600.0
    for k, short in enumerate((0.0004, 0.0005, 0.0006, 0.001)):
        evs = world.ride(
            f"r{1 + k % 2:04d}", "bus-01", board=1, alight=5, t=boundary - duration - short
        )
        for e in evs:
            assert int(e["end"]["t"] // 600) == e["interval"], e
        boundary += 1800.0
    s = _settler(world)
    for e in (e for c in world.buses.values() for e in c.events):
        s.feed_line(json.dumps(e))
    res = s.finish()
    assert res.stats.rejected == {}
    assert res.stats.accepted == res.stats.read


@pytest.mark.parametrize("processes", [1, 2])
def test_riders_loaded_while_the_workers_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: int
) -> None:
    """``feed_files(meanwhile=)`` runs once, before any event is taken (``backend settle``
    loads the riders then): settling with a keyring filled that way gives the same
    journeys as with one filled first, the rid tables built while checking included."""
    import backend._settle as settle_mod

    world = World(tmp_path, riders=20, buses=3)
    for k in range(60):
        world.ride(f"r{1 + k % 20:04d}", f"bus-{1 + k % 3:02d}", board=1, alight=7, t=T0 + k * 300)
    evs = [e for c in world.buses.values() for e in c.events]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in evs))
    monkeypatch.setattr(settle_mod, "_CHUNK_BYTES", 700)  # many tasks: more than a window
    first = _settler(world)
    first.feed_files([path], processes=processes)
    feed = load_gtfs(world.gtfs)
    ring = RiderKeyring()
    builder = JourneyBuilder(FareEngine(load_rules(timezone=feed.timezone)), feed)
    later = Settler(read_devices(world.devices_csv), Resolver(ring), builder)
    calls: list[int] = []

    def load() -> None:
        calls.append(later.stats.read)
        for rider_id, key in sorted(world.token_keys.items()):
            ring.add(rider_id, key)

    later.feed_files([path], processes=processes, meanwhile=load)
    assert calls == [0]
    assert later.stats.read == len(evs)
    assert list(later.iter_journey_lines(processes=processes)) == list(
        first.iter_journey_lines(processes=processes)
    )
    assert later.stats == first.stats


def test_verify_runs_or_every_settles_alike(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--verify runs`` (default) and ``--verify every`` write the same journeys and
    counts, a forged and a tampered record among the events; runs verify one signature
    per bus (its chain read together) and the two records that do not link."""
    world = World(tmp_path, riders=3, buses=2)
    for k in range(12):
        world.ride(f"r{1 + k % 3:04d}", f"bus-{1 + k % 2:02d}", board=1, alight=6, t=T0 + k * 700)
    evs = [e for c in world.buses.values() for e in c.events]
    forged = sign_event(dict(evs[3], distance_m=1.0), world.buses["bus-02"].key)
    tampered = dict(evs[4], distance_m=1.0)
    events = tmp_path / "E.jsonl"
    events.write_text("".join(json.dumps(e) + "\n" for e in [*evs, forged, tampered]))
    outs = {}
    for mode in ("runs", "every"):
        out, stats = tmp_path / f"J-{mode}.jsonl", tmp_path / f"S-{mode}.json"
        extra = ["--processes", "1", "--stats", str(stats)]
        assert _settle(world, events, out, *extra, "--verify", mode) == 0
        outs[mode] = out.read_text(), json.loads(stats.read_text())
        assert f"signature(s) verified ({mode})" in capsys.readouterr().err
    (j_runs, s_runs), (j_every, s_every) = outs["runs"], outs["every"]
    assert j_runs == j_every
    assert j_runs
    assert (s_runs["signatures"], s_every["signatures"]) == (4, len(evs) + 2)
    assert s_runs == dict(s_every, signatures=4)
    assert s_runs["rejected"] == {"bad_signature": 2}


def test_the_pool_decides_runs_over_the_whole_input(tmp_path: Path) -> None:
    """Files read by the pool in tiny ranges, the lines shuffled, forged and tampered
    records among them: ``runs`` gives ``every``'s verdicts, one signature per chain
    (whatever the ranges) plus those of the records that do not link."""
    import backend._settle as settle_mod

    world = World(tmp_path, riders=6, buses=3)
    for k in range(45):
        world.ride(f"r{1 + k % 6:04d}", f"bus-{1 + k % 3:02d}", board=1, alight=5, t=T0 + k * 400)
    evs = [e for c in world.buses.values() for e in c.events]
    key = world.buses["bus-01"].key
    forger = sign_event(dict(evs[0], bus_id="bus-01"), world.buses["bus-02"].key)
    chain = world.buses["bus-01"].events
    hostile = [
        dict(chain[4], distance_m=1.0),  # tampered
        sign_event(dict(chain[6], distance_m=2.0), world.buses["bus-02"].key),  # forged
        sign_event(dict(chain[7], prev="1" * 64), key),  # mislinked, genuine key
        dict(  # forged, its sig no longer matching either (its event id derived)
            forger,
            seq=3,
            event_id=derive_event_id("bus-01", 3, forger["rid"], forger["start"]["t"]),
        ),
    ]
    lines = [json.dumps(e) for e in [*evs, *hostile, evs[5]]]
    random.Random(3).shuffle(lines)
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    mp = pytest.MonkeyPatch()
    mp.setattr(settle_mod, "_CHUNK_BYTES", 700)
    mp.setattr(settle_mod, "_VERIFY_PER_TASK", 2)
    try:
        runs, every = _settler(world), _settler(world)
        runs.verify, every.verify = "runs", "every"
        runs.feed_files([path], processes=2)
        every.feed_files([path], processes=2)
    finally:
        mp.undo()
    assert list(runs.iter_journey_lines(processes=1)) == list(every.iter_journey_lines())
    assert runs.stats.rejected == every.stats.rejected
    assert runs.stats.rejected["bad_signature"] == 3
    assert every.stats.signatures == len(lines)
    # the 3 chains' tops and the 4 hostile records (nothing links to those)
    assert runs.stats.signatures == 7, runs.stats.signatures
    runs.stats.signatures = every.stats.signatures
    assert runs.stats == every.stats


def test_a_file_that_changes_while_it_is_settled_is_an_error(tmp_path: Path) -> None:
    import backend._settle as settle_mod

    world = World(tmp_path, riders=2, buses=1)
    world.ride("r0001", "bus-01", board=1, alight=3, t=T0)
    ev = world.buses["bus-01"].events[0]
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps(ev) + "\n")
    (c,) = check_line(path.read_bytes(), read_devices(world.devices_csv))
    mp = pytest.MonkeyPatch()
    mp.setattr(settle_mod, "_POOL_DEVICES", read_devices(world.devices_csv))
    try:
        assert marshal.loads(settle_mod._verify_at([(str(path), 0, 0, c.hash)])) == []
        path.write_text(json.dumps(dict(ev, distance_m=1.0)) + "\n")  # changed
        with pytest.raises(RuntimeError, match="changed while it was settled"):
            settle_mod._verify_at([(str(path), 0, 0, c.hash)])
    finally:
        mp.undo()
