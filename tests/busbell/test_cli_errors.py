"""One error format, non-zero exits when nothing useful came out, outputs never clobber
inputs: what a user sees when a `busbell` command goes wrong."""

from __future__ import annotations

import importlib.metadata
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from busbell import DEVICES_HEADER, FLEET_HEADER, DeviceKey, TraceWriter, day_of, write_rows
from busbell._cliutil import Progress, check_output_path, rejection_summary
from busbell._errors import BusbellError
from tests.factories.backend_world import T0, World
from tests.factories.edge_world import BusPlan, SynthToken, synth_trace, write_gtfs


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def busbell(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "busbell.cli", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=cwd,
    )


def settle_args(world: World, events: Path, out: Path) -> list[str | Path]:
    return [
        "backend",
        "settle",
        events,
        "--gtfs",
        world.gtfs,
        "--riders",
        world.riders_csv,
        "--devices",
        world.devices_csv,
        "--out",
        out,
    ]


def one_ride_world(tmp_path: Path) -> tuple[World, Path]:
    world = World(tmp_path, riders=2, buses=1)
    world.ride("r0001", "bus-01", board=2, alight=6, t=T0)
    world.ride("r0002", "bus-01", board=3, alight=5, t=T0 + 30)
    return world, world.write_events(tmp_path / "EVENTS.jsonl")


def test_settle_refuses_to_overwrite_and_force_replaces(tmp_path: Path) -> None:
    world, events = one_ride_world(tmp_path)
    truth = tmp_path / "JOURNEYS.jsonl"
    truth.write_text('{"ground":"truth"}\n')
    r = busbell(*settle_args(world, events, truth))
    assert r.returncode == 1
    assert r.stderr.startswith("busbell: error: --out ")
    assert "already exists" in r.stderr
    assert "--force" in r.stderr
    assert truth.read_text() == '{"ground":"truth"}\n'  # untouched
    # an input is never an output, even with --force
    r = busbell(*settle_args(world, events, events), "--force")
    assert r.returncode == 1
    assert "is one of the inputs" in r.stderr
    assert events.stat().st_size > 0
    r = busbell(*settle_args(world, events, truth), "--force")
    assert r.returncode == 0, r.stderr
    assert len(truth.read_text().splitlines()) == 2


def test_settle_exits_nonzero_with_the_reason_when_everything_is_rejected(
    tmp_path: Path,
) -> None:
    world, events = one_ride_world(tmp_path)
    # the registry holds another key for this bus: every signature fails
    devices = tmp_path / "OTHER_DEVICES.csv"
    write_rows(devices, DEVICES_HEADER, [("bus-01", DeviceKey.generate().public.hex)])
    args = settle_args(world, events, tmp_path / "J.jsonl")
    args[args.index("--devices") + 1] = devices
    r = busbell(*args)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last == "busbell: error: nothing settled: all 2 events rejected: bad_signature"


def test_missing_input_file_is_one_clear_line(tmp_path: Path) -> None:
    world, _ = one_ride_world(tmp_path)
    r = busbell(*settle_args(world, tmp_path / "nope.jsonl", tmp_path / "J.jsonl"))
    assert r.returncode == 1
    assert r.stderr.strip() == (
        f"busbell: error: {tmp_path / 'nope.jsonl'}: No such file or directory"
    )
    r = busbell("token", "decode", "zz")
    assert r.returncode == 1
    assert r.stderr.startswith("busbell: error: ")


def _replay_inputs(tmp_path: Path, *, wrong_keys: bool) -> list[str | Path]:
    gtfs = write_gtfs(tmp_path / "gtfs")
    recs, _ = synth_trace(BusPlan(), [SynthToken(bytes([1]) * 16, board=0, alight=3)], seed=3)
    trace = tmp_path / "day.trace.jsonl"
    with trace.open("w") as fp:
        w = TraceWriter(fp, "bus-0007", scenario="test")
        for rec in recs:
            w.write(rec)
    days = sorted({day_of(r.t) + k for r in recs for k in (-1, 0, 1)})
    fleet = tmp_path / "FLEET.csv"
    # the right keys are what synth_trace's tokens use; wrong keys are another fleet's
    from tests.factories.edge_world import fleet_key_of

    keys = [(str(d), (bytes(32) if wrong_keys else fleet_key_of(d)).hex()) for d in days]
    write_rows(fleet, FLEET_HEADER, keys)
    pem = tmp_path / "bus.pem"
    DeviceKey.from_seed(bytes(range(32))).save(pem)
    return [
        "edge",
        "replay",
        trace,
        "--gtfs",
        gtfs,
        "--device-key",
        pem,
        "--fleet-keys",
        fleet,
        "--out",
        tmp_path / "EVENTS.jsonl",
    ]


def test_replay_with_the_wrong_fleet_keys_says_so(tmp_path: Path) -> None:
    r = busbell(*_replay_inputs(tmp_path, wrong_keys=True))
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("busbell: error: no fare events: all ")
    assert "adverts rejected: bad_btag" in last
    assert "fleet keys" in last
    assert not (tmp_path / "EVENTS.jsonl").exists()


def test_replay_with_the_right_keys_succeeds_and_refuses_a_second_write(tmp_path: Path) -> None:
    args = _replay_inputs(tmp_path, wrong_keys=False)
    r = busbell(*args)
    assert r.returncode == 0, r.stderr
    assert "0 of " in r.stderr  # no advert rejected
    first = (tmp_path / "EVENTS.jsonl").read_bytes()
    assert [json.loads(line)["type"] for line in first.splitlines()] == ["segment"]
    r = busbell(*args)
    assert r.returncode == 1
    assert "already exists" in r.stderr
    assert (tmp_path / "EVENTS.jsonl").read_bytes() == first


def test_rejection_summary() -> None:
    assert rejection_summary(26, {"bad_signature": 26}) == "all 26 events rejected: bad_signature"
    assert rejection_summary(1, {"x": 1}) == "all 1 event rejected: x"
    assert rejection_summary(5, {}) == "0 of 5 events rejected"
    many = {f"r{i}": 1 for i in range(8)}
    assert rejection_summary(30, many, "advert") == (
        "8 of 30 adverts rejected: r0 1, r1 1, r2 1, r3 1, r4 1, r5 1, and 2 more reasons"
    )


def test_check_output_path_refuses_a_file_inside_an_input_directory(tmp_path: Path) -> None:
    (tmp_path / "gtfs").mkdir()
    with pytest.raises(BusbellError, match="inside the input directory"):
        check_output_path(tmp_path / "gtfs" / "out.jsonl", [tmp_path / "gtfs"], force=True)
    check_output_path(tmp_path / "out.jsonl", [tmp_path / "gtfs"])  # fine


def test_progress_draws_only_when_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    monkeypatch.setenv("BUSBELL_PROGRESS", "1")
    p = Progress("settling", total=10, unit="events", stream=buf, hz=1e9)
    for _ in range(10):
        p.advance()
    p.close()
    text = buf.getvalue()
    assert "settling: 10/10 events (100 %)" in text
    assert text.endswith("\n")
    monkeypatch.setenv("BUSBELL_PROGRESS", "0")
    quiet = io.StringIO()
    q = Progress("settling", stream=quiet)
    q.advance(5)
    q.close()
    assert quiet.getvalue() == ""


def test_extras_keep_the_backend_off_the_bus() -> None:
    reqs = importlib.metadata.requires("busbell") or []

    def extras_of(name: str) -> set[str]:
        out = set()
        for req in reqs:
            if re.match(rf"{name}\b", req, re.IGNORECASE):
                m = re.search(r'extra == "([^"]+)"', req)
                out.add(m.group(1) if m else "")
        return out

    assert extras_of("fastapi") == {"backend"}
    assert extras_of("alembic") == {"backend"}
    assert extras_of("protobuf") == {"backend"}
    assert extras_of("bleak") == {"edge"}
    assert "" not in extras_of("sqlalchemy")
    assert extras_of("structlog") == {""}  # the contract package's own needs stay base
