from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from busbell import (
    FLEET_HEADER,
    DeviceKey,
    HashChain,
    TraceError,
    TraceWriter,
    day_of,
    validate_event,
    verify_event,
    write_rows,
)
from edge.cli import main
from tests.factories.edge_world import BusPlan, SynthToken, fleet_key_of, synth_trace, write_gtfs


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """The CLI configures logging for the process; leave the defaults for other tests."""
    yield
    structlog.reset_defaults()


def key(i: int) -> bytes:
    return bytes([i]) * 16


def make_inputs(tmp_path: Path) -> dict[str, Path]:
    gtfs = write_gtfs(tmp_path / "gtfs")
    plan = BusPlan()
    tokens = [
        SynthToken(key(1), board=0, alight=3),
        SynthToken(key(2), board=1, alight=5),
        SynthToken(key(3), board=2, alight=6),
    ]
    recs, _ = synth_trace(plan, tokens, seed=3)
    trace = tmp_path / "day.trace.jsonl"
    with trace.open("w") as fp:
        w = TraceWriter(fp, "bus-0007", scenario="test")
        for i, r in enumerate(recs):
            w.write(r)
            if i == 100:
                fp.write("this is not json\n")
            if i == 200:
                fp.write('{"kind":"adv","t":1,"addr":"x","rssi":500,"mfr":{}}\n')
    fleet = tmp_path / "FLEET.csv"
    days = sorted({day_of(r.t) + k for r in recs for k in (-1, 0, 1)})
    write_rows(fleet, FLEET_HEADER, [(str(d), fleet_key_of(d).hex()) for d in days])
    pem = tmp_path / "bus.pem"
    DeviceKey.from_seed(bytes(range(32))).save(pem)
    return {"gtfs": gtfs, "trace": trace, "fleet": fleet, "pem": pem}


def replay_args(p: dict[str, Path], out: Path) -> list[str]:
    return [
        "replay",
        str(p["trace"]),
        "--gtfs",
        str(p["gtfs"]),
        "--device-key",
        str(p["pem"]),
        "--fleet-keys",
        str(p["fleet"]),
        "--out",
        str(out),
    ]


def test_replay_is_deterministic_and_chained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = make_inputs(tmp_path)
    out1, out2 = tmp_path / "e1.jsonl", tmp_path / "e2.jsonl"
    assert main(replay_args(p, out1), "busbell edge") == 0
    err = capsys.readouterr().err
    assert "2 bad trace lines skipped" in err
    assert "line 103: not JSON" in err
    assert main(replay_args(p, out2), "busbell edge") == 0
    data = out1.read_bytes()
    assert data == out2.read_bytes()
    lines = data.splitlines()
    assert len(lines) >= 3
    public = DeviceKey.load(p["pem"]).public
    chain = HashChain()
    for line in lines:
        event = json.loads(line)
        assert json.dumps(event, sort_keys=True, separators=(",", ":")).encode() == line
        validate_event(event)
        verify_event(event, public)
        assert event["bus_id"] == "bus-0007"
        chain.check(event)
        chain.advance(event)


def test_replay_through_busbell_entry_point(tmp_path: Path) -> None:
    p = make_inputs(tmp_path)
    out = tmp_path / "e.jsonl"
    r = subprocess.run(
        [sys.executable, "-m", "busbell.cli", "edge", *replay_args(p, out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=100,
    )
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()
    # a bad meta line is fatal with a clear message
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind":"adv"}\n')
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "busbell.cli",
            "edge",
            *replay_args({**p, "trace": bad}, tmp_path / "e2.jsonl"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=100,
    )
    assert r.returncode == 1
    assert "meta line" in r.stderr


def test_bad_meta_raises(tmp_path: Path) -> None:
    p = make_inputs(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("")
    with pytest.raises(TraceError):
        main(replay_args({**p, "trace": bad}, tmp_path / "o.jsonl"), "busbell edge")
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("cmd", ["run", "record", "replay"])
def test_every_command_has_help_with_example(cmd: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"], "busbell edge")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out
    assert f"busbell edge {cmd}" in out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([], "busbell edge") == 2
    assert "replay" in capsys.readouterr().out


def test_configuration_doc_is_current() -> None:
    from edge.config import render_config_doc

    doc = Path(__file__).resolve().parents[2] / "docs" / "configuration-edge.md"
    assert doc.read_text(encoding="utf-8") == render_config_doc(), (
        "docs/configuration-edge.md is stale: python -m edge.config > docs/configuration-edge.md"
    )


def test_config_env_overrides_and_errors(tmp_path: Path) -> None:
    from busbell import ConfigError, load_config
    from edge.config import EdgeConfig

    toml = tmp_path / "edge.toml"
    toml.write_text('bus_id = "bus-9"\nsource = "stream"\n[uplink]\nbatch_max_events = 50\n')
    cfg = load_config(EdgeConfig, toml, env={"BUSBELL_UPLINK__WINDOW_EVENTS": "500"})
    assert (cfg.bus_id, cfg.source) == ("bus-9", "stream")
    assert (cfg.uplink.batch_max_events, cfg.uplink.window_events) == (50, 500)
    for env in (
        {"BUSBELL_SOURCE": "usb"},
        {"BUSBELL_BUS_ID": "a/b"},
        {"BUSBELL_UPLINK__WINDOW_EVENTS": "1"},
    ):
        with pytest.raises(ConfigError):
            load_config(EdgeConfig, toml, env=env)
