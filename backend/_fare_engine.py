"""The sans-I/O fare engine: journeys from legs, fares from journeys, period adjustments.

Pure synchronous code fed plain values; the rules come from :mod:`backend._fare_rules`.

* :func:`group_journeys` splits one rider's legs into journeys by the transfer rules.
* :meth:`FareEngine.price` prices one journey: the highest base fare among its legs plus
  the distance surcharge on the total distance, with a human-readable explanation.
* :func:`period_adjustments` computes daily-cap credits and monthly refunds from the
  charges after the fact; charges are never changed.

The rules and their sources are described in ``docs/fares.md``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from backend._durations import duration_text
from backend._fare_rules import FareRules, RuleSet
from backend._frozen import fast_init
from busbell._errors import BusbellError

__all__ = [
    "Adjustment",
    "AdjustmentKind",
    "Charge",
    "FareEngine",
    "FareInputError",
    "FareLeg",
    "FareQuote",
    "group_journeys",
    "period_adjustments",
]

AdjustmentKind = Literal["daily_cap", "monthly_refund"]


class FareInputError(BusbellError, ValueError):
    """A leg, journey or charge given to the fare engine is invalid.

    Attributes:
        field: the offending field (``""`` when about the input as a whole).
    """

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


@fast_init
@dataclass(frozen=True, slots=True)
class FareLeg:
    """One ride of one rider on one bus, as the fare engine sees it.

    Attributes:
        route_id: GTFS route id.
        network_id: fare class (GTFS Fares v2 network id), see
            :meth:`backend._fare_rules.NetworkMap.network_for`.
        board_t: UNIX time of boarding.
        alight_t: UNIX time of alighting (not before ``board_t``).
        distance_m: distance ridden, metres (>= 0).
        board_stop_id: GTFS stop id of boarding, if known.
        alight_stop_id: GTFS stop id of alighting, if known.
        bus_id: the bus, if known.
    """

    route_id: str
    network_id: str
    board_t: float
    alight_t: float
    distance_m: float
    board_stop_id: str | None = None
    alight_stop_id: str | None = None
    bus_id: str | None = None

    def __post_init__(self) -> None:
        for name, value in (
            ("board_t", self.board_t),
            ("alight_t", self.alight_t),
            ("distance_m", self.distance_m),
        ):
            if type(value) is not float and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise FareInputError(f"{name} must be a number, got {value!r}", field=name)
            if not math.isfinite(value):
                raise FareInputError(f"{name} must be finite, got {value!r}", field=name)
        if self.alight_t < self.board_t:
            raise FareInputError(
                f"alight_t {self.alight_t} is before board_t {self.board_t}", field="alight_t"
            )
        if self.distance_m < 0:
            raise FareInputError(
                f"distance_m must be >= 0, got {self.distance_m}", field="distance_m"
            )


def _sort_key(leg: FareLeg) -> tuple[float, float, str, str, str, float, str, str]:
    """Order legs by boarding; the other fields only break ties, so order is total."""
    return (
        leg.board_t,
        leg.alight_t,
        leg.route_id,
        leg.bus_id or "",
        leg.network_id,
        leg.distance_m,
        leg.board_stop_id or "",
        leg.alight_stop_id or "",
    )


def _continues(
    journey: Sequence[FareLeg], leg: FareLeg, ruleset: RuleSet, rules: FareRules
) -> bool:
    """Tell whether ``leg`` is a transfer within ``journey`` (legs sorted)."""
    previous = journey[-1]
    if leg.route_id == previous.route_id:
        return False
    if len(journey) > ruleset.transfer.max_transfers:
        return False
    window = ruleset.transfer.window_after(rules.local(previous.alight_t).time())
    return leg.board_t - previous.alight_t <= window


def group_journeys(legs: Iterable[FareLeg], rules: FareRules) -> list[list[FareLeg]]:
    """Split one rider's legs into journeys by the transfer rules.

    Legs are taken in order of boarding. A leg continues the current journey when all of:
    its route differs from the previous leg's (re-boarding the same route starts a new
    journey); the journey has fewer than ``max_transfers + 1`` legs; and it boards within
    the transfer window (inclusive) after the previous leg's alighting. The window is the
    night one when that alighting is in the night period (local time). The transfer rules
    are those of the rule set in force at the journey's first boarding.

    Args:
        legs: the legs of one rider, in any order.
        rules: the fare rules.

    Returns:
        The journeys in order, each a non-empty list of legs sorted by boarding; together
        they hold every leg exactly once.

    Raises:
        NoRulesInForceError: a journey starts before the earliest rule set.
    """
    journeys: list[list[FareLeg]] = []
    current: list[FareLeg] = []
    ruleset: RuleSet | None = None  # in force at the current journey's first boarding
    for leg in sorted(legs, key=_sort_key):
        if ruleset is not None and _continues(current, leg, ruleset, rules):
            current.append(leg)
            continue
        if current:
            journeys.append(current)
        current = [leg]
        ruleset = rules.in_force(leg.board_t)
    if current:
        journeys.append(current)
    return journeys


@fast_init
@dataclass(frozen=True, slots=True)
class FareQuote:
    """The price of one journey, with how it was reached.

    Attributes:
        fare_krw: what the journey costs.
        category: rider category priced.
        ruleset_id: the rule set used (the one in force at the first boarding).
        legs: the journey's legs, sorted by boarding.
        base_fare_krw: the highest base fare among the legs.
        base_network_id: the class that has it (the first such leg's).
        base_distance_m: distance included in the base fare.
        total_distance_m: total distance of all legs, rounded to the metre.
        surcharge_units: started surcharge units beyond the base distance.
        surcharge_krw: the distance surcharge after the cap.
        rules: the rules priced with (for :attr:`explain`).
        ruleset: the rule set used.
    """

    fare_krw: int
    category: str
    ruleset_id: str
    legs: tuple[FareLeg, ...]
    base_fare_krw: int
    base_network_id: str
    base_distance_m: int
    total_distance_m: int
    surcharge_units: int
    surcharge_krw: int
    rules: FareRules = field(compare=False, repr=False)
    ruleset: RuleSet = field(compare=False, repr=False)

    @property
    def first_board_t(self) -> float:
        """UNIX time of the journey's first boarding."""
        return self.legs[0].board_t

    @property
    def explain(self) -> tuple[str, ...]:
        """One human-readable line per pricing step.

        Written when asked for: settling a day prices every journey, and only the
        ledger and ``fares explain`` read the lines.
        """
        return _explain(self)


def _krw(amount: int) -> str:
    return f"{amount:,} KRW"


def _km(metres: float) -> str:
    return f"{metres / 1000:g} km"


class FareEngine:
    """Prices journeys with a set of fare rules.

    Example:
        >>> from backend._fare_rules import load_rules
        >>> engine = FareEngine(load_rules())
        >>> leg = FareLeg("G6000", "gyeonggi_wide_area", 1762500000.0, 1762503000.0, 42_000)
        >>> engine.price([leg]).fare_krw
        3500
    """

    def __init__(self, rules: FareRules) -> None:
        """Create an engine.

        Args:
            rules: the fare rules, e.g. from :func:`backend._fare_rules.load_rules`.
        """
        self._rules = rules

    @property
    def rules(self) -> FareRules:
        """The fare rules in use."""
        return self._rules

    def journeys(self, legs: Iterable[FareLeg]) -> list[list[FareLeg]]:
        """Group one rider's legs into journeys; see :func:`group_journeys`."""
        return group_journeys(legs, self._rules)

    def price_all(self, legs: Iterable[FareLeg], category: str = "adult") -> list[FareQuote]:
        """Group one rider's legs into journeys and price each."""
        return [self.price(journey, category) for journey in self.journeys(legs)]

    def price(self, legs: Sequence[FareLeg], category: str = "adult") -> FareQuote:
        """Price one journey.

        The journey pays the highest base fare among its legs plus the distance
        surcharge: each started unit (5 km by default) of total distance beyond the base
        distance costs the category's surcharge, up to the cap. The base distance is the
        largest that a class in the journey includes (30 km with a seated or wide-area
        bus, else 10 km, by default). The rule set is the one in force at the first
        boarding. The legs are priced as given: group them with :func:`group_journeys`.

        Args:
            legs: the legs of one journey, in any order.
            category: rider category, e.g. ``adult``, ``youth``, ``child``.

        Returns:
            The quote.

        Raises:
            FareInputError: ``legs`` is empty.
            NoRulesInForceError: the journey starts before the earliest rule set.
            UnknownCategoryError: the rule set has no such category.
            UnknownNetworkError: a leg's network id is not in the rule set.
        """
        if not legs:
            raise FareInputError("a journey needs at least one leg", field="legs")
        rules = self._rules
        ordered = (legs[0],) if len(legs) == 1 else tuple(sorted(legs, key=_sort_key))
        ruleset = rules.in_force(ordered[0].board_t)
        ruleset.check_category(category)
        classes = [ruleset.network(leg.network_id) for leg in ordered]
        fares = [network.fare_krw[category] for network in classes]
        base_fare = max(fares)
        base_distance = max([network.base_distance_m for network in classes])
        total_distance = round(math.fsum([leg.distance_m for leg in ordered]))
        rule = ruleset.distance
        excess = total_distance - base_distance
        per_unit = rule.surcharge_krw[category]
        cap = rule.cap_krw[category]
        units = 0 if excess <= 0 else -(-excess // rule.unit_m)
        surcharge = 0 if excess <= 0 else min(units * per_unit, cap)
        return FareQuote(
            fare_krw=base_fare + surcharge,
            category=category,
            ruleset_id=ruleset.ruleset_id,
            legs=ordered,
            base_fare_krw=base_fare,
            base_network_id=classes[fares.index(base_fare)].network_id,
            base_distance_m=base_distance,
            total_distance_m=total_distance,
            surcharge_units=units,
            surcharge_krw=surcharge,
            rules=rules,
            ruleset=ruleset,
        )


def _explain(quote: FareQuote) -> tuple[str, ...]:
    """The lines of :attr:`FareQuote.explain`: each step of :meth:`FareEngine.price`."""
    rules, ruleset, category = quote.rules, quote.ruleset, quote.category
    ordered = quote.legs
    first = ordered[0]
    classes = [ruleset.network(leg.network_id) for leg in ordered]
    explain = [
        (
            f"rule set {ruleset.ruleset_id} (in force from "
            f"{ruleset.effective_from.isoformat(sep=' ')} {rules.timezone}), chosen by the "
            f"first boarding at {rules.local(first.board_t).isoformat(sep=' ')}"
        ),
        f"category {category}, {len(ordered)} leg(s)",
    ]
    for number, (leg, network) in enumerate(zip(ordered, classes, strict=True), 1):
        if number > 1:
            previous = ordered[number - 2]
            alight_local = rules.local(previous.alight_t)
            night = ruleset.transfer.is_night(alight_local.time())
            window = ruleset.transfer.window_after(alight_local.time())
            explain.append(
                f"transfer {number - 1}: boarded "
                f"{duration_text(leg.board_t - previous.alight_t)} after alighting at "
                f"{alight_local.time().isoformat()} (window {duration_text(window)}"
                f"{', night' if night else ''})"
            )
        board = rules.local(leg.board_t).time().isoformat()
        alight = rules.local(leg.alight_t).time().isoformat()
        explain.append(
            f"leg {number}: route {leg.route_id} ({network.network_id}: {network.name}) "
            f"{board}-{alight}, {leg.distance_m / 1000:.3f} km, "
            f"base fare {_krw(network.fare_krw[category])}"
        )

    fares = [network.fare_krw[category] for network in classes]
    base_fare = quote.base_fare_krw
    base_index = fares.index(base_fare)
    explain.append(
        f"highest base fare: {_krw(base_fare)} ({quote.base_network_id}, leg {base_index + 1})"
    )

    distances = [network.base_distance_m for network in classes]
    base_distance = quote.base_distance_m
    distance_index = distances.index(base_distance)
    if min(distances) == base_distance:
        explain.append(
            f"base distance: {_km(base_distance)} (every class in the journey "
            f"includes {_km(base_distance)})"
        )
    else:
        explain.append(
            f"base distance: {_km(base_distance)}, because a "
            f"{classes[distance_index].network_id} bus (leg {distance_index + 1}) is in "
            f"the journey (otherwise {_km(min(distances))})"
        )

    total_distance = quote.total_distance_m
    explain.append(f"total distance: {total_distance / 1000:.3f} km ({total_distance:,} m)")

    rule = ruleset.distance
    excess = total_distance - base_distance
    per_unit = rule.surcharge_krw[category]
    cap = rule.cap_krw[category]
    surcharge = quote.surcharge_krw
    if excess <= 0:
        explain.append(
            f"distance surcharge: none ({total_distance / 1000:.3f} km is within "
            f"{_km(base_distance)})"
        )
    else:
        units = quote.surcharge_units
        uncapped = units * per_unit
        capped = f", capped at {_krw(cap)}" if uncapped > cap else f" (cap {_krw(cap)})"
        explain.append(
            f"distance surcharge: {excess:,} m beyond {_km(base_distance)} = {units} "
            f"started unit(s) of {_km(rule.unit_m)} x {_krw(per_unit)} = "
            f"{_krw(uncapped)}{capped}"
        )
    explain.append(f"total: {base_fare:,} + {surcharge:,} = {_krw(quote.fare_krw)}")
    return tuple(explain)


# --------------------------------------------------------------------------- periods


@dataclass(frozen=True, slots=True)
class Charge:
    """A fare charged for one journey, as input to :func:`period_adjustments`.

    Attributes:
        charge_id: unique id of the charge (e.g. the journey id).
        rider_id: the rider charged.
        t: UNIX time of the journey's first boarding (decides its day and month).
        fare_krw: the amount charged (>= 0).
        category: rider category of the charge.
    """

    charge_id: str
    rider_id: str
    t: float
    fare_krw: int
    category: str = "adult"

    def __post_init__(self) -> None:
        fare: object = self.fare_krw
        if isinstance(fare, bool) or not isinstance(fare, int) or fare < 0:
            raise FareInputError(f"fare_krw must be an int >= 0, got {fare!r}", field="fare_krw")
        t: object = self.t
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
            raise FareInputError(f"t must be a finite number, got {t!r}", field="t")

    @classmethod
    def from_quote(cls, quote: FareQuote, *, charge_id: str, rider_id: str) -> Charge:
        """Make the charge of a priced journey."""
        return cls(
            charge_id=charge_id,
            rider_id=rider_id,
            t=quote.first_board_t,
            fare_krw=quote.fare_krw,
            category=quote.category,
        )


@dataclass(frozen=True, slots=True)
class Adjustment:
    """A credit to a rider for one period; it never changes the charges it covers.

    Attributes:
        kind: ``daily_cap`` or ``monthly_refund``.
        rider_id: the rider credited.
        category: rider category of the charges covered.
        period: the travel day (``YYYY-MM-DD``) or calendar month (``YYYY-MM``), local.
        amount_krw: the adjustment, negative (a credit to the rider).
        paid_krw: what the rider paid in the period before this adjustment (for a
            monthly refund: net of that month's daily-cap credits).
        limit_krw: the cap or threshold applied.
        charge_ids: the charges in the period, in time order.
        reason: a human-readable explanation.
    """

    kind: AdjustmentKind
    rider_id: str
    category: str
    period: str
    amount_krw: int
    paid_krw: int
    limit_krw: int
    charge_ids: tuple[str, ...]
    reason: str


def period_adjustments(charges: Iterable[Charge], rules: FareRules) -> list[Adjustment]:
    """Compute the daily-cap credits and monthly refunds owed for a set of charges.

    Both are off unless enabled in the rules. Daily cap: per rider and category, what was
    paid in one travel day (starting at ``daily_cap.day_start`` local time; a charge
    belongs to the travel day of its first boarding) above the category's cap is
    credited. Monthly refund: per rider and category, what was paid in a calendar month
    (local, by first boarding), less the daily-cap credits of travel days in that month,
    above the category's threshold is refunded. Categories without an amount are left
    alone. Pass every charge of the periods concerned: the result is a pure function of
    the charges, so re-running it after new charges yields the complete, updated set.

    Args:
        charges: the charges, any order, any riders.
        rules: the fare rules (timezone, ``daily_cap``, ``monthly_refund``).

    Returns:
        The adjustments, sorted by rider, category, kind (daily first) and period.

    Raises:
        FareInputError: two charges have the same ``charge_id``.
    """
    ordered = sorted(charges, key=lambda c: (c.t, c.charge_id))
    seen: set[str] = set()
    for charge in ordered:
        if charge.charge_id in seen:
            raise FareInputError(f"duplicate charge_id {charge.charge_id!r}", field="charge_id")
        seen.add(charge.charge_id)

    adjustments: list[Adjustment] = []
    daily_credit: dict[tuple[str, str, str], int] = {}
    cap = rules.daily_cap
    if cap.enabled:
        offset = dt.timedelta(
            hours=cap.day_start.hour, minutes=cap.day_start.minute, seconds=cap.day_start.second
        )
        days: dict[tuple[str, str, dt.date], list[Charge]] = {}
        for charge in ordered:
            day = (rules.local(charge.t) - offset).date()
            days.setdefault((charge.rider_id, charge.category, day), []).append(charge)
        for (rider_id, category, day), group in days.items():
            limit = cap.amount_krw.get(category)
            paid = sum(c.fare_krw for c in group)
            if limit is None or paid <= limit:
                continue
            credit = paid - limit
            month = f"{day.year:04d}-{day.month:02d}"
            key = (rider_id, category, month)
            daily_credit[key] = daily_credit.get(key, 0) + credit
            adjustments.append(
                Adjustment(
                    kind="daily_cap",
                    rider_id=rider_id,
                    category=category,
                    period=day.isoformat(),
                    amount_krw=-credit,
                    paid_krw=paid,
                    limit_krw=limit,
                    charge_ids=tuple(c.charge_id for c in group),
                    reason=(
                        f"daily cap: paid {_krw(paid)} on travel day {day.isoformat()} "
                        f"(from {cap.day_start.isoformat()}), cap {_krw(limit)}: "
                        f"credit {_krw(credit)}"
                    ),
                )
            )

    refund = rules.monthly_refund
    if refund.enabled:
        months: dict[tuple[str, str, str], list[Charge]] = {}
        for charge in ordered:
            local = rules.local(charge.t)
            month = f"{local.year:04d}-{local.month:02d}"
            months.setdefault((charge.rider_id, charge.category, month), []).append(charge)
        for key, group in months.items():
            rider_id, category, month = key
            threshold = refund.threshold_krw.get(category)
            gross = sum(c.fare_krw for c in group)
            credited = daily_credit.get(key, 0)
            paid = gross - credited
            if threshold is None or paid <= threshold:
                continue
            amount = paid - threshold
            less = f" less daily-cap credits {_krw(credited)}" if credited else ""
            adjustments.append(
                Adjustment(
                    kind="monthly_refund",
                    rider_id=rider_id,
                    category=category,
                    period=month,
                    amount_krw=-amount,
                    paid_krw=paid,
                    limit_krw=threshold,
                    charge_ids=tuple(c.charge_id for c in group),
                    reason=(
                        f"monthly refund: paid {_krw(gross)}{less} in {month}, threshold "
                        f"{_krw(threshold)}: refund {_krw(amount)}"
                    ),
                )
            )

    kind_order = {"daily_cap": 0, "monthly_refund": 1}
    adjustments.sort(key=lambda a: (a.rider_id, a.category, kind_order[a.kind], a.period))
    return adjustments
