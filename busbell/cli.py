"""The ``busbell`` command line: one entry point for every user.

Core commands (``token``, ``keys``, ``tail``, ``demo``, ``config``) live here; the
``edge``, ``backend`` and ``sim`` groups are dispatched lazily to their packages'
``cli`` modules so that the contract package imports none of them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from busbell import __version__
from busbell._errors import BusbellError, TokenRejected
from busbell._keyfiles import (
    DEVICES_HEADER,
    FLEET_HEADER,
    RIDERS_HEADER,
    append_row,
    read_fleet_keys,
)
from busbell._signing import DeviceKey
from busbell._token import (
    DEFAULT_TQ_WINDOW_S,
    TokenFlags,
    TokenVerifier,
    day_of,
    derive_rider_keys,
    encode_payload,
    interval_of,
    parse_payload,
    rid_for_interval,
    unwrap_tq,
    verify_rtag,
)

__all__ = ["main"]

# group -> (module with ``main(argv, prog) -> int``, one-line help)
LAZY_GROUPS: dict[str, tuple[str, str]] = {
    "edge": ("edge.cli", "onboard daemon: run live, record or replay a trace, driver display"),
    "backend": ("backend.cli", "central service: run ingest, settle offline, enroll riders"),
    "sim": ("firmware_sim.cli", "simulated tokens, stops and buses; scenarios and scoring"),
    "demo": ("busbell._demo", "the whole system on one machine, display in a browser"),
    "tail": ("busbell._tail", "follow busbell MQTT topics, human-readable, with filters"),
}

EPILOG = """\
examples:
  busbell demo                               # whole system, simulated buses, browser display
  busbell token encode --key 000102030405060708090a0b0c0d0e0f \\
      --fleet-key $(printf '11%.0s' {1..32}) --t 1700000000 --flags 1
  busbell keys device --out bus-0001.pem --bus-id bus-0001 --devices DEVICES.csv
  busbell edge replay TRACE.jsonl --gtfs gtfs/ --device-key bus.pem --fleet-keys FLEET.csv \\
      --out EVENTS.jsonl
  busbell backend settle EVENTS.jsonl --gtfs gtfs/ --riders RIDERS.csv --devices DEVICES.csv \\
      --out JOURNEYS.jsonl
  busbell tail --bus bus-0001
"""


def _hex_bytes(n: int) -> Any:
    def parse(text: str) -> bytes:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not hex: {text!r}") from None
        if len(raw) != n:
            raise argparse.ArgumentTypeError(f"expected {2 * n} hex characters, got {len(text)}")
        return raw

    return parse


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="busbell",
        description="busbell: stop bells and tagless (be-in/be-out) fares for city buses.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"busbell {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in LAZY_GROUPS.items():
        sub.add_parser(name, help=help_, add_help=False)

    raw = argparse.RawDescriptionHelpFormatter
    tok = sub.add_parser("token", help="encode or decode rider token v1 payloads")
    tsub = tok.add_subparsers(dest="token_cmd", metavar="ACTION", required=True)
    enc = tsub.add_parser(
        "encode",
        help="print a token's 24-byte advertisement payload in hex",
        formatter_class=raw,
        epilog="example:\n  busbell token encode --key 000102030405060708090a0b0c0d0e0f "
        "--fleet-key <64 hex> --t 1700000000 --flags 1",
    )
    enc.add_argument("--key", required=True, type=_hex_bytes(16), help="rider token_key, 32 hex")
    g = enc.add_mutually_exclusive_group(required=True)
    g.add_argument("--fleet-key", type=_hex_bytes(32), help="fleet key of the UTC day, 64 hex")
    g.add_argument("--bk", type=_hex_bytes(16), help="the token's bk for this rid, 32 hex")
    enc.add_argument("--t", required=True, type=float, help="the token's UNIX time")
    enc.add_argument(
        "--flags", type=int, default=0, help="flag bits: 1 ALIGHT, 2 ASSIST, 4 WAIT (default 0)"
    )
    dec = tsub.add_parser(
        "decode",
        help="split a payload into its fields; verify btag/rtag when keys are given",
        formatter_class=raw,
        epilog="example:\n  busbell token decode 21fc40... --fleet-key <64 hex> --t 1700000000",
    )
    dec.add_argument("payload", help="the 24-byte payload in hex")
    dec.add_argument("--fleet-key", type=_hex_bytes(32), help="fleet key of the token's day")
    dec.add_argument("--fleet-keys", type=Path, help="FLEET.csv with day,fleet_key rows")
    dec.add_argument("--t", type=float, help="bus (GNSS) time to check tq against; default now")
    dec.add_argument("--window", type=float, default=DEFAULT_TQ_WINDOW_S, help="tq window, s")
    dec.add_argument("--key", type=_hex_bytes(16), help="rider token_key: also check rid and rtag")
    dec.add_argument("--json", action="store_true", help="print JSON instead of text")

    keys = sub.add_parser("keys", help="generate device, rider and fleet keys")
    ksub = keys.add_subparsers(dest="keys_cmd", metavar="KIND", required=True)
    dev = ksub.add_parser(
        "device",
        help="generate a bus's Ed25519 device key (PEM PKCS#8)",
        formatter_class=raw,
        epilog="example:\n  busbell keys device --out bus-0001.pem --bus-id bus-0001 "
        "--devices DEVICES.csv",
    )
    dev.add_argument("--out", required=True, type=Path, help="PEM file to create (mode 0600)")
    dev.add_argument("--bus-id", help="bus id to register in --devices")
    dev.add_argument("--devices", type=Path, help="DEVICES.csv to append bus_id,public_key to")
    rid = ksub.add_parser(
        "rider",
        help="generate a rider token_key and append it to RIDERS.csv",
        formatter_class=raw,
        epilog="example:\n  busbell keys rider --riders RIDERS.csv --rider-id r-000001",
    )
    rid.add_argument("--riders", required=True, type=Path, help="RIDERS.csv to append to")
    rid.add_argument("--rider-id", help="rider id (default: random r-<hex>)")
    fl = ksub.add_parser(
        "fleet",
        help="generate fleet day keys and append them to FLEET.csv",
        formatter_class=raw,
        epilog="example:\n  busbell keys fleet --fleet FLEET.csv --days 7",
    )
    fl.add_argument("--fleet", required=True, type=Path, help="FLEET.csv to append to")
    fl.add_argument("--days", type=int, default=7, help="how many days (default 7)")
    fl.add_argument("--from-day", type=int, help="first UTC day number (default today)")

    cfg = sub.add_parser(
        "config",
        help="list every configuration option of a component",
        formatter_class=raw,
        epilog="example:\n  busbell config edge",
    )
    cfg.add_argument("component", choices=["edge", "backend", "sim"])

    sch = sub.add_parser(
        "schema",
        help="print the JSON schemas generated from the typed fare records",
        formatter_class=raw,
        epilog="examples:\n  busbell schema fare-events\n"
        "  busbell schema fare-events --write docs/asyncapi.yaml\n"
        "  busbell schema fare-events --check docs/asyncapi.yaml",
    )
    sch.add_argument("what", choices=["fare-events"])
    mode = sch.add_mutually_exclusive_group()
    mode.add_argument(
        "--write", type=Path, metavar="ASYNCAPI", help="replace the generated block in this file"
    )
    mode.add_argument(
        "--check",
        type=Path,
        metavar="ASYNCAPI",
        help="exit 1 when this file's generated block differs from the types",
    )
    return p


def _cmd_token_encode(a: argparse.Namespace) -> int:
    if a.flags & ~0b111 or a.flags < 0:
        raise SystemExit("busbell: error: --flags must be 0-7")
    keys = derive_rider_keys(a.key)
    _out(encode_payload(keys, a.t, fleet_key=a.fleet_key, bk=a.bk, flags=a.flags).hex())
    return 0


def _cmd_token_decode(a: argparse.Namespace) -> int:
    import time

    try:
        raw = bytes.fromhex(a.payload)
    except ValueError:
        raise SystemExit(f"busbell: error: payload is not hex: {a.payload!r}") from None
    try:
        p = parse_payload(raw)
    except TokenRejected as exc:
        raise SystemExit(f"busbell: error: {exc}") from None
    now = a.t if a.t is not None else time.time()
    token_t = unwrap_tq(p.tq, now)
    info: dict[str, Any] = {
        "version": raw[0] >> 5,
        "flags": int(p.flags),
        "flag_names": [f.name for f in TokenFlags if f and f in p.flags],
        "tq": p.tq,
        "token_t": token_t,
        "interval": interval_of(token_t),
        "day": day_of(token_t),
        "rid": p.rid.hex(),
        "btag": p.btag.hex(),
        "rtag": p.rtag.hex(),
        "echo": p.echo,
    }
    fleet: dict[int, bytes] = {}
    if a.fleet_keys is not None:
        fleet.update(read_fleet_keys(a.fleet_keys))
    if a.fleet_key is not None:
        d = day_of(token_t)
        fleet.update({d - 1: a.fleet_key, d: a.fleet_key, d + 1: a.fleet_key})
    if fleet:
        try:
            TokenVerifier(fleet, window_s=a.window).verify(raw, now)
            info["btag_ok"] = True
            info["accepted"] = True
        except TokenRejected as exc:
            info["accepted"] = False
            info["reject_reason"] = exc.reason
            info["btag_ok"] = None if exc.reason in ("stale", "no_fleet_key") else False
    if a.key is not None:
        rk = derive_rider_keys(a.key)
        info["rid_ok"] = rid_for_interval(rk.rid_key, interval_of(token_t)) == p.rid
        info["rtag_ok"] = verify_rtag(p, rk.mac_key)
    if a.json:
        _out(json.dumps(info))
    else:
        for k, v in info.items():
            _out(f"{k:12} {v}")
    ok = all(info.get(k, True) is not False for k in ("accepted", "rid_ok", "rtag_ok"))
    return 0 if ok else 1


def _cmd_keys(a: argparse.Namespace) -> int:
    import time

    if a.keys_cmd == "device":
        if (a.bus_id is None) != (a.devices is None):
            raise SystemExit("busbell: error: --bus-id and --devices go together")
        key = DeviceKey.generate()
        # the README's first provisioning step writes to /etc/busbell/, absent on a new unit
        try:
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SystemExit(
                f"busbell: error: cannot create {Path(a.out).parent}: {exc.strerror}"
            ) from None
        key.save(a.out)
        if a.devices is not None:
            append_row(a.devices, DEVICES_HEADER, (a.bus_id, key.public.hex))
        _out(key.public.hex)
    elif a.keys_cmd == "rider":
        rider_id = a.rider_id or f"r-{secrets.token_hex(6)}"
        append_row(a.riders, RIDERS_HEADER, (rider_id, secrets.token_hex(16)))
        _out(rider_id)
    else:
        if a.days < 1:
            raise SystemExit("busbell: error: --days must be >= 1")
        existing = read_fleet_keys(a.fleet) if a.fleet.exists() and a.fleet.stat().st_size else {}
        first = a.from_day if a.from_day is not None else day_of(time.time())
        for d in range(first, first + a.days):
            if d in existing:
                continue
            append_row(a.fleet, FLEET_HEADER, (str(d), secrets.token_hex(32)))
            _out(str(d))
    return 0


def _cmd_config(a: argparse.Namespace) -> int:
    from busbell._config import describe_config

    module = {"edge": "edge.config", "backend": "backend.config", "sim": "firmware_sim.config"}
    mod = importlib.import_module(module[a.component])
    for opt in describe_config(mod.CONFIG_CLASS):
        _out(f"{opt.key} ({opt.type}, default {opt.default}, env {opt.env})\n    {opt.doc}")
    return 0


def _cmd_schema(a: argparse.Namespace) -> int:
    from busbell._fare_types import asyncapi_block, replace_asyncapi_block

    if a.write is None and a.check is None:
        sys.stdout.write(asyncapi_block())
        return 0
    path: Path = a.write or a.check
    text = path.read_text(encoding="utf-8")
    new = replace_asyncapi_block(text)
    if a.check is not None:
        if new != text:
            _fail(f"{path}: the fare-event schemas differ from busbell._fare_types (--write it)")
        _out(f"{path}: fare-event schemas match busbell._fare_types")
        return 0
    if new != text:
        path.write_text(new, encoding="utf-8")
    _out(f"{path}: fare-event schemas {'rewritten' if new != text else 'already current'}")
    return 0


def _fail(message: str, code: int = 1) -> NoReturn:
    sys.stderr.write(f"busbell: error: {message}\n")
    raise SystemExit(code)


# third-party module -> the extra that installs it (for a clear message when it is missing)
_EXTRA_OF_MODULE = {
    "bleak": "edge",
    "dbus_fast": "edge",
    "aiosqlite": "edge",
    "msgspec": "edge",
    "prometheus_client": "edge",
    "sqlalchemy": "backend",
    "alembic": "backend",
    "fastapi": "backend",
    "pydantic": "backend",
    "google": "backend",
    "asyncpg": "postgres",
    "starlette": "demo",
    "uvicorn": "demo",
}


def _missing_module(exc: ModuleNotFoundError, command: str) -> NoReturn:
    top = (exc.name or "").split(".")[0]
    extra = _EXTRA_OF_MODULE.get(top)
    if extra is None:
        _fail(f"the {command!r} commands are not available: {exc}")
    _fail(
        f"`busbell {command}` needs the Python package {top!r}, which this installation "
        f"lacks: install the {extra!r} extra, e.g. pip install 'busbell[{extra}]' "
        "(or `pip install -e '.[demo]'` in a checkout)"
    )


def _os_error(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``busbell`` CLI; returns the exit status.

    Every failure is reported the same way: one ``busbell: error: ...`` line on standard
    error and exit status 1 (2 for a usage error, as argparse does).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in LAZY_GROUPS:
        module_name, _ = LAZY_GROUPS[args[0]]
        try:
            module = importlib.import_module(module_name)
            return int(module.main(args[1:], prog=f"busbell {args[0]}"))
        except ModuleNotFoundError as exc:
            _missing_module(exc, args[0])
        except BusbellError as exc:
            _fail(str(exc))
        except OSError as exc:
            _fail(_os_error(exc))
        except KeyboardInterrupt:
            return 130
    parser = _build_parser()
    a = parser.parse_args(args)
    if a.command is None:
        parser.print_help()
        return 2
    try:
        if a.command == "token":
            encode = a.token_cmd == "encode"  # noqa: S105 - a sub-command name
            return _cmd_token_encode(a) if encode else _cmd_token_decode(a)
        if a.command == "keys":
            return _cmd_keys(a)
        if a.command == "config":
            return _cmd_config(a)
        if a.command == "schema":
            return _cmd_schema(a)
    except ModuleNotFoundError as exc:
        _missing_module(exc, a.command)
    except BusbellError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(_os_error(exc))
    parser.error(f"unknown command {a.command!r}")


def run() -> None:
    """Console-script entry point."""
    try:
        code = main()
    except BrokenPipeError:  # e.g. `busbell config edge | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 0
    raise SystemExit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
