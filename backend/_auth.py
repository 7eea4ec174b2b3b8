"""Who may call the rider API: bearer tokens, operator scopes, rate limits (sans-I/O).

**Riders** get an opaque bearer token (``bbr_`` + 43 URL-safe characters, 256 random
bits) in the enrolment response, once. The backend stores only its SHA-256
(``rider_tokens``), so a copy of the database gives no usable token, and a token is
revoked by marking its row (immediately: every request looks it up). A rider token
reaches only its own rider: status, journeys, charges, waits, revocation, a new token.

Why opaque tokens and not JWTs: the backend is the only party that checks them, so a
self-contained signed token buys nothing but a second key to guard, an algorithm field to
pin and a revocation list to keep; a lookup by hash is one indexed read per request.

**Operators** have separate tokens (``bbo_`` + 43 characters), configured in the
backend config as ``[api] operators = ["NAME|SCOPE,SCOPE|SHA256HEX", ...]`` (the hash of
the token, never the token; ``busbell backend api-token NAME --scopes ...`` makes one).
Scopes: ``riders:read`` (any rider's status, journeys, charges, waits),
``riders:write`` (enrol with a chosen id or fare category, change a category, revoke a
rider, issue a rider a new token, post or cancel waits for a rider), ``devices:write``
(revoke a bus).

**Rate limits** are token buckets (:class:`RateLimiter`): per authenticated principal, and
per client address for requests without valid credentials (so guessing tokens or
flooding enrolment is throttled by address while riders behind one proxy are not).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "OPERATOR_PREFIX",
    "RIDER_PREFIX",
    "SCOPES",
    "Operator",
    "OperatorRegistry",
    "Principal",
    "RateLimiter",
    "hash_token",
    "new_operator_token",
    "new_rider_token",
    "operator_entry",
    "parse_operator",
    "retry_after",
    "well_formed",
]

RIDER_PREFIX: Final = "bbr_"
OPERATOR_PREFIX: Final = "bbo_"
SCOPES: Final = ("riders:read", "riders:write", "devices:write")
_TOKEN_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def new_rider_token() -> str:
    """A fresh rider bearer token (256 random bits)."""
    return RIDER_PREFIX + secrets.token_urlsafe(32)


def new_operator_token() -> str:
    """A fresh operator bearer token (256 random bits)."""
    return OPERATOR_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The stored form of a token: SHA-256, hex (the token has 256 bits: no salt needed)."""
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def well_formed(token: str) -> bool:
    """Whether ``token`` looks like a busbell token (cheap check before any lookup)."""
    body = token[4:]
    return (
        token[:4] in (RIDER_PREFIX, OPERATOR_PREFIX)
        and 40 <= len(body) <= 64
        and set(body) <= _TOKEN_CHARS
    )


@dataclass(frozen=True, slots=True)
class Operator:
    """One configured operator credential."""

    name: str
    scopes: frozenset[str]
    token_hash: str


def parse_operator(entry: str) -> Operator:
    """Parse an ``[api] operators`` entry, ``NAME|SCOPE[,SCOPE...]|SHA256HEX``.

    ``|`` separates the fields because scope names contain ``:``.

    Raises:
        ValueError: when the entry is malformed or names an unknown scope.
    """
    fields = entry.split("|")
    if len(fields) != 3:
        raise ValueError(f"operator entry must be NAME|SCOPE,SCOPE|SHA256HEX, got {entry[:80]!r}")
    return _operator(*fields)


def _operator(name: str, scopes_text: str, digest: str) -> Operator:
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"operator name must be [A-Za-z0-9_-]+, got {name[:40]!r}")
    scopes = frozenset(s for s in scopes_text.split(",") if s)
    unknown = scopes - set(SCOPES)
    if not scopes or unknown:
        raise ValueError(f"operator {name}: scopes must be among {', '.join(SCOPES)}")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"operator {name}: the token hash must be 64 lower-case hex digits")
    return Operator(name, scopes, digest)


def operator_entry(name: str, scopes: list[str] | tuple[str, ...], token: str) -> str:
    """The ``[api] operators`` entry for an operator token."""
    entry = f"{name}|{','.join(scopes)}|{hash_token(token)}"
    parse_operator(entry)
    return entry


class OperatorRegistry:
    """The configured operators (:func:`parse_operator` entries), looked up by token hash.

    Raises:
        ValueError: from the constructor when an entry is malformed or a name repeats.
    """

    def __init__(self, entries: tuple[str, ...] | list[str] = ()) -> None:
        self._by_hash: dict[str, Operator] = {}
        names: set[str] = set()
        for entry in entries:
            op = parse_operator(entry)
            if op.name in names:
                raise ValueError(f"operator {op.name} is configured twice")
            names.add(op.name)
            self._by_hash[op.token_hash] = op

    def __len__(self) -> int:
        return len(self._by_hash)

    def find(self, token: str) -> Operator | None:
        """The operator holding ``token``, or ``None``."""
        digest = hash_token(token)
        op = self._by_hash.get(digest)
        # the dict lookup is by a hash of the secret; compare again in constant time
        if op is not None and hmac.compare_digest(op.token_hash, digest):
            return op
        return None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a rider (by id) or an operator (by name, with scopes)."""

    kind: Literal["rider", "operator"]
    id: str
    scopes: frozenset[str] = field(default_factory=frozenset)

    @property
    def key(self) -> str:
        """Its rate-limit key."""
        return f"{self.kind}:{self.id}"

    def may(self, rider_id: str, scope: str) -> bool:
        """Whether it may act on ``rider_id``'s data with ``scope``.

        A rider may act on itself only (any rider scope); an operator on any rider with
        the scope.
        """
        if self.kind == "rider":
            return self.id == rider_id and scope in ("riders:read", "riders:write")
        return scope in self.scopes


class RateLimiter:
    """Token buckets by key: ``rate_per_s`` refill, ``burst`` capacity.

    At most ``max_keys`` buckets are kept; when full, the least recently used bucket is
    forgotten (a forgotten key starts again with a full bucket: memory stays bounded and
    the limit stays right for every active client).
    """

    def __init__(self, rate_per_s: float, burst: int, *, max_keys: int = 100_000) -> None:
        if rate_per_s <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate_per_s > 0, burst >= 1 and max_keys >= 1 are required")
        self.rate = rate_per_s
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, now: float) -> float:
        """Spend one token of ``key``'s bucket at monotonic time ``now``.

        Returns:
            0.0 when allowed; otherwise the seconds until a token is available (the
            request is refused and nothing is spent).
        """
        level, last = self._buckets.pop(key, (self.burst, now))
        level = min(self.burst, level + max(0.0, now - last) * self.rate)
        if level >= 1.0:
            self._store(key, (level - 1.0, now))
            return 0.0
        self._store(key, (level, now))
        return max(0.001, (1.0 - level) / self.rate)

    def _store(self, key: str, value: tuple[float, float]) -> None:
        self._buckets[key] = value
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` header value (whole seconds, at least 1)."""
    return str(max(1, math.ceil(seconds)))
