"""Property fuzzing (hypothesis) of every parser that takes input from outside a process.

For each target the property is the same: arbitrary input (raw bytes, JSON-shaped
values with hostile leaves, mutated valid messages, deep nesting) is either accepted or
refused with the documented error, counted where the handler counts; nothing else is
ever raised and nothing hangs. ``BUSBELL_FUZZ_EXAMPLES`` sets the examples per target
(the full campaign of docs/reliability.md sets it to 20000).
"""

from __future__ import annotations

import asyncio
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend._gtfs_rt import FleetView
from backend._ingest import IngestCore
from backend._keys import DeviceInfo
from backend._status_relay import StatusRelay
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
    load_gtfs,
    loads_bounded,
    open_key_bundle,
    parse_payload,
    parse_record,
    sign_denylist,
    validate_event,
)
from busbell._bells import (
    validate_display,
    validate_driver_ack,
    validate_request_status,
    validate_wait,
)
from edge._keyring import Denylist, FleetKeyring
from edge._stream_source import StreamSource
from tests.fuzz.conftest import EXAMPLES

FUZZ = settings(settings.get_profile("busbell-fuzz"), max_examples=EXAMPLES)
T = Topics("fz/v1")
KEY = DeviceKey.from_seed(bytes(range(32)))
BACKEND = DeviceKey.from_seed(b"\x42" * 32)
NOW = 1_790_000_000.0

# --- inputs ---------------------------------------------------------------------------

hostile_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # includes values far outside BIGINT
    st.floats(),  # includes NaN and infinities
    st.text(max_size=30),
    st.sampled_from(["", "\x00", "\ud800", "../..", "a/b", "+", "#", "x" * 300, "NaN"]),
)
json_values = st.recursive(
    hostile_leaf,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=25,
)


def _dump(v: Any) -> bytes:
    return json.dumps(v, allow_nan=True).encode("utf-8", "surrogatepass")


def deep(n: int, obj: bool) -> bytes:
    return (b'{"a":' * n + b"1" + b"}" * n) if obj else (b"[" * n + b"]" * n)


raw_payloads = st.one_of(
    st.binary(max_size=300),
    json_values.map(_dump),
    st.builds(deep, st.integers(0, 3000), st.booleans()),
    st.sampled_from(
        [b"", b"NaN", b"1e999", str(2**70).encode(), b'"\xff"', b"[" * 100_000, b"{" * 50_000]
    ),
)


def mutated(valid: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """A valid message with one field replaced, removed or added, or truncated."""
    keys = sorted(valid)

    def replace(k: str, v: Any) -> bytes:
        return _dump({**valid, k: v})

    def drop(k: str) -> bytes:
        return _dump({x: y for x, y in valid.items() if x != k})

    text = _dump(valid)
    return st.one_of(
        st.builds(replace, st.sampled_from(keys), json_values),
        st.builds(drop, st.sampled_from(keys)),
        st.builds(lambda k, v: _dump({**valid, k: v}), st.text(max_size=8), json_values),
        st.integers(0, len(text)).map(lambda i: text[:i]),
        st.just(text),
    )


def payloads(valid: dict[str, Any]) -> st.SearchStrategy[bytes]:
    return st.one_of(raw_payloads, mutated(valid))


# --- token parser -----------------------------------------------------------------------

RIDER = derive_rider_keys(bytes(range(16)))
FLEET = {int(NOW // 86400): b"\x11" * 32}
GOOD_TOKEN = encode_payload(RIDER, NOW, fleet_key=FLEET[int(NOW // 86400)])


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=40),
        st.binary(min_size=24, max_size=24),
        st.builds(
            lambda i, b: GOOD_TOKEN[:i] + bytes([b]) + GOOD_TOKEN[i + 1 :],
            st.integers(0, 23),
            st.integers(0, 255),
        ),
    ),
    st.floats(allow_nan=True, allow_infinity=True),
)
def test_token_parser_and_verifier_only_reject(payload: bytes, t: float) -> None:
    verifier = TokenVerifier(FLEET.get)
    for call in (lambda: parse_payload(payload), lambda: verifier.verify(payload, t)):
        try:
            call()
        except TokenRejected as exc:
            assert exc.reason in TokenRejected.REASONS
    if payload != GOOD_TOKEN and len(payload) == 24 and math.isfinite(t):
        # a changed byte in the authenticated part never verifies
        changed = [i for i in range(24) if payload[i] != GOOD_TOKEN[i]]
        if changed and changed[0] < 19 and changed[0] > 0:
            with pytest.raises(TokenRejected):
                verifier.verify(payload, NOW)


# --- trace reader and record parser -------------------------------------------------------------

META = '{"kind":"meta","format":"busbell-trace/1","bus_id":"b"}\n'
GOOD_LINE = {"kind": "adv", "t": 1.0, "addr": "A", "rssi": -60, "mfr": {"65535": "00" * 24}}


@FUZZ
@given(st.lists(payloads(GOOD_LINE), max_size=6))
def test_trace_reader_only_raises_trace_error(lines: list[bytes]) -> None:
    # one line each (a \r would end a line for the text reader, too)
    one = [x.replace(b"\n", b" ").replace(b"\r", b" ") for x in lines]
    data = META.encode() + b"\n".join(one) + b"\n"
    errors: list[TraceError] = []
    fp = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="surrogateescape")
    recs = list(TraceReader(fp, on_error=errors.append))
    assert len(recs) + len(errors) <= len(lines) + 1
    assert all(isinstance(e, TraceError) and e.reason for e in errors)


@FUZZ
@given(json_values)
def test_parse_record_only_raises_trace_error(obj: Any) -> None:
    try:
        parse_record(obj, 1)
    except TraceError:
        pass


@FUZZ
@given(payloads(GOOD_LINE))
def test_stream_source_line_never_raises_and_counts(raw: bytes) -> None:
    src = StreamSource()
    got: list[Any] = []
    src._line(raw, 1, "fuzz", got.append)
    assert len(got) + sum(src.stats.errors.values()) + (1 if b"meta" in raw else 0) >= 1 or (
        not raw.strip()
    )


# --- edge MQTT handlers -----------------------------------------------------------------------

DENY_BODY = {"v": 1, "version": 5, "rids": ["00" * 12], "devices": []}


@FUZZ
@given(
    st.one_of(
        payloads(DENY_BODY),
        mutated(sign_denylist(DENY_BODY, BACKEND)),
        st.builds(
            lambda b: canonical_bytes(sign_denylist(b, DeviceKey.generate())), st.just(DENY_BODY)
        ),
    )
)
def test_denylist_handler_only_takes_signed_lists(payload: bytes) -> None:
    dl = Denylist("bus-1", BACKEND.public)
    try:
        changed = dl.apply(payload)
    except ContractError as exc:
        assert exc.reason
        assert dl.version == 0
        assert dl.rejected == 1
        return
    if changed:  # only a list the backend signed is ever taken
        obj = json.loads(payload)
        body = {k: v for k, v in obj.items() if k != "sig"}
        BACKEND.public.verify_b64(obj["sig"], canonical_bytes(body))


@pytest.fixture(scope="module")
def keyring_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keyring")


@FUZZ
@given(payloads({"v": 1, "bus_id": "bus-1", "alg": "x", "epk": "00", "ct": "", "days": [1]}))
def test_key_bundle_handler_only_raises_contract_error(payload: bytes) -> None:
    ring = FleetKeyring(Path("/nonexistent/never-written.csv"), "bus-1", bus_kex_private(KEY))
    try:
        ring.apply_bundle(payload, NOW)
    except ContractError:
        assert ring.bundles_rejected == 1
    assert ring.keys == {}


@FUZZ
@given(json_values)
def test_open_key_bundle_only_raises_contract_error(obj: Any) -> None:
    try:
        open_key_bundle(obj, bus_kex_private(KEY))
    except ContractError:
        pass


@pytest.fixture(scope="module")
def uploader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    from edge._events import EventBuilder
    from edge._store import FareStore
    from edge._uplink import FareUploader, UplinkSettings
    from tests.factories.drafts import synthetic_draft

    loop = asyncio.new_event_loop()
    path = tmp_path_factory.mktemp("store") / "f.db"
    store = loop.run_until_complete(FareStore.open(str(path), EventBuilder("bus-1", KEY)))
    loop.run_until_complete(store.append_many(synthetic_draft(i) for i in range(5)))
    up = FareUploader(store, "bus-1", T, UplinkSettings())
    yield up, loop
    loop.run_until_complete(store.close())
    loop.close()


@FUZZ
@given(payloads({"upto_seq": 3}), payloads({"from_seq": 1, "to_seq": 2}))
def test_fares_ack_and_resend_handlers_never_raise(
    uploader: tuple[Any, Any], ack: bytes, resend: bytes
) -> None:
    up, loop = uploader
    last = up.store.last_seq
    loop.run_until_complete(up.handle_ack(ack))
    loop.run_until_complete(up.handle_resend(resend))
    assert up.store.acked_upto <= last  # never acked beyond what the bus recorded
    up._resends.clear()


# --- contract validators (every Bells v1 and fare payload) ------------------------------------


@FUZZ
@given(json_values)
def test_contract_validators_only_raise_contract_error(obj: Any) -> None:
    for validate in (
        validate_wait,
        validate_display,
        validate_request_status,
        validate_driver_ack,
        validate_event,
    ):
        try:
            validate(obj)
        except ContractError:
            pass


# --- backend MQTT handlers ---------------------------------------------------------------------

CORE = IngestCore({"bus-1": DeviceInfo(KEY.public)})


@FUZZ
@given(payloads({"bus_id": "bus-1", "events": [{"v": 1, "type": "segment", "seq": 1}]}))
def test_ingest_decode_only_raises_its_malformed_error(payload: bytes) -> None:
    try:
        verified, rejected = CORE.decode("bus-1", payload)
    except BusbellError as exc:
        assert getattr(exc, "reason", "")
        return
    assert not verified  # nothing unsigned is ever verified
    for r in rejected:
        assert r.reason


@FUZZ
@given(
    st.sampled_from(
        [
            T.vehicle("b1", "gnss"),
            T.vehicle("b1", "trip"),
            T.occupancy("b1"),
            T.status("b1"),
            T.bus_request_status("b1", "r1"),
        ]
    ),
    payloads({"t": 1.0, "lat": 37.5, "lon": 127.0, "state": "online", "on_board": 3}),
)
def test_fleet_view_and_status_relay_never_raise(topic: str, payload: bytes) -> None:
    view = FleetView(T)
    view.on_message(topic, payload, now=NOW)
    relay = StatusRelay(T)
    out = relay.on_message(topic, payload)
    if out is not None:
        obj = json.loads(out[1])
        assert obj["bus_id"] == "b1"
        assert obj["request_id"] == "r1"


@FUZZ
@given(raw_payloads)
def test_bounded_loader_never_raises_anything_else(payload: bytes) -> None:
    try:
        loads_bounded(payload)
    except JsonRejected:
        pass


WAITS_FEED = load_gtfs(Path(__file__).resolve().parents[2] / "firmware_sim" / "data" / "gtfs")


WAIT_LIKE = {"request_id": "w-1", "state": "seen", "bus_id": "b1", "t": 1.0, "route_id": "R1",
             "stop_id": "S1", "expires_t": 2.0, "source": "app", "assist": False,
             "stops": [{"stop_id": "S1"}]}  # fmt: skip


@FUZZ
@given(st.integers(0, 3), payloads(WAIT_LIKE))
def test_backend_wait_book_and_fleet_positions_only_count(which: int, payload: bytes) -> None:
    from backend._waits import FleetPositions, WaitBook

    book = WaitBook(T)
    pos = FleetPositions(WAITS_FEED)
    if which == 0:
        book.on_wait("R1", "S1", "w-1", payload, NOW)
    elif which == 1:
        book.on_status("w-1", payload, NOW)
    elif which == 2:
        pos.on_display("b1", payload)
    else:
        pos.on_status("b1", payload)
