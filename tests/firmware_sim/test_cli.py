"""``busbell sim`` commands: list, scenario, --help of each, config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from busbell import describe_config
from firmware_sim.cli import main
from firmware_sim.config import CONFIG_CLASS


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) >= 12
    assert out[0].startswith("quiet_route")


def test_scenario_writes_the_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenario", "--name", "gnss_tunnel", "--seed", "4", "--out", str(tmp_path)]) == 0
    assert "gnss_tunnel" in capsys.readouterr().out
    for name in (
        "DEVICES.csv",
        "FLEET.csv",
        "RIDERS.csv",
        "JOURNEYS.jsonl",
        "truth.json",
        "requests.jsonl",
        "gtfs/stops.txt",
        "gtfs/route_networks.txt",
    ):
        assert (tmp_path / name).is_file(), name
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert truth["seed"] == 4
    assert truth["scenario"] == "gnss_tunnel"


def test_unknown_scenario_is_an_error(tmp_path: Path) -> None:
    assert main(["scenario", "--name", "nope", "--out", str(tmp_path)]) == 2
    assert main(["score", "--scenarios", "nope"]) == 2


@pytest.mark.parametrize("cmd", ["scenario", "list", "score", "run"])
def test_every_command_has_help_with_an_example(
    cmd: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out
    assert "busbell sim" in out


def test_busbell_entry_point_dispatches_to_sim() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "busbell.cli", "sim", "list"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "transfer_two_buses" in proc.stdout


def test_config_options_are_documented() -> None:
    opts = describe_config(CONFIG_CLASS)
    keys = {o.key for o in opts}
    assert {"scenario.seed", "radio.sensitivity_dbm", "live.speed", "mqtt.host"} <= keys
    assert all(o.doc for o in opts)


def test_bad_scale_in_config_is_a_config_error(tmp_path: Path) -> None:
    from busbell import ConfigError, load_config

    with pytest.raises(ConfigError, match="scale"):
        load_config(CONFIG_CLASS, env={"BUSBELL_SCENARIO__SCALE": "huge"})


def test_score_reports_a_failing_pipeline(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import firmware_sim._score as score

    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("edge replay ... exited 1: no such command")

    monkeypatch.setattr(score, "run_pipeline", boom)
    assert main(["score", "--scenarios", "quiet_route"]) == 1
    assert "the pipeline failed" in capsys.readouterr().err
