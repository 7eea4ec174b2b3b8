"""Config loading, key files, GTFS loading, logging set-up and the key CLI."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog

from busbell import (
    DEVICES_HEADER,
    FLEET_HEADER,
    RIDERS_HEADER,
    ConfigError,
    ContractError,
    DeviceKey,
    KeyFileError,
    append_row,
    configure_logging,
    describe_config,
    get_logger,
    load_config,
    load_gtfs,
    option,
    read_devices,
    read_fleet_keys,
    read_riders,
    write_rows,
)


@dataclass(frozen=True, slots=True)
class Inner:
    host: str = option("127.0.0.1", doc="Host.")
    port: int = option(1883, doc="Port.")
    ratio: float = option(0.5, doc="Ratio.")
    tls: bool = option(False, doc="TLS.")
    ca: Path | None = option(None, doc="CA file.")
    tags: tuple[str, ...] = option((), doc="Tags.")


@dataclass(frozen=True, slots=True)
class Root:
    bus_id: str = option("bus-1", doc="Bus id.")
    mqtt: Inner = option(factory=Inner, doc="Broker.")


def test_defaults_toml_and_env_precedence(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('bus_id = "b7"\n[mqtt]\nport = 8883\ntags = ["a", "b"]\n')
    env = {"BUSBELL_MQTT__HOST": "broker", "BUSBELL_MQTT__TLS": "yes", "BUSBELL_MQTT__RATIO": "2"}
    cfg = load_config(Root, f, env=env)
    assert cfg == Root("b7", Inner("broker", 8883, 2.0, True, None, ("a", "b")))
    assert load_config(Root, None, env={}) == Root()
    cfg2 = load_config(
        Root, None, env={"BUSBELL_MQTT__CA": "/x/ca.pem", "BUSBELL_MQTT__TAGS": "p,q"}
    )
    assert cfg2.mqtt.ca == Path("/x/ca.pem")
    assert cfg2.mqtt.tags == ("p", "q")
    assert load_config(Root, None, env={}, overrides={"mqtt": {"port": 1}}).mqtt.port == 1


@pytest.mark.parametrize(
    ("toml", "env", "key", "expected"),
    [
        ('[mqtt]\nport = "x"\n', {}, "mqtt.port", "int"),
        ("[mqtt]\ntls = 1\n", {}, "mqtt.tls", "bool"),
        ("[mqtt]\nnope = 1\n", {}, "mqtt.nope", "a documented option"),
        ("oops = 1\n", {}, "oops", "a documented option"),
        ("", {"BUSBELL_MQTT__PORT": "eighty"}, "mqtt.port (from BUSBELL_MQTT__PORT)", "int"),
        ("", {"BUSBELL_MQTT__TLS": "maybe"}, "mqtt.tls (from BUSBELL_MQTT__TLS)", "bool"),
        ("mqtt = 3\n", {}, "mqtt", "table"),
        ("[mqtt]\ntags = [1]\n", {}, "mqtt.tags[0]", "str"),
        ("[mqtt]\nca = 5\n", {}, "mqtt.ca", "path or none"),
    ],
)
def test_errors_name_key_and_type(
    tmp_path: Path, toml: str, env: dict[str, str], key: str, expected: str
) -> None:
    f = tmp_path / "c.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as e:
        load_config(Root, f, env=env)
    assert e.value.key == key
    assert e.value.expected == expected
    assert key.split(" ", maxsplit=1)[0] in str(e.value)


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(Root, tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[[[")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(Root, tmp_path / "bad.toml")


def test_describe_lists_every_option_with_env_name() -> None:
    opts = {o.key: o for o in describe_config(Root)}
    assert set(opts) == {
        "bus_id",
        "mqtt.host",
        "mqtt.port",
        "mqtt.ratio",
        "mqtt.tls",
        "mqtt.ca",
        "mqtt.tags",
    }
    assert opts["mqtt.port"].env == "BUSBELL_MQTT__PORT"
    assert opts["mqtt.port"].type == "int"
    assert opts["mqtt.ca"].type == "path or none"
    assert all(o.doc for o in opts.values())


def test_key_files_round_trip_and_errors(tmp_path: Path) -> None:
    fleet = tmp_path / "FLEET.csv"
    append_row(fleet, FLEET_HEADER, ("19675", "aa" * 32))
    append_row(fleet, FLEET_HEADER, ("19676", "bb" * 32))
    assert read_fleet_keys(fleet) == {19675: b"\xaa" * 32, 19676: b"\xbb" * 32}
    assert fleet.read_text().splitlines()[0] == "day,fleet_key"
    key = DeviceKey.generate()
    devices = tmp_path / "DEVICES.csv"
    write_rows(devices, DEVICES_HEADER, [("bus-1", key.public.hex)])
    assert read_devices(devices)["bus-1"].hex == key.public.hex
    riders = tmp_path / "RIDERS.csv"
    write_rows(riders, RIDERS_HEADER, [("r1", "00" * 16)])
    assert read_riders(riders) == {"r1": bytes(16)}
    bad = {
        "day,fleet_key\nx,00\n": "day must be an integer",
        "day,fleet_key\n1,00\n": "expected 64 hex",
        "day,fleet_key\n1," + "zz" * 32 + "\n": "not hex",
        "day,key\n": "header",
        "day,fleet_key\n1,2,3\n": "2 columns",
        "day,fleet_key\n1," + "aa" * 32 + "\n1," + "aa" * 32 + "\n": "twice",
    }
    for text, msg in bad.items():
        fleet.write_text(text)
        with pytest.raises(KeyFileError, match=msg):
            read_fleet_keys(fleet)
    devices.write_text("bus_id,public_key\nb,1234\n")
    with pytest.raises(KeyFileError, match="DEVICES.csv:2"):
        read_devices(devices)
    with pytest.raises(KeyFileError, match="cannot read"):
        read_riders(tmp_path / "nope.csv")


def write_gtfs(d: Path, with_sdt: bool) -> None:
    d.mkdir()
    (d / "agency.txt").write_text(
        "agency_id,agency_name,agency_url,agency_timezone\na,A,http://a,Asia/Seoul\n"
    )
    (d / "stops.txt").write_text(
        "\ufeffstop_id,stop_name,stop_lat,stop_lon\nS1,One,37.0,127.0\nS2,Two,37.01,127.0\nS3,Three,37.02,127.0\n"
    )
    (d / "routes.txt").write_text("route_id,route_short_name,route_type\nR1,G6000,3\n")
    (d / "trips.txt").write_text(
        "route_id,service_id,trip_id,direction_id\nR1,wk,T1,0\nR1,wk,T2,0\n"
    )
    sdt = ["0", "1200.5", "2400"] if with_sdt else ["", "", ""]
    rows = "".join(
        f"{t},0{7 + i}:00:00,0{7 + i}:00:30,S{i + 1},{i + 1},{sdt[i]}\n"
        for t in ("T1", "T2")
        for i in range(3)
    )
    (d / "stop_times.txt").write_text(
        "trip_id,arrival_time,departure_time,stop_id,stop_sequence,shape_dist_traveled\n" + rows
    )
    (d / "route_networks.txt").write_text("network_id,route_id\ngyeonggi_wide_area,R1\n")


def test_gtfs_patterns_and_distances(tmp_path: Path) -> None:
    write_gtfs(tmp_path / "a", with_sdt=True)
    feed = load_gtfs(tmp_path / "a")
    p = feed.pattern("R1", 0)
    assert p is not None
    assert p.stop_ids == ("S1", "S2", "S3")
    assert p.dist_m == (0.0, 1200.5, 2400.0)
    assert p.distance_between("S2", "S3") == pytest.approx(1199.5)
    assert p.distance_between("S3", "S1") is None
    assert feed.network_of("R1") == "gyeonggi_wide_area"
    assert feed.network_of("X", "gyeonggi_city") == "gyeonggi_city"
    assert feed.timezone == "Asia/Seoul"
    assert feed.trips["T1"].arrivals_s[0] == 7 * 3600
    write_gtfs(tmp_path / "b", with_sdt=False)
    p2 = load_gtfs(tmp_path / "b").pattern("R1", 0)
    assert p2 is not None
    assert p2.dist_m[1] == pytest.approx(1112, abs=3)


def test_gtfs_errors_name_the_file(tmp_path: Path) -> None:
    write_gtfs(tmp_path / "g", with_sdt=True)
    (tmp_path / "g" / "stops.txt").write_text("stop_id,stop_lat,stop_lon\nS1,abc,1\n")
    with pytest.raises(ContractError, match="stops.txt:2"):
        load_gtfs(tmp_path / "g")
    with pytest.raises(ContractError, match="not a directory"):
        load_gtfs(tmp_path / "none")
    (tmp_path / "g" / "stops.txt").write_text("stop_id,stop_lat\nS1,1\n")
    with pytest.raises(ContractError, match="missing column"):
        load_gtfs(tmp_path / "g")


def test_logging_json_and_console() -> None:
    buf = io.StringIO()
    configure_logging("info", json=True, stream=buf)
    get_logger("test", bus="b1").info("segment_closed", seq=3)
    get_logger("test").debug("hidden")
    line = json.loads(buf.getvalue().splitlines()[0])
    assert line["event"] == "segment_closed"
    assert line["bus"] == "b1"
    assert line["component"] == "test"
    assert line["seq"] == 3
    assert line["level"] == "info"
    assert len(buf.getvalue().splitlines()) == 1
    buf2 = io.StringIO()
    configure_logging("debug", json=False, stream=buf2)
    get_logger("t").debug("hello_world", x=1)
    assert "hello_world" in buf2.getvalue()
    assert not buf2.getvalue().startswith("{")
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("loud")
    structlog.reset_defaults()


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "busbell.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
    )


def test_keys_cli_writes_the_files(tmp_path: Path) -> None:
    r = run_cli(
        "keys",
        "device",
        "--out",
        "b.pem",
        "--bus-id",
        "bus-9",
        "--devices",
        "DEVICES.csv",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert read_devices(tmp_path / "DEVICES.csv")["bus-9"].hex == r.stdout.strip()
    assert DeviceKey.load(tmp_path / "b.pem").public.hex == r.stdout.strip()
    again = run_cli("keys", "device", "--out", "b.pem", cwd=tmp_path)
    assert again.returncode == 1
    assert "cannot create" in again.stderr
    r = run_cli("keys", "rider", "--riders", "RIDERS.csv", "--rider-id", "r-1", cwd=tmp_path)
    assert r.returncode == 0
    assert list(read_riders(tmp_path / "RIDERS.csv")) == ["r-1"]
    r = run_cli(
        "keys", "fleet", "--fleet", "FLEET.csv", "--days", "3", "--from-day", "100", cwd=tmp_path
    )
    assert r.stdout.split() == ["100", "101", "102"]
    r = run_cli(
        "keys", "fleet", "--fleet", "FLEET.csv", "--days", "4", "--from-day", "100", cwd=tmp_path
    )
    assert r.stdout.split() == ["103"]
    assert sorted(read_fleet_keys(tmp_path / "FLEET.csv")) == [100, 101, 102, 103]


def test_cli_help_version_and_usage_errors(tmp_path: Path) -> None:
    assert "busbell" in run_cli("--version", cwd=tmp_path).stdout
    for cmd in (
        ["--help"],
        ["token", "encode", "--help"],
        ["token", "decode", "--help"],
        ["keys", "device", "--help"],
        ["keys", "rider", "--help"],
        ["keys", "fleet", "--help"],
    ):
        r = run_cli(*cmd, cwd=tmp_path)
        assert r.returncode == 0
        assert "example" in r.stdout
    r = run_cli(
        "token", "encode", "--key", "00", "--fleet-key", "00" * 32, "--t", "1", cwd=tmp_path
    )
    assert r.returncode == 2
    assert "expected 32 hex" in r.stderr
    r = run_cli("token", "decode", "zz", cwd=tmp_path)
    assert r.returncode != 0
    r = run_cli("token", "decode", "00" * 24, cwd=tmp_path)
    assert "wrong_version" in r.stderr


def test_module_level_logger_follows_capture_logs() -> None:
    log = get_logger("early", bus="b2")  # made before configuration, like module loggers
    with structlog.testing.capture_logs() as logs:
        log.warning("fare_batch_acked", upto_seq=4)
    assert logs == [
        {
            "event": "fare_batch_acked",
            "log_level": "warning",
            "component": "early",
            "bus": "b2",
            "upto_seq": 4,
        }
    ]


@pytest.mark.parametrize("component", ["edge", "backend", "sim"])
def test_config_command_lists_documented_options(tmp_path: Path, component: str) -> None:
    r = run_cli("config", component, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    entries = r.stdout.split("\n")
    heads = [e for e in entries if e and not e.startswith("    ")]
    docs = [e for e in entries if e.startswith("    ")]
    assert len(heads) >= 10
    assert len(heads) == len(docs)
    assert all(d.strip() for d in docs), "every option has a doc"
    assert all("env BUSBELL_" in h for h in heads)
    assert "PosixPath" not in r.stdout
