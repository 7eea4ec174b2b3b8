"""The numpy rid tables resolve exactly as the resolver they replaced (property-based).

``tests/factories/reference_resolve.py`` is the resolver before the rewrite (dict-free
arrays sorted in Python, one ``cryptography`` AES context per rider). Over keyrings with
riders sharing a token key, revocations and riders enrolled after the tables were built,
both answer every lookup (genuine rids in their interval and the neighbouring ones,
unknown rids, malformed ones) and every proof check identically, one at a time and in
bulk (:meth:`backend._resolve.Resolver.resolve_many`).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import numpy as np
from hypothesis import event, given, settings
from hypothesis import strategies as st

from backend._resolve import (
    ProofRejected,
    Resolver,
    RiderKeyring,
    check_proof_with,
    mac_pads,
    proof_holds,
)
from busbell import derive_rider_keys, encode_payload, interval_of, rid_for_interval
from tests.factories import reference_resolve as ref

FLEET = hashlib.sha256(b"fleet").digest()
T = 1_762_500_123.0
IV = interval_of(T)


def _key(k: int) -> bytes:
    return hashlib.sha256(f"k{k}".encode()).digest()[:16]


@st.composite
def worlds(draw: st.DrawFn) -> dict[str, object]:
    n = draw(st.integers(1, 30))
    # a few riders share a token key (same rids): the lowest unrevoked index wins
    keys = [_key(draw(st.integers(0, n + 3))) for _ in range(n)]
    late = [_key(draw(st.integers(0, n + 6))) for _ in range(draw(st.integers(0, 4)))]
    revoke = draw(st.lists(st.integers(0, n + len(late) - 1), max_size=4))
    revoke_when = draw(st.sampled_from(["before", "after"]))
    queries = draw(
        st.lists(
            st.tuples(
                st.integers(0, n + len(late) + 2),  # a rider (beyond: an unknown key)
                st.integers(-2, 2),  # the interval its rid is from, around IV
                st.integers(-1, 1),  # the interval asked for, relative to that
            ),
            min_size=1,
            max_size=40,
        )
    )
    return {
        "keys": keys,
        "late": late,
        "revoke": revoke,
        "revoke_when": revoke_when,
        "queries": queries,
    }


def _both(w: dict[str, object]) -> tuple[Resolver, ref.Resolver, list[bytes]]:
    keys: list[bytes] = w["keys"]  # type: ignore[assignment]
    late: list[bytes] = w["late"]  # type: ignore[assignment]
    riders = [(f"r{k:03d}", tk) for k, tk in enumerate(keys)]
    # tables with and without the rids' tails (the online worker's) alike
    tails = bool(len(keys) % 2)
    new = Resolver(RiderKeyring.from_token_keys(riders), cache_intervals=4, table_tails=tails)
    old = ref.Resolver(ref.RiderKeyring.from_token_keys(riders), cache_intervals=4)
    ids = [r for r, _ in riders] + [f"late{k}" for k in range(len(late))]
    revoke: list[int] = w["revoke"]  # type: ignore[assignment]
    if w["revoke_when"] == "before":
        for k in revoke:
            if k < len(riders):
                new.revoke(ids[k])
                old.revoke(ids[k])
    new.prepare(T)
    old.prepare(T)
    for k, tk in enumerate(late):
        new.enrolled(f"late{k}", tk)
        old.enrolled(f"late{k}", tk)
    for k in revoke:
        new.revoke(ids[k])
        old.revoke(ids[k])
    return new, old, keys + late


@settings(max_examples=60, deadline=None)
@given(w=worlds())
def test_lookups_match_the_reference(w: dict[str, object]) -> None:
    new, old, all_keys = _both(w)
    rids: list[bytes | str] = []
    asked: list[int] = []
    for rider, rid_off, ask_off in w["queries"]:  # type: ignore[attr-defined]
        tk = all_keys[rider] if rider < len(all_keys) else _key(10_000 + rider)
        rid = rid_for_interval(derive_rider_keys(tk).rid_key, IV + rid_off)
        interval = IV + rid_off + ask_off
        form: bytes | str = rid.hex() if rider % 2 else rid
        assert new.resolve_index(form, interval) == old.resolve_index(form, interval)
        assert new.resolve(form, interval) == old.resolve(form, interval)
        rids.append(form)
        asked.append(interval)
    rids += ["zz" * 12, b"\x00" * 5, "00" * 12]
    asked += [IV, IV, IV]
    assert new.resolve_many(rids, asked) == [
        old.resolve_index(r, i) for r, i in zip(rids, asked, strict=True)
    ]
    # settle's packed lookup (rids end to end, arrays out) answers as resolve_near
    raw = [r if isinstance(r, bytes) else bytes.fromhex(r) for r in rids[:-3]]
    near = new.resolve_near(raw, asked[:-3])
    idx, found_iv = new.resolve_near_packed(b"".join(raw), np.array(asked[:-3], dtype=np.int64))
    packed = [
        None if i < 0 else (i, v) for i, v in zip(idx.tolist(), found_iv.tolist(), strict=True)
    ]
    assert packed == near


def _verdict(res: Resolver | ref.Resolver, *args: object, **kw: object) -> object:
    try:
        out = res.check_proof(*args, **kw)  # type: ignore[arg-type]
        return (out.first_t, out.last_t)
    except (ProofRejected, ref.ProofRejected) as exc:
        return ("rejected", exc.reason, str(exc))


@settings(max_examples=80, deadline=None)
@given(
    case=st.fixed_dictionaries(
        {
            "rider": st.integers(0, 3),
            "signer": st.integers(0, 3),
            "d_first": st.floats(-700, 700),
            "d_last": st.floats(-700, 900),
            "d_start": st.floats(-300, 300),
            "span": st.floats(-50, 700),
            "interval_off": st.integers(-1, 1),
            "mangle": st.sampled_from(["", "hex", "short", "version", "flags", "rid"]),
            "by_id": st.booleans(),
            "with_times": st.booleans(),
        }
    )
)
def test_proof_checks_match_the_reference(case: dict[str, Any]) -> None:
    rider, signer, mangle = case["rider"], case["signer"], case["mangle"]
    d_first, d_last, d_start, span = case["d_first"], case["d_last"], case["d_start"], case["span"]
    keys = [_key(k) for k in range(4)]
    riders = [(f"r{k}", tk) for k, tk in enumerate(keys)]
    new = Resolver(RiderKeyring.from_token_keys(riders))
    old = ref.Resolver(ref.RiderKeyring.from_token_keys(riders))
    sk = derive_rider_keys(keys[signer])
    first = encode_payload(sk, T + d_first, fleet_key=FLEET).hex()
    last = encode_payload(sk, T + d_last, fleet_key=FLEET).hex()
    if mangle == "hex":
        first = "zz" + first[2:]
    elif mangle == "short":
        last = last[:-2]
    elif mangle == "version":
        first = "00" + first[2:]
    elif mangle == "flags":
        last = "38" + last[2:]
    rid = rid_for_interval(sk.rid_key, interval_of(T + d_first)).hex()
    if mangle == "rid":
        rid = "00" * 12
    who: str | int = f"r{rider}" if case["by_id"] else rider
    kw: dict[str, object] = {"rid": rid}
    if case["with_times"]:
        kw |= {"start_t": T + d_start, "end_t": T + d_start + span}
    args = (who, first, last, IV + case["interval_off"])
    assert _verdict(new, *args, **kw) == _verdict(old, *args, **kw)
    assert _verdict(new, "nobody", first, last, IV) == _verdict(old, "nobody", first, last, IV)


@settings(max_examples=1500, deadline=None)
@given(
    case=st.fixed_dictionaries(
        {
            "signer": st.sampled_from([0, 0, 0, 1]),
            "d_first": st.floats(-310, 300),
            "ride": st.floats(-20, 300),
            "early": st.floats(-200, 20),
            "late": st.floats(-130, 200),
            "interval_off": st.sampled_from([0, 0, 0, -1, 1]),
            "slack": st.sampled_from([0.0, 4.0, 120.0]),
            "mangle": st.sampled_from(
                ["", "", "", "", "", "short", "long", "version", "flags", "rid", "rtag", "tq"]
                + ["other_rid"]
            ),
            "which": st.sampled_from(["first", "last"]),
            "remac": st.sampled_from([False, True, True]),
        }
    )
)
def test_proof_holds_is_check_proof_with(case: dict[str, Any]) -> None:
    """Settle's bulk proof test accepts exactly the proofs :func:`check_proof_with` accepts."""
    keys = derive_rider_keys(_key(0))
    signer = derive_rider_keys(_key(case["signer"]))
    mid = (IV + 0.5) * 600  # token times around the middle of the interval
    t_first = mid + case["d_first"]
    t_last = t_first + case["ride"]
    first = bytearray(encode_payload(signer, t_first, fleet_key=FLEET))
    last = bytearray(encode_payload(signer, t_last, fleet_key=FLEET))
    rid = rid_for_interval(signer.rid_key, interval_of(t_first))
    payload = first if case["which"] == "first" else last
    mangle = case["mangle"]
    if mangle == "short":
        del payload[-1]
    elif mangle == "long":
        payload.append(0)
    elif mangle == "version":
        payload[0] ^= 0x40
    elif mangle == "flags":
        payload[0] |= 0x10
    elif mangle == "rid":
        payload[5] ^= 1
    elif mangle == "rtag":
        payload[20] ^= 1
    elif mangle == "tq":
        payload[2] ^= 1
    elif mangle == "other_rid":
        rid = bytes(12)
    if case["remac"] and len(payload) == len(first):
        # a payload whose tag holds for what was changed: only the other checks see it
        tag = hmac.digest(signer.mac_key, bytes(payload[:19]), "sha256")[:4]
        payload[19:23] = tag
    start = t_first + case["early"]
    args = (bytes(first), bytes(last), IV + case["interval_off"])
    times = {"start_t": start, "end_t": t_last + case["late"]}
    try:
        check_proof_with(keys.mac_key, *args, rid=rid, **times, slack_s=case["slack"])
    except ProofRejected:
        accepted = False
    else:
        accepted = True
    held = proof_holds(
        mac_pads(keys.mac_key), *args, rid, times["start_t"], times["end_t"], case["slack"]
    )
    assert held == accepted
    event("accepted" if accepted else "rejected")
