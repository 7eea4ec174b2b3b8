"""The sans-I/O journey builder: stitching, lost policy, suspected replay, determinism."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from backend._bench_settle import STOP_SPACING_M, T0, write_gtfs
from backend._fare_engine import FareEngine, FareLeg
from backend._fare_rules import load_rules
from backend._journeys import JourneyBuilder, JourneyPolicy, Segment, explain_journey
from busbell import Feed, load_gtfs


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Feed:
    d = tmp_path_factory.mktemp("gtfs")
    write_gtfs(d)
    return load_gtfs(d)


def _builder(feed: Feed | None, **kw: object) -> JourneyBuilder:
    return JourneyBuilder(FareEngine(load_rules()), feed, JourneyPolicy(**kw))  # type: ignore[arg-type]


_n = iter(range(1, 10**6))


def seg(
    start: tuple[float, str | None, str],
    end: tuple[float, str | None, str],
    *,
    rider: str = "r1",
    bus: str = "b1",
    route: str | None = "R1",
    trip: str | None = "T1",
    distance: float = 0.0,
    rssi: float | None = None,
) -> Segment:
    n = next(_n)
    return Segment(
        rider_id=rider,
        bus_id=bus,
        seq=n,
        event_id=f"e{n}",
        interval=int(start[0] // 600),
        route_id=route,
        trip_id=trip,
        start_t=start[0],
        start_stop_id=start[1],
        start_cause=start[2],
        end_t=end[0],
        end_stop_id=end[1],
        end_cause=end[2],
        distance_m=distance,
        rssi_med=rssi,
    )


def _price(*legs: tuple[str, str, float]) -> int:
    return (
        FareEngine(load_rules()).price([FareLeg(r, n, T0, T0 + 60, d) for r, n, d in legs]).fare_krw
    )


def test_rotated_and_continued_stitch_into_one_leg(feed: Feed) -> None:
    b = _builder(feed)
    segs = [
        seg((T0, "S02", "boarded"), (T0 + 500, None, "rotated")),
        seg((T0 + 501, None, "continued"), (T0 + 1100, None, "rotated")),
        seg((T0 + 1101, None, "continued"), (T0 + 1300, "S12", "alighted")),
    ]
    (j,) = b.build(reversed(segs))
    (leg,) = j.legs
    assert (leg.board_stop_id, leg.board_t) == ("S02", T0)
    assert (leg.alight_stop_id, leg.alight_t) == ("S12", T0 + 1300)
    assert leg.event_ids == tuple(s.event_id for s in segs)
    assert leg.distance_m == 10 * STOP_SPACING_M
    assert leg.distance_source == "gtfs"
    assert j.flags == ()
    assert j.fare_krw == _price(("R1", "gyeonggi_city", 8000.0))


def test_no_stitch_across_buses_trips_or_big_gaps(feed: Feed) -> None:
    b = _builder(feed, stitch_gap_s=30)
    segs = [
        seg((T0, "S02", "boarded"), (T0 + 500, None, "rotated")),
        seg((T0 + 501, None, "continued"), (T0 + 600, "S05", "alighted"), bus="b2"),
        seg((T0 + 600, "S02", "boarded"), (T0 + 700, None, "rotated"), trip="T1R"),
        seg((T0 + 760, None, "continued"), (T0 + 800, "S05", "alighted"), trip="T1R"),
    ]
    legs = b.stitch(segs)
    assert len(legs) == 4
    flags = [set(leg.flags) for leg in legs]
    assert flags[0] == {"lost", "review"}  # rotated with no continuation
    assert flags[1] == {"partial", "review"}  # continued with no predecessor


def test_lost_last_stop_policy_uses_end_stop_or_last_known(feed: Feed) -> None:
    b = _builder(feed)
    with_stop = b.stitch([seg((T0, "S03", "boarded"), (T0 + 300, "S07", "lost"))])[0]
    assert with_stop.alight_stop_id == "S07"
    assert with_stop.distance_m == 4 * STOP_SPACING_M
    assert set(with_stop.flags) == {"lost", "review"}
    segs = [
        seg((T0, "S03", "boarded"), (T0 + 500, None, "rotated")),
        seg((T0 + 501, None, "continued"), (T0 + 900, None, "lost")),
    ]
    (leg,) = b.stitch(segs)
    assert leg.alight_stop_id == "S03"  # the last stop the rider was confirmed at
    assert leg.distance_m == 0.0


def test_lost_penalty_policy_charges_route_maximum(feed: Feed) -> None:
    b = _builder(feed, lost_policy="penalty")
    (j,) = b.build([seg((T0, "S03", "boarded"), (T0 + 300, None, "lost"))])
    assert set(j.flags) == {"lost", "penalty", "review"}
    assert j.legs[0].distance_source == "penalty"
    assert j.legs[0].distance_m == 29 * STOP_SPACING_M
    assert j.fare_krw == _price(("R1", "gyeonggi_city", 29 * STOP_SPACING_M))
    # an unknown route falls back to the events' distance
    (j2,) = b.build(
        [seg((T0, "X1", "boarded"), (T0 + 300, None, "lost"), route="R9", trip=None, distance=1234)]
    )
    assert j2.legs[0].distance_source == "events"
    assert j2.legs[0].distance_m == 1234


def test_suspected_replay_is_flagged_and_not_charged(feed: Feed) -> None:
    b = _builder(feed)
    segs = [
        seg((T0, "S01", "boarded"), (T0 + 600, "S08", "alighted"), bus="b1"),
        seg(
            (T0 + 100, "S01", "boarded"),
            (T0 + 500, "S05", "alighted"),
            bus="b2",
            route="R2",
            trip="T2",
        ),
        seg((T0 + 3000, "S01", "boarded"), (T0 + 3300, "S04", "alighted"), bus="b1"),
    ]
    js = b.build(segs)
    held = [j for j in js if not j.charged]
    assert len(held) == 2
    for j in held:
        assert j.fare_krw == 0
        assert "suspected_replay" in j.flags
        assert "review" in j.flags
        assert j.to_json()["charged"] is False
    charged = [j for j in js if j.charged]
    assert len(charged) == 1
    assert charged[0].legs[0].board_t == T0 + 3000


def _hop(
    start: tuple[float, str], end: tuple[float, str], rssi: float | None, bus: str = "b2"
) -> Segment:
    """A ride on bus ``bus`` of route R2 (times relative to T0)."""
    return seg(
        (T0 + start[0], start[1], "boarded"),
        (T0 + end[0], end[1], "alighted"),
        bus=bus,
        route="R2",
        trip=f"T{bus[1:]}",
        rssi=rssi,
    )


def _alongside(
    *,
    strong: float | None = -56.0,
    weak: float | None = -78.0,
    hop: tuple[float, float] = (200, 330),
) -> list[Segment]:
    """r1 rides b1 S01 -> S10 (rotating once); b2 alongside hears them from S03 to S05."""
    return [
        seg((T0, "S01", "boarded"), (T0 + 250, None, "rotated"), rssi=strong),
        seg((T0 + 251, None, "continued"), (T0 + 600, "S10", "alighted"), rssi=strong),
        _hop((hop[0], "S03"), (hop[1], "S05"), weak),
    ]


def test_bus_alongside_much_weaker_is_dropped_not_held(feed: Feed) -> None:
    b = _builder(feed)
    segs = _alongside()
    js = b.build(segs)
    (charged,) = [j for j in js if j.charged]
    (dropped,) = [j for j in js if not j.charged]
    assert charged.legs[0].bus_id == "b1"
    assert (charged.legs[0].board_stop_id, charged.legs[0].alight_stop_id) == ("S01", "S10")
    assert charged.flags == ("overlap_resolved",)
    assert charged.fare_krw == _price(("R1", "gyeonggi_city", 9 * STOP_SPACING_M))
    assert dropped.legs[0].bus_id == "b2"
    assert dropped.flags == ("overlap_dropped",)  # decided: nothing for a person to review
    assert dropped.fare_krw == 0
    assert dropped.to_json()["charged"] is False
    # the same in any order
    assert b.build(list(reversed(segs))) == js


@pytest.mark.parametrize(
    ("case", "kw", "policy"),
    [
        ("margin below 10 dB", {"weak": -64.0}, {}),
        ("the weak leg has no strength", {"weak": None}, {}),
        ("the strong leg has no strength", {"strong": None}, {}),
        ("the stronger leg does not cover the other", {"hop": (200, 700)}, {}),
        ("settling turned off", {}, {"overlap_margin_db": None}),
        ("a wider margin asked for", {}, {"overlap_margin_db": 25.0}),
    ],
)
def test_overlap_not_settled_holds_both(
    feed: Feed, case: str, kw: dict[str, object], policy: dict[str, object]
) -> None:
    js = _builder(feed, **policy).build(_alongside(**kw))  # type: ignore[arg-type]
    assert len(js) == 2, case
    assert all(not j.charged and "suspected_replay" in j.flags for j in js), case


def test_overlap_strength_counts_only_segments_in_the_common_time(feed: Feed) -> None:
    # b1's first segment is strong but ends before the hop; over the hop b1 is weak too
    segs = _alongside()
    segs[1] = seg((T0 + 251, None, "continued"), (T0 + 600, "S10", "alighted"), rssi=-75.0)
    segs[2] = _hop((260, "S03"), (330, "S05"), -80.0)
    js = _builder(feed).build(segs)
    assert all(not j.charged and "suspected_replay" in j.flags for j in js)


def test_three_way_overlap_drops_both_weaker_legs(feed: Feed) -> None:
    segs = [*_alongside(), _hop((400, "S06"), (560, "S09"), -81.0, bus="b3")]
    js = _builder(feed).build(segs)
    assert [j.legs[0].bus_id for j in js if j.charged] == ["b1"]
    assert sorted(j.legs[0].bus_id for j in js if "overlap_dropped" in j.flags) == ["b2", "b3"]


@pytest.mark.parametrize(
    ("evidence", "expected"),
    [
        ({"rssi_med": -71}, -71.0),
        ({"rssi_med": -70.5, "n_adv": 3}, -70.5),
        ({}, None),
        ({"rssi_med": "-70"}, None),
        ({"rssi_med": True}, None),
        ({"rssi_med": float("nan")}, None),
        ("not an object", None),
    ],
)
def test_segment_reads_rssi_from_evidence(evidence: object, expected: float | None) -> None:
    event = {
        "bus_id": "b1",
        "seq": 1,
        "event_id": "e",
        "interval": 1,
        "route_id": None,
        "trip_id": None,
        "start": {"t": 1.0, "stop_id": None, "cause": "boarded"},
        "end": {"t": 2.0, "stop_id": None, "cause": "lost"},
        "distance_m": 0.0,
        "evidence": evidence,
    }
    assert Segment.from_event(event, "r1").rssi_med == expected


def test_transfer_overlap_within_tolerance_is_a_transfer(feed: Feed) -> None:
    b = _builder(feed, replay_overlap_s=60)
    segs = [
        seg((T0, "S01", "boarded"), (T0 + 300, "S05", "alighted"), bus="b1"),
        # boarded the wide-area bus 20 s before the first bus noticed the rider was gone
        seg(
            (T0 + 280, "S05", "boarded"),
            (T0 + 900, "S15", "alighted"),
            bus="b2",
            route="R2",
            trip="T2",
        ),
    ]
    (j,) = b.build(segs)
    assert j.charged
    assert len(j.legs) == 2
    assert j.fare_krw == _price(
        ("R1", "gyeonggi_city", 3200.0), ("R2", "gyeonggi_wide_area", 8000.0)
    )


def test_same_route_again_is_a_new_journey_and_default_network(feed: Feed) -> None:
    b = _builder(feed)
    js = b.build(
        [
            seg((T0, "S01", "boarded"), (T0 + 100, "S02", "alighted")),
            seg((T0 + 200, "S02", "boarded"), (T0 + 300, "S03", "alighted")),
            seg((T0 + 400, "S03", "boarded"), (T0 + 500, "S04", "alighted"), route="R3", trip="T3"),
            seg(
                (T0 + 9000, "A", "boarded"),
                (T0 + 9100, "B", "alighted"),
                route=None,
                trip=None,
                distance=700,
            ),
        ]
    )
    assert [len(j.legs) for j in js] == [1, 2, 1]
    assert js[1].legs[1].network_id == "gyeonggi_city"  # R3 has no network: the default
    assert js[2].legs[0].route_id is None
    assert js[2].legs[0].distance_m == 700


def test_distance_without_feed_and_pattern_fallback(feed: Feed) -> None:
    nofeed = _builder(None)
    (leg,) = nofeed.stitch(
        [seg((T0, "S01", "boarded"), (T0 + 60, "S03", "alighted"), distance=1555)]
    )
    assert (leg.distance_m, leg.distance_source) == (1555, "events")
    b = _builder(feed)
    # unknown trip id: the route's pattern (direction 1 runs S30 -> S01)
    (leg2,) = b.stitch([seg((T0, "S10", "boarded"), (T0 + 60, "S07", "alighted"), trip="nope")])
    assert leg2.distance_m == 3 * STOP_SPACING_M
    assert b.gtfs_distance(None, None, "S01", "S02") is None
    assert b.gtfs_distance("R1", None, None, "S02") is None
    assert b.route_max_distance(None) is None


def test_deterministic_under_permutation(feed: Feed) -> None:
    rng = random.Random(3)
    segs = []
    for k in range(60):
        t = T0 + k * 400
        board = rng.randint(1, 20)
        segs.append(
            seg(
                (t, f"S{board:02d}", "boarded"),
                (t + 200, f"S{board + rng.randint(1, 8):02d}", rng.choice(["alighted", "lost"])),
                rider=f"r{k % 5}",
                bus=f"b{k % 3}",
            )
        )
    b = _builder(feed)
    out1 = [j.to_json() for j in b.build(segs)]
    rng.shuffle(segs)
    out2 = [j.to_json() for j in b.build(segs)]
    assert out1 == out2
    assert [j["rider_id"] for j in out1] == sorted(j["rider_id"] for j in out1)


def test_explain_journey_lines(feed: Feed) -> None:
    b = _builder(feed)
    (j,) = b.build([seg((T0, "S02", "boarded"), (T0 + 300, "S12", "alighted"))])
    lines, mismatch = explain_journey(b, j.to_json())
    assert not mismatch
    assert lines[0].startswith("journey of rider r1")
    assert "GTFS shape_dist_traveled S02 -> S12" in lines[1]
    assert any(line.startswith("total:") for line in lines)
    assert lines[-1].endswith("(matches)")
    wrong = dict(j.to_json(), fare_krw=1)
    assert explain_journey(b, wrong)[1]
    with pytest.raises(ValueError, match="no legs"):
        explain_journey(b, {"legs": []})
    with pytest.raises(ValueError, match="board_t"):
        explain_journey(b, {"legs": [{"route_id": "R1"}]})


def test_cli_fares_explain(feed: Feed, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from backend.cli import main

    gtfs = tmp_path / "g"
    write_gtfs(gtfs)
    b = _builder(feed)
    (j,) = b.build([seg((T0, "S02", "boarded"), (T0 + 300, "S12", "alighted"))])
    text = json.dumps(j.to_json())
    assert main(["fares", "explain", text, "--gtfs", str(gtfs)]) == 0
    out = capsys.readouterr().out
    assert "highest base fare" in out
    f = tmp_path / "J.jsonl"
    f.write_text(text + "\n")
    assert main(["fares", "explain", str(f), "--gtfs", str(gtfs), "--rider", "nobody"]) == 2
    assert main(["fares", "explain", "{not json", "--gtfs", str(gtfs)]) == 2
