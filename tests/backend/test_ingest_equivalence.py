"""Offline (``busbell backend settle``) and online ingest decide alike (property-based).

Over shuffled, duplicated and (transiently) gapped deliveries of two buses' chains
(segments and ``missed`` records), with forged, conflicting, mislinked, malformed,
unknown-bus and non-derived-id items mixed in and the messages grouped into
transactions at random, the online ledger (``fare_events`` + ``missed_stops``) holds
exactly the chain records offline settle takes, and both count the same rejections by
reason: online and offline each verifying signatures one per hash-linked run (``runs``,
online per transaction, offline per chunk) and each record's own (``every``), all four
alike.

A validly signed record whose ``event_id`` is not its derivation (another record's id,
one the edge chose, a missed record's id without its type tag, a segment's with it) is
``event_id_mismatch`` on both sides, and the genuine record of its seq still links.
Sometimes a third bus's chain is delivered too, whose first records reuse event ids:
one of bus-01's segments, one of bus-02's (on a ``missed`` record) and one of its own
earlier records: each is ``event_id_mismatch``, its chain stops there, online and
offline alike.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from backend._db import create_engine, fare_events, migrate, missed_stops
from backend._errors import REJECTION_REASONS
from backend._fare_engine import FareEngine
from backend._fare_rules import load_rules
from backend._ingest import IngestCore, Ingestor
from backend._journeys import JourneyBuilder, JourneyPolicy
from backend._keys import register_device
from backend._resolve import Resolver, RiderKeyring
from backend._settle import Settler, Verify
from busbell import (
    canonical_bytes,
    derive_event_id,
    derive_missed_event_id,
    event_hash,
    load_gtfs,
    read_devices,
    sign_event,
)
from tests.factories.backend_world import T0, World, missed_fields
from tests.factories.fare_events import device_key_for


class Base:
    """Two buses' chains, their keys, a migrated template ledger."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.world = World(directory, riders=3, buses=3)
        for k in range(6):
            bus = f"bus-{1 + k % 2:02d}"
            self.world.ride(f"r{1 + k % 3:04d}", bus, board=1, alight=4 + k, t=T0 + k * 800)
            if k % 2:
                self.world.buses[bus].emit(missed_fields(f"q{k}", "S09", T0 + k * 800 + 700))
        # bus-03 reuses event ids (not derived, so refused): bus-01's seq 2, bus-02's
        # seq 1 (a segment's, on a missed record), then its own seq 1's
        w, taker = self.world, self.world.buses["bus-03"]
        one, two = w.buses["bus-01"].events, w.buses["bus-02"].events
        taker.emit(self._fields("r0001", T0 + 100), event_id=one[1]["event_id"])
        taker.emit(missed_fields("q-taker", "S07", T0 + 900), event_id=two[0]["event_id"])
        taker.emit(self._fields("r0002", T0 + 1500), event_id=taker.events[0]["event_id"])
        taker.emit(self._fields("r0003", T0 + 2500))
        self.chains = {b: list(c.events) for b, c in self.world.buses.items() if b != "bus-03"}
        self.taker = list(taker.events)
        self.keys = {b: c.key for b, c in self.world.buses.items()}
        self.template = directory / "template.db"
        asyncio.run(self._template())

    def _fields(self, rider: str, t: float) -> dict[str, Any]:
        return self.world.segment_fields(
            rider,
            route_id="R1",
            trip_id="T1",
            start=(t, "S01", "boarded"),
            end=(t + 300.0, "S03", "alighted"),
            distance_m=1600.0,
        )

    async def _template(self) -> None:
        eng = create_engine(f"sqlite+aiosqlite:///{self.template}")
        await migrate(eng)
        async with eng.begin() as conn:
            for b, key in self.keys.items():
                await register_device(conn, b, key.public, now=1.0)
        await eng.dispose()

    def settler(self, verify: Verify = "runs") -> Settler:
        feed = load_gtfs(self.world.gtfs)
        ring = RiderKeyring()
        for rider_id, token_key in sorted(self.world.token_keys.items()):
            ring.add(rider_id, token_key)
        builder = JourneyBuilder(
            FareEngine(load_rules(timezone=feed.timezone)), feed, JourneyPolicy()
        )
        devices = read_devices(self.world.devices_csv)
        return Settler(devices, Resolver(ring), builder, verify=verify)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    return Base(tmp_path_factory.mktemp("equivalence"))


FORGER = device_key_for("ZZ8")
"""A key no bus is registered with."""


def _variant(ev: dict[str, Any], prev: str) -> dict[str, Any]:
    """Another record at ``ev``'s seq (other content), naming ``prev``; not signed."""
    if ev["type"] == "segment":
        return dict(ev, distance_m=ev["distance_m"] + 1.0, prev=prev)
    return dict(ev, trip_id="T-other", prev=prev)


def _derived(ev: dict[str, Any]) -> dict[str, Any]:
    """``ev`` with its event id derived (after its bus or seq was changed); not signed."""
    if ev["type"] == "segment":
        eid = derive_event_id(ev["bus_id"], ev["seq"], ev["rid"], ev["start"]["t"])
    else:
        eid = derive_missed_event_id(ev["bus_id"], ev["seq"], ev["request_id"], ev["passed"]["t"])
    return dict(ev, event_id=eid)


def _not_derived(base: Base, ev: dict[str, Any], i: int) -> dict[str, Any]:
    """``ev`` with an event id that is not its derivation (validly signed)."""
    bus, seq = ev["bus_id"], ev["seq"]
    others = [e for c in base.chains.values() for e in c if e is not ev]
    if i % 4 == 0:  # another record's id
        eid = others[i % len(others)]["event_id"]
    elif i % 4 == 1:  # chosen by the edge
        eid = f"edge-{bus}-{seq}"
    elif ev["type"] == "missed":  # without the type tag / with a segment's start
        eid = derive_event_id(bus, seq, ev["request_id"], ev["passed"]["t"])
    else:  # tagged, as if it were a missed record
        eid = derive_missed_event_id(bus, seq, ev["rid"], ev["start"]["t"])
    return sign_event(dict(ev, event_id=eid), base.keys[bus])


def _hostile(base: Base, kind: str, bus: str, i: int) -> list[tuple[str, bytes]]:
    chain = base.chains[bus]
    ev = chain[i % len(chain)]
    key = base.keys[bus]

    def one(b: str, *events: dict[str, Any]) -> tuple[str, bytes]:
        return b, canonical_bytes({"bus_id": b, "events": list(events)})

    if kind == "tampered":  # signature no longer verifies
        field = "distance_m" if ev["type"] == "segment" else "doors_opened"
        bad = dict(ev, **{field: 1.5 if field == "distance_m" else False})
        bad["sig"] = chain[(i + 1) % len(chain)]["sig"]
        return [one(bus, bad)]
    if kind == "variant":  # same seq and prev, other content, validly signed
        return [one(bus, sign_event(_variant(ev, ev["prev"]), key))]
    if kind == "mislinked":  # validly signed, prev links to nothing
        return [one(bus, sign_event(dict(ev, prev="1" * 64), key))]
    if kind == "forged_run":
        # a run that links to the genuine chain, signed by a key of no bus: each record
        # must be verified on its own (a failed record vouches for nothing)
        run = [sign_event(_variant(ev, ev["prev"]), FORGER)]
        for k in (1, 2):
            nxt = _derived(dict(chain[(i + k) % len(chain)], seq=ev["seq"] + k))
            run.append(sign_event(_variant(nxt, event_hash(run[-1])), FORGER))
        return [one(bus, e) for e in run] if i % 2 else [one(bus, *run)]
    if kind == "other_bus_vouches":
        # a forged record of this bus that another bus's genuine key links to: a
        # signature vouches only for records of its own bus
        other = "bus-02" if bus == "bus-01" else "bus-01"
        theirs = base.chains[other]
        ev = chain[i % min(len(chain), len(theirs))]  # the linker's seq gets decided
        forged = dict(_variant(ev, ev["prev"]), sig=ev["sig"])
        theirs = theirs[ev["seq"] % len(theirs)]
        linker = sign_event(
            _derived(dict(theirs, seq=ev["seq"] + 1, prev=event_hash(forged))), base.keys[other]
        )
        return [one(bus, forged), one(other, linker)]
    if kind == "schema":
        return [one(bus, dict(ev, seq=0))]
    if kind == "unknown":
        other = sign_event(_derived(dict(ev, bus_id="ZZ9")), device_key_for("ZZ9"))
        return [one("ZZ9", other)]
    if kind == "non_derived":
        return [one(bus, _not_derived(base, ev, i))]
    return [(bus, b"{not json")]


Txns = list[list[tuple[str, bytes]]]


@st.composite
def deliveries(draw: st.DrawFn, base: Base) -> tuple[Txns, set[str], list[int]]:
    """Transactions of messages (every genuine record at least once, in any order), the
    kinds of hostile items mixed in (``collide``: the event-id taker's chain) and how
    many messages offline settle checks together, chunk after chunk (its signatures are
    verified one per hash-linked run of a chunk's records)."""
    units: list[list[tuple[str, bytes]]] = []  # messages that stay together when shuffled
    chains = dict(base.chains)
    collide = draw(st.booleans())
    if collide:
        chains["bus-03"] = base.taker
    for bus, chain in chains.items():
        order = draw(st.permutations(range(len(chain))))
        extra = draw(st.lists(st.integers(0, len(chain) - 1), max_size=4))  # duplicates
        idx = list(order) + extra
        k = 0
        while k < len(idx):
            n = draw(st.integers(1, 4))
            part = [chain[j] for j in idx[k : k + n]]
            units.append([(bus, canonical_bytes({"bus_id": bus, "events": part}))])
            k += n
    kinds = [
        "tampered",
        "variant",
        "mislinked",
        "forged_run",
        "other_bus_vouches",
        "schema",
        "unknown",
        "non_derived",
        "garbage",
    ]
    hostile = draw(
        st.lists(
            st.tuples(
                st.sampled_from(kinds), st.sampled_from(sorted(base.chains)), st.integers(0, 20)
            ),
            max_size=6,
        )
    )
    # a hostile item's messages stay next to each other (a forged record and the other
    # bus's record linking to it, a forged run in three messages), so they often share a
    # transaction online and a chunk offline, where a run decision could go wrong
    units.extend(_hostile(base, kind, bus, i) for kind, bus, i in hostile)
    messages = [m for unit in draw(st.permutations(units)) for m in unit]
    txns: list[list[tuple[str, bytes]]] = []
    k = 0
    while k < len(messages):
        n = draw(st.integers(1, 3))
        txns.append(list(messages[k : k + n]))
        k += n
    chunks = draw(st.lists(st.integers(1, 40), min_size=1, max_size=8))
    return txns, {kind for kind, _, _ in hostile} | ({"collide"} if collide else set()), chunks


def _summary(txns: list[list[tuple[str, bytes]]]) -> str:
    """The deliveries in short: per transaction, per message (seq, prev[:4], sig[:4])."""
    out = []
    for txn in txns:
        msgs = []
        for bus, payload in txn:
            try:
                evs = json.loads(payload)["events"]
                msgs.append(
                    f"{bus}:" + ",".join(f"{e['seq']}/{e['prev'][:4]}/{e['sig'][:4]}" for e in evs)
                )
            except ValueError:
                msgs.append(f"{bus}:garbage")
        out.append(" | ".join(msgs))
    return "\n".join(out)


def _verified_total() -> float:
    return REGISTRY.get_sample_value("busbell_fare_signatures_verified_total") or 0.0


async def _online(
    db: Path, txns: list[list[tuple[str, bytes]]], verify: Verify = "runs"
) -> tuple[dict[str, Any], Counter[str]]:
    eng = create_engine(f"sqlite+aiosqlite:///{db}")
    try:
        ing = Ingestor(eng, IngestCore(verify=verify), worker_id="w")
        await ing.refresh_devices()
        rejected: Counter[str] = Counter()
        for txn in txns:
            rejected.update((await ing.ingest(txn)).rejected)
        links: dict[str, list[tuple[int, int]]] = {}
        async with eng.connect() as conn:
            for table in (fare_events, missed_stops):
                q = sa.select(table.c.bus_id, table.c.seq, table.c.event_hash)
                for b, seq, h in await conn.execute(q):
                    links.setdefault(b, []).append((int(seq), int(h[:16], 16) | 1))
        return {b: sorted(v) for b, v in sorted(links.items())}, rejected
    finally:
        await eng.dispose()


Links = dict[str, list[tuple[int, int]]]


def _offline(
    base: Base, txns: Txns, chunks: list[int], verify: Verify
) -> tuple[Links, Counter[str], int]:
    """Offline settle of the deliveries, ``chunks`` messages checked together at a time
    (cycled): its chain links per bus, rejections by reason, signatures verified."""
    settler = base.settler(verify)
    payloads = [payload for txn in txns for _bus, payload in txn]
    k = 0
    for n in itertools.cycle(chunks):
        if k >= len(payloads):
            break
        settler.feed_lines(payloads[k : k + n])
        k += n
    links = {b: v for b, v in settler.links().items() if v}
    rejected = Counter({r: n for r, n in settler.stats.rejected.items() if r in REJECTION_REASONS})
    return links, rejected, settler.stats.signatures


def _both(
    base: Base,
    txns: Txns,
    tmp_path_factory: pytest.TempPathFactory,
    chunks: list[int] | None = None,
    verify: Verify = "runs",
) -> tuple[Links, Counter[str], Links, Counter[str]]:
    """Online ingest into a fresh ledger and offline settle of the same deliveries:
    each side's chain links per bus and rejections by reason."""
    db = tmp_path_factory.mktemp("ledger") / "ledger.db"
    shutil.copy(base.template, db)
    online_links, online_rejected = asyncio.run(_online(db, txns, verify))
    offline_links, offline_rejected, _ = _offline(base, txns, chunks or [1], verify)
    return online_links, online_rejected, offline_links, offline_rejected


def _one(bus: str, event: dict[str, Any]) -> list[tuple[str, bytes]]:
    return [(bus, canonical_bytes({"bus_id": bus, "events": [event]}))]


@pytest.mark.parametrize("verify", ["runs", "every"])
@pytest.mark.parametrize("held", [True, False])
def test_a_record_carrying_another_records_event_id_is_refused_alike(
    base: Base, tmp_path_factory: pytest.TempPathFactory, held: bool, verify: Verify
) -> None:
    """bus-03's seq 1 carries bus-01's seq 2's event id. Whether bus-01's record is
    held (it came before its seq 1) or stored when bus-03's arrives, bus-03's is
    ``event_id_mismatch`` (online and offline) and bus-01's chain is whole."""
    one, taker = base.chains["bus-01"], base.taker[0]
    if held:
        txns = [_one("bus-01", one[1]), _one("bus-03", taker), _one("bus-01", one[0])]
    else:
        txns = [_one("bus-01", one[0]), _one("bus-01", one[1]), _one("bus-03", taker)]
    online_links, online_rejected, offline_links, offline_rejected = _both(
        base, txns, tmp_path_factory, verify=verify
    )
    assert online_links == offline_links
    assert online_rejected == offline_rejected == {"event_id_mismatch": 1}
    assert [s for s, _ in offline_links["bus-01"]] == [1, 2]
    assert "bus-03" not in offline_links


@pytest.mark.parametrize("verify", ["runs", "every"])
@pytest.mark.parametrize("kind", ["other_bus_vouches", "forged_run", "tampered", "mislinked"])
def test_hostile_records_in_the_genuine_chains_transaction_alike(
    base: Base, tmp_path_factory: pytest.TempPathFactory, kind: str, verify: Verify
) -> None:
    """A hostile item's messages first, then both chains whole, in one transaction (one
    chunk offline): the runs online and offline are decided over the same records, so a
    wrong run decision on either side (a forged record vouched for across buses, say)
    shows here whatever the property test below happens to draw."""
    genuine = [
        (b, canonical_bytes({"bus_id": b, "events": chain})) for b, chain in base.chains.items()
    ]
    for i in (1, 2):
        txn = [*_hostile(base, kind, "bus-01", i), *genuine]
        online_links, online_rejected, offline_links, offline_rejected = _both(
            base, [txn], tmp_path_factory, chunks=[len(txn)], verify=verify
        )
        assert online_links == offline_links
        assert online_rejected == offline_rejected
        assert online_rejected["bad_signature"] >= (0 if kind == "mislinked" else 1)
        assert {b: [s for s, _ in v] for b, v in online_links.items()} == {
            b: list(range(1, len(c) + 1)) for b, c in base.chains.items()
        }


# Examples are slow (a ledger each): no shrinking, a failure is printed as generated.
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(data=st.data())
def test_offline_and_online_ingest_agree(
    base: Base, data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    txns, kinds, chunks = data.draw(deliveries(base))
    # online and offline, each a signature per hash-linked run of the records
    # decided together (the default: online a transaction's, offline a chunk's), and
    # every record's own
    online: dict[Verify, tuple[Links, Counter[str], float]] = {}
    for mode in ("runs", "every"):
        db = tmp_path_factory.mktemp("ledger") / "ledger.db"
        shutil.copy(base.template, db)
        before = _verified_total()
        links, rejected = asyncio.run(_online(db, txns, mode))
        online[mode] = links, rejected, _verified_total() - before
    online_links, online_rejected, online_runs_verified = online["runs"]
    runs_links, runs_rejected, runs_verified = _offline(base, txns, chunks, "runs")
    every_links, every_rejected, every_verified = _offline(base, txns, chunks, "every")
    assert online_links == online["every"][0] == runs_links == every_links, _summary(txns)
    assert online_rejected == online["every"][1] == runs_rejected == every_rejected, _summary(txns)
    assert runs_verified <= every_verified
    assert online_runs_verified <= online["every"][2]
    # what was generated (pytest --hypothesis-show-statistics)
    event("event ids collide" if "collide" in kinds else "no collision")
    event(f"event_id_mismatch: {online_rejected['event_id_mismatch']}")
    event(f"signatures verified, runs / every: {runs_verified / every_verified:.1f}")
    for kind in sorted(kinds):
        event(f"hostile: {kind}")
    # every seq of every chain is in the ledger (a validly signed variant may hold a seq
    # instead of the genuine record, and then the chain stops behind it on both sides)
    if kinds & {"non_derived", "collide"}:
        assert online_rejected["event_id_mismatch"] >= 1
    if "variant" not in kinds:  # non-derived ids take no seq from the genuine records
        assert {b: [s for s, _ in v] for b, v in online_links.items()} == {
            b: list(range(1, len(c) + 1)) for b, c in base.chains.items()
        }
