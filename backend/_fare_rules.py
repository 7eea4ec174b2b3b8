"""Fare rules as data: the typed model of ``fare_rules.toml`` and its loader.

The rules are plain frozen dataclasses. :func:`load_rules` reads a TOML file (the packaged
Seoul/Gyeonggi defaults when no path is given) and validates every key, so an error names
the dotted key, the expected type and what it got. :mod:`backend._fare_engine` prices
journeys with them. Nothing here does I/O except :func:`load_rules` reading its one file.

The file format (``busbell-fare-rules/1``) is described in ``docs/fares.md``.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from busbell._errors import ConfigError

__all__ = [
    "DEFAULT_RULES_PATH",
    "FORMAT",
    "DailyCap",
    "DistanceRule",
    "FareRules",
    "FareRulesError",
    "FareRulesValidationError",
    "MonthlyRefund",
    "NetworkMap",
    "NetworkRule",
    "NoRulesInForceError",
    "RuleSet",
    "TransferRule",
    "UnknownCategoryError",
    "UnknownNetworkError",
    "load_rules",
    "parse_rules",
]

FORMAT = "busbell-fare-rules/1"
"""The value of the top-level ``format`` key this module reads."""

DEFAULT_RULES_PATH = Path(__file__).with_name("fare_rules.toml")
"""The packaged default rules (Seoul metropolitan integrated transfer system)."""


class FareRulesError(ConfigError, ValueError):
    """Base of the fare-rule errors: the rules, or a lookup in them, are invalid.

    Attributes:
        key: dotted key of the offending option (``""`` when not about one key).
        expected: the expected type or value, as text.
    """


class FareRulesValidationError(FareRulesError):
    """A key of a rules file is missing, unknown, or of the wrong type or value.

    Attributes:
        key: dotted key, e.g. ``ruleset[1].networks.gyeonggi_city.fare_krw.adult``.
        expected: what the key must hold, e.g. ``int >= 0``.
        got: a short repr of what it held (``"missing"`` when absent).
        source: the file (or ``"<mapping>"``) the rules came from.
    """

    def __init__(self, key: str, expected: str, got: str, *, source: str = "<mapping>") -> None:
        super().__init__(
            f"fare rules {source}: {key or '<root>'}: expected {expected}, got {got}",
            key=key,
            expected=expected,
        )
        self.got = got
        self.source = source


class UnknownNetworkError(FareRulesError):
    """A network id (fare class) is not defined by the rules.

    Attributes:
        network_id: the unknown id.
        route_id: the route that named it, when known.
        ruleset_id: the rule set searched, or ``None`` when all sets were.
        known: the network ids the rules do define.
    """

    def __init__(
        self,
        network_id: str,
        *,
        known: tuple[str, ...],
        route_id: str | None = None,
        ruleset_id: str | None = None,
    ) -> None:
        where = f"route {route_id!r} has " if route_id is not None else ""
        scope = f"rule set {ruleset_id!r}" if ruleset_id is not None else "the fare rules"
        super().__init__(
            f"{where}network_id {network_id!r}, which {scope} do not define "
            f"(known: {', '.join(known)})",
            key="network_id",
            expected="one of " + ", ".join(known),
        )
        self.network_id = network_id
        self.route_id = route_id
        self.ruleset_id = ruleset_id
        self.known = known


class UnknownCategoryError(FareRulesError):
    """A rider category (``adult``, ``youth``, ...) is not defined by a rule set.

    Attributes:
        category: the unknown category.
        known: the categories of the rule set.
    """

    def __init__(self, category: str, *, known: tuple[str, ...], ruleset_id: str) -> None:
        super().__init__(
            f"category {category!r} is not defined by rule set {ruleset_id!r} "
            f"(known: {', '.join(known)})",
            key="category",
            expected="one of " + ", ".join(known),
        )
        self.category = category
        self.known = known


class NoRulesInForceError(FareRulesError):
    """No rule set is in force at the given time (it is before the earliest set).

    Attributes:
        when: the local date-time asked about.
        earliest: the earliest ``effective_from`` of the rules.
    """

    def __init__(self, when: dt.datetime, earliest: dt.datetime) -> None:
        super().__init__(
            f"no fare rule set is in force at {when.isoformat()} "
            f"(the earliest takes effect {earliest.isoformat()})",
            key="ruleset.effective_from",
            expected=f"a time at or after {earliest.isoformat()}",
        )
        self.when = when
        self.earliest = earliest


# --------------------------------------------------------------------------- model


def _empty_amounts() -> Mapping[str, int]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class NetworkRule:
    """One fare class (a GTFS Fares v2 ``network_id``) in one rule set.

    Attributes:
        network_id: the id, e.g. ``gyeonggi_wide_area``.
        name: a human-readable name.
        base_distance_m: distance included in the base fare when a bus of this class is
            in the journey (the journey uses the largest of its legs').
        fare_krw: base fare per rider category.
    """

    network_id: str
    name: str
    base_distance_m: int
    fare_krw: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class TransferRule:
    """When the next boarding continues the journey.

    Attributes:
        window_s: most seconds from an alighting to the next boarding.
        night_window_s: the same, when the alighting is in the night period.
        night_start: local time the night period starts (inclusive).
        night_end: local time the night period ends (exclusive); may be before
            ``night_start``, meaning the period spans midnight.
        max_transfers: most transfers in one journey (rides = transfers + 1).
    """

    window_s: float
    night_window_s: float
    night_start: dt.time
    night_end: dt.time
    max_transfers: int

    def is_night(self, local_time: dt.time) -> bool:
        """Tell whether a local time of day is in the night period."""
        if self.night_start <= self.night_end:
            return self.night_start <= local_time < self.night_end
        return local_time >= self.night_start or local_time < self.night_end

    def window_after(self, local_alight: dt.time) -> float:
        """Return the transfer window, in seconds, after an alighting at a local time."""
        return self.night_window_s if self.is_night(local_alight) else self.window_s


@dataclass(frozen=True, slots=True)
class DistanceRule:
    """The distance surcharge.

    Attributes:
        unit_m: length of one surcharge unit; every started unit beyond the base
            distance costs ``surcharge_krw``.
        surcharge_krw: KRW per started unit, per category.
        cap_krw: most surcharge for one journey, per category.
    """

    unit_m: int
    surcharge_krw: Mapping[str, int]
    cap_krw: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class RuleSet:
    """All fare rules in force from one date on.

    Attributes:
        ruleset_id: a unique name, shown in explanations.
        effective_from: local (naive) date-time from which the set is in force.
        categories: the rider categories every table covers.
        transfer: transfer rules.
        distance: distance surcharge rules.
        networks: the fare classes, by network id.
    """

    ruleset_id: str
    effective_from: dt.datetime
    categories: tuple[str, ...]
    transfer: TransferRule
    distance: DistanceRule
    networks: Mapping[str, NetworkRule]

    def network(self, network_id: str) -> NetworkRule:
        """Return the fare class ``network_id``.

        Raises:
            UnknownNetworkError: this set does not define it.
        """
        try:
            return self.networks[network_id]
        except KeyError:
            raise UnknownNetworkError(
                network_id, known=tuple(self.networks), ruleset_id=self.ruleset_id
            ) from None

    def check_category(self, category: str) -> None:
        """Raise :class:`UnknownCategoryError` unless this set defines ``category``."""
        if category not in self.categories:
            raise UnknownCategoryError(category, known=self.categories, ruleset_id=self.ruleset_id)


@dataclass(frozen=True, slots=True)
class DailyCap:
    """A TfL-style daily cap: what a rider pays in one travel day above it is credited.

    Attributes:
        enabled: off by default.
        day_start: local time the travel day starts (a journey belongs to the travel day
            of its first boarding).
        amount_krw: the cap per category; categories without one are not capped.
    """

    enabled: bool = False
    day_start: dt.time = dt.time(4, 30)
    amount_krw: Mapping[str, int] = field(default_factory=_empty_amounts)


@dataclass(frozen=True, slots=True)
class MonthlyRefund:
    """A monthly refund like K-Pass "모두의 카드": spending above a threshold is refunded.

    Attributes:
        enabled: off by default.
        threshold_krw: the threshold per category; categories without one get nothing.
    """

    enabled: bool = False
    threshold_krw: Mapping[str, int] = field(default_factory=_empty_amounts)


@dataclass(frozen=True, slots=True)
class NetworkMap:
    """Route id to fare class, as read from GTFS ``route_networks.txt``, checked.

    Build it with :meth:`FareRules.network_map`, which rejects unknown network ids.

    Attributes:
        routes: route id to network id.
        default_network: the class of routes without a row.
    """

    routes: Mapping[str, str]
    default_network: str

    def network_for(self, route_id: str) -> str:
        """Return the network id of ``route_id`` (the default one when it has none)."""
        return self.routes.get(route_id, self.default_network)


@dataclass(frozen=True, slots=True)
class FareRules:
    """A whole rules file: effective-dated rule sets plus the period adjustments.

    Attributes:
        timezone: IANA name of the agency timezone (times of day and dates are in it).
        default_network: fare class of routes without a network.
        rulesets: the rule sets, sorted by ``effective_from``.
        daily_cap: the daily cap settings.
        monthly_refund: the monthly refund settings.
        source: where the rules were read from.
    """

    timezone: str
    default_network: str
    rulesets: tuple[RuleSet, ...]
    daily_cap: DailyCap = DailyCap()
    monthly_refund: MonthlyRefund = MonthlyRefund()
    source: str = "<mapping>"
    _from_naive: tuple[float, ...] = field(init=False, repr=False, compare=False)
    """Each rule set's ``effective_from`` read as UTC, in UNIX seconds (see in_force)."""

    def __post_init__(self) -> None:
        epoch = dt.datetime(1970, 1, 1)  # naive on purpose: wall-clock fields
        object.__setattr__(
            self,
            "_from_naive",
            tuple((rs.effective_from - epoch).total_seconds() for rs in self.rulesets),
        )

    @property
    def tzinfo(self) -> ZoneInfo:
        """The agency timezone."""
        return ZoneInfo(self.timezone)

    @property
    def network_ids(self) -> frozenset[str]:
        """Every network id some rule set defines."""
        return frozenset(n for rs in self.rulesets for n in rs.networks)

    def local(self, t: float) -> dt.datetime:
        """Return UNIX time ``t`` as a naive local date-time in the agency timezone."""
        return dt.datetime.fromtimestamp(t, self.tzinfo).replace(tzinfo=None)

    def in_force(self, t: float) -> RuleSet:
        """Return the rule set in force at UNIX time ``t``.

        Raises:
            NoRulesInForceError: ``t`` is before the earliest set.
        """
        # The local wall clock is t plus an offset of less than a day, so a rule set whose
        # effective_from (read as UTC) is a day or more before t is in force and one a
        # day or more after t is not; when that decides every set, no time zone lookup.
        bounds = self._from_naive
        surely = bisect.bisect_right(bounds, t - 86400.0)
        if surely and surely == bisect.bisect_right(bounds, t + 86400.0):
            return self.rulesets[surely - 1]
        when = self.local(t)
        chosen: RuleSet | None = None
        for ruleset in self.rulesets:
            if ruleset.effective_from <= when:
                chosen = ruleset
            else:
                break
        if chosen is None:
            raise NoRulesInForceError(when, self.rulesets[0].effective_from)
        return chosen

    def network_map(
        self, route_networks: Mapping[str, str], *, default_network: str | None = None
    ) -> NetworkMap:
        """Check a route -> network mapping against these rules.

        Args:
            route_networks: route id to network id (GTFS ``route_networks.txt``).
            default_network: class of routes without a row; the rules' own
                ``default_network`` when ``None``.

        Returns:
            The checked mapping.

        Raises:
            UnknownNetworkError: a network id (or the default) is not in any rule set.
        """
        known = self.network_ids
        ordered = tuple(sorted(known))
        default = self.default_network if default_network is None else default_network
        if default not in known:
            raise UnknownNetworkError(default, known=ordered)
        for route_id, network_id in route_networks.items():
            if network_id not in known:
                raise UnknownNetworkError(network_id, known=ordered, route_id=route_id)
        return NetworkMap(routes=MappingProxyType(dict(route_networks)), default_network=default)


# --------------------------------------------------------------------------- loading


def load_rules(
    path: str | os.PathLike[str] | None = None, *, timezone: str | None = None
) -> FareRules:
    """Read and validate a fare rules TOML file.

    Args:
        path: the file; the packaged default rules (:data:`DEFAULT_RULES_PATH`) when
            ``None``.
        timezone: an IANA timezone overriding the file's ``timezone`` (e.g. the GTFS
            agency timezone).

    Returns:
        The rules.

    Raises:
        FareRulesError: the file cannot be read or is not valid TOML.
        FareRulesValidationError: a key is missing, unknown or of the wrong type.
    """
    file = DEFAULT_RULES_PATH if path is None else Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FareRulesError(f"cannot read fare rules {file}: {exc}", key="") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FareRulesError(
            f"fare rules {file} are not valid TOML: {exc}", key="", expected="TOML"
        ) from exc
    if timezone is not None:
        data["timezone"] = timezone
    return parse_rules(data, source=str(file))


def parse_rules(data: Mapping[str, Any], *, source: str = "<mapping>") -> FareRules:
    """Validate already-decoded rules (the structure of the TOML file).

    Args:
        data: the decoded document.
        source: shown in error messages.

    Returns:
        The rules.

    Raises:
        FareRulesValidationError: a key is missing, unknown or of the wrong type.
    """
    return _Parser(source).rules(data)


def _describe(value: object) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


class _Parser:
    """Walks the decoded document, naming each key it checks."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, expected: str, value: object) -> FareRulesValidationError:
        got = "missing" if value is _MISSING else _describe(value)
        return FareRulesValidationError(key, expected, got, source=self.source)

    def table(self, value: object, key: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(key, "table", value)
        for name in value:
            if name not in allowed:
                where = key or "the top level"
                raise self.fail(
                    f"{key}.{name}" if key else str(name),
                    f"no such key ({where} allows {', '.join(allowed)})",
                    value[name],
                )
        return value

    def get(self, table: Mapping[str, Any], name: str) -> object:
        return table.get(name, _MISSING)

    def string(self, value: object, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(key, "non-empty string", value)
        return value

    def integer(self, value: object, key: str, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"int >= {minimum}", value)
        return value

    def boolean(self, value: object, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, "bool", value)
        return value

    def km_to_m(self, value: object, key: str, *, positive: bool) -> int:
        expected = "number > 0 (km)" if positive else "number >= 0 (km)"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, expected, value)
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise self.fail(key, expected, value)
        metres = round(value * 1000)
        if positive and metres == 0:
            raise self.fail(key, expected, value)
        return metres

    def minutes_to_s(self, value: object, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, "number >= 0 (minutes)", value)
        if not math.isfinite(value) or value < 0:
            raise self.fail(key, "number >= 0 (minutes)", value)
        return float(value) * 60.0

    def time_of_day(self, value: object, key: str) -> dt.time:
        expected = 'local time "HH:MM"'
        if isinstance(value, dt.time):
            if value.tzinfo is not None:
                raise self.fail(key, expected, value)
            return value
        if not isinstance(value, str):
            raise self.fail(key, expected, value)
        try:
            parsed = dt.time.fromisoformat(value)
        except ValueError:
            raise self.fail(key, expected, value) from None
        if parsed.tzinfo is not None:
            raise self.fail(key, expected, value)
        return parsed

    def local_datetime(self, value: object, key: str, tz: ZoneInfo) -> dt.datetime:
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                return value
            return value.astimezone(tz).replace(tzinfo=None)
        if isinstance(value, dt.date):
            return dt.datetime.combine(value, dt.time())
        raise self.fail(key, "TOML local date (YYYY-MM-DD) or date-time", value)

    def per_category(
        self, value: object, key: str, categories: tuple[str, ...] | None
    ) -> Mapping[str, int]:
        if not isinstance(value, Mapping):
            raise self.fail(key, "table of category = int", value)
        result: dict[str, int] = {}
        for name, amount in value.items():
            if categories is not None and name not in categories:
                raise self.fail(f"{key}.{name}", f"a category ({', '.join(categories)})", amount)
            result[str(name)] = self.integer(amount, f"{key}.{name}")
        if categories is not None:
            for name in categories:
                if name not in result:
                    raise self.fail(f"{key}.{name}", "int >= 0", _MISSING)
        return MappingProxyType(result)

    # ---------------------------------------------------------------- sections

    def rules(self, data: Mapping[str, Any]) -> FareRules:
        top = self.table(
            data,
            "",
            ("format", "timezone", "default_network", "daily_cap", "monthly_refund", "ruleset"),
        )
        fmt = self.get(top, "format")
        if fmt != FORMAT:
            raise self.fail("format", repr(FORMAT), fmt)
        tz_name = self.string(self.get(top, "timezone"), "timezone")
        try:
            tz = ZoneInfo(tz_name)
        except (ZoneInfoNotFoundError, ValueError):
            raise self.fail("timezone", "an IANA timezone name", tz_name) from None
        default_network = self.string(self.get(top, "default_network"), "default_network")

        raw_sets = self.get(top, "ruleset")
        if not isinstance(raw_sets, list) or not raw_sets:
            raise self.fail("ruleset", "non-empty array of tables ([[ruleset]])", raw_sets)
        rulesets = [self.ruleset(raw, f"ruleset[{i}]", tz) for i, raw in enumerate(raw_sets)]
        seen_ids: set[str] = set()
        for i, ruleset in enumerate(rulesets):
            if ruleset.ruleset_id in seen_ids:
                raise self.fail(f"ruleset[{i}].id", "an id unique in the file", ruleset.ruleset_id)
            seen_ids.add(ruleset.ruleset_id)
            if default_network not in ruleset.networks:
                raise self.fail(
                    "default_network",
                    f"a network every rule set defines (ruleset[{i}] does not)",
                    default_network,
                )
        rulesets.sort(key=lambda rs: rs.effective_from)
        for earlier, later in itertools.pairwise(rulesets):
            if earlier.effective_from == later.effective_from:
                raise self.fail(
                    f"ruleset[{later.ruleset_id}].effective_from",
                    "a date no other rule set has",
                    later.effective_from.isoformat(),
                )

        daily_cap = self.daily_cap(self.get(top, "daily_cap"))
        monthly_refund = self.monthly_refund(self.get(top, "monthly_refund"))
        return FareRules(
            timezone=tz_name,
            default_network=default_network,
            rulesets=tuple(rulesets),
            daily_cap=daily_cap,
            monthly_refund=monthly_refund,
            source=self.source,
        )

    def ruleset(self, raw: object, key: str, tz: ZoneInfo) -> RuleSet:
        table = self.table(
            raw, key, ("id", "effective_from", "categories", "transfer", "distance", "networks")
        )
        ruleset_id = self.string(self.get(table, "id"), f"{key}.id")
        effective_from = self.local_datetime(
            self.get(table, "effective_from"), f"{key}.effective_from", tz
        )
        raw_categories = self.get(table, "categories")
        if (
            not isinstance(raw_categories, list)
            or not raw_categories
            or not all(isinstance(c, str) and c for c in raw_categories)
            or len(set(raw_categories)) != len(raw_categories)
        ):
            raise self.fail(
                f"{key}.categories", "non-empty array of unique strings", raw_categories
            )
        categories = tuple(str(c) for c in raw_categories)
        transfer = self.transfer(self.get(table, "transfer"), f"{key}.transfer")
        distance = self.distance(self.get(table, "distance"), f"{key}.distance", categories)
        raw_networks = self.get(table, "networks")
        if not isinstance(raw_networks, Mapping) or not raw_networks:
            raise self.fail(f"{key}.networks", "non-empty table of networks", raw_networks)
        networks = {
            str(network_id): self.network(
                str(network_id), body, f"{key}.networks.{network_id}", categories
            )
            for network_id, body in raw_networks.items()
        }
        return RuleSet(
            ruleset_id=ruleset_id,
            effective_from=effective_from,
            categories=categories,
            transfer=transfer,
            distance=distance,
            networks=MappingProxyType(networks),
        )

    def transfer(self, raw: object, key: str) -> TransferRule:
        table = self.table(
            raw,
            key,
            ("window_min", "night_window_min", "night_start", "night_end", "max_transfers"),
        )
        return TransferRule(
            window_s=self.minutes_to_s(self.get(table, "window_min"), f"{key}.window_min"),
            night_window_s=self.minutes_to_s(
                self.get(table, "night_window_min"), f"{key}.night_window_min"
            ),
            night_start=self.time_of_day(self.get(table, "night_start"), f"{key}.night_start"),
            night_end=self.time_of_day(self.get(table, "night_end"), f"{key}.night_end"),
            max_transfers=self.integer(self.get(table, "max_transfers"), f"{key}.max_transfers"),
        )

    def distance(self, raw: object, key: str, categories: tuple[str, ...]) -> DistanceRule:
        table = self.table(raw, key, ("unit_km", "surcharge_krw", "cap_krw"))
        return DistanceRule(
            unit_m=self.km_to_m(self.get(table, "unit_km"), f"{key}.unit_km", positive=True),
            surcharge_krw=self.per_category(
                self.get(table, "surcharge_krw"), f"{key}.surcharge_krw", categories
            ),
            cap_krw=self.per_category(self.get(table, "cap_krw"), f"{key}.cap_krw", categories),
        )

    def network(
        self, network_id: str, raw: object, key: str, categories: tuple[str, ...]
    ) -> NetworkRule:
        table = self.table(raw, key, ("name", "base_distance_km", "fare_krw"))
        name = self.get(table, "name")
        return NetworkRule(
            network_id=network_id,
            name=network_id if name is _MISSING else self.string(name, f"{key}.name"),
            base_distance_m=self.km_to_m(
                self.get(table, "base_distance_km"), f"{key}.base_distance_km", positive=False
            ),
            fare_krw=self.per_category(self.get(table, "fare_krw"), f"{key}.fare_krw", categories),
        )

    def daily_cap(self, raw: object) -> DailyCap:
        if raw is _MISSING:
            return DailyCap()
        key = "daily_cap"
        table = self.table(raw, key, ("enabled", "day_start", "amount_krw"))
        enabled = self.boolean(self.get(table, "enabled"), f"{key}.enabled")
        raw_start = self.get(table, "day_start")
        day_start = (
            dt.time(4, 30)
            if raw_start is _MISSING
            else self.time_of_day(raw_start, f"{key}.day_start")
        )
        raw_amount = self.get(table, "amount_krw")
        if raw_amount is _MISSING and not enabled:
            amount: Mapping[str, int] = MappingProxyType({})
        else:
            amount = self.per_category(raw_amount, f"{key}.amount_krw", None)
        return DailyCap(enabled=enabled, day_start=day_start, amount_krw=amount)

    def monthly_refund(self, raw: object) -> MonthlyRefund:
        if raw is _MISSING:
            return MonthlyRefund()
        key = "monthly_refund"
        table = self.table(raw, key, ("enabled", "threshold_krw"))
        enabled = self.boolean(self.get(table, "enabled"), f"{key}.enabled")
        raw_threshold = self.get(table, "threshold_krw")
        if raw_threshold is _MISSING and not enabled:
            threshold: Mapping[str, int] = MappingProxyType({})
        else:
            threshold = self.per_category(raw_threshold, f"{key}.threshold_krw", None)
        return MonthlyRefund(enabled=enabled, threshold_krw=threshold)


_MISSING: Any = object()
