"""Golden and property tests of the fare engine and its rules.

Every golden figure is a worked example listed, with its source, in ``docs/fares.md``
("Worked examples"); the test names match the table there.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import textwrap
import tomllib
from pathlib import Path
from types import MappingProxyType
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend._durations import duration_text
from backend._fare_engine import (
    Adjustment,
    Charge,
    FareEngine,
    FareInputError,
    FareLeg,
    group_journeys,
    period_adjustments,
)
from backend._fare_rules import (
    DEFAULT_RULES_PATH,
    DailyCap,
    FareRules,
    FareRulesError,
    FareRulesValidationError,
    MonthlyRefund,
    NoRulesInForceError,
    UnknownCategoryError,
    UnknownNetworkError,
    load_rules,
    parse_rules,
)
from busbell._errors import ConfigError

SEOUL = ZoneInfo("Asia/Seoul")
RULES = load_rules()
ENGINE = FareEngine(RULES)
MIN = 60.0


def kst(year: int, month: int, day: int, hour: int, minute: int, *, second: int = 0) -> float:
    """UNIX time of a Seoul wall-clock time."""
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=SEOUL).timestamp()


def leg(
    route: str,
    network: str,
    board: float,
    minutes: float,
    km: float,
    *,
    bus: str = "B1",
) -> FareLeg:
    """A leg boarding at ``board`` and riding ``minutes`` for ``km``."""
    return FareLeg(
        route_id=route,
        network_id=network,
        board_t=board,
        alight_t=board + minutes * MIN,
        distance_m=km * 1000,
        board_stop_id="S-board",
        alight_stop_id="S-alight",
        bus_id=bus,
    )


def after(previous: FareLeg, minutes: float, then: FareLeg) -> FareLeg:
    """``then`` moved to board ``minutes`` after ``previous`` alighted."""
    board = previous.alight_t + minutes * MIN
    return dataclasses.replace(then, board_t=board, alight_t=board + then.alight_t - then.board_t)


def fares(legs: list[FareLeg], category: str = "adult") -> list[int]:
    return [q.fare_krw for q in ENGINE.price_all(legs, category)]


# ------------------------------------------------------------------ golden: base and distance

NOV = (2025, 11, 3)  # a Monday under the 2025-10-25 rule set


def test_g6000_alone_42_km() -> None:
    g = leg("G6000", "gyeonggi_wide_area", kst(*NOV, 8, 0), 60, 42)
    quote = ENGINE.price([g])
    assert quote.fare_krw == 3500
    assert quote.base_fare_krw == 3200
    assert quote.base_distance_m == 30_000
    assert quote.surcharge_units == 3
    assert quote.surcharge_krw == 300
    assert quote.ruleset_id == "seoul-2023-08-12+gyeonggi-2025-10-25"


def test_seoul_trunk_6_km_then_g6000_25_km() -> None:
    trunk = leg("9401", "seoul_trunk", kst(*NOV, 8, 0), 15, 6)
    g = after(trunk, 12, leg("G6000", "gyeonggi_wide_area", 0, 40, 25))
    assert group_journeys([trunk, g], RULES) == [[trunk, g]]
    quote = ENGINE.price([trunk, g])
    assert quote.fare_krw == 3300
    assert (quote.base_fare_krw, quote.base_network_id) == (3200, "gyeonggi_wide_area")
    assert quote.base_distance_m == 30_000
    assert quote.total_distance_m == 31_000
    assert quote.surcharge_krw == 100


def test_city_bus_exactly_10_km_has_no_surcharge() -> None:
    assert fares([leg("7", "gyeonggi_city", kst(*NOV, 9, 0), 30, 10)]) == [1650]


def test_city_bus_10_001_km_pays_one_unit() -> None:
    assert fares([leg("7", "gyeonggi_city", kst(*NOV, 9, 0), 30, 10.001)]) == [1750]


def test_transfer_journey_over_10_km_pays_per_started_5_km() -> None:
    a = leg("7", "gyeonggi_city", kst(*NOV, 9, 0), 20, 4)
    b = after(a, 5, leg("9401", "seoul_trunk", 0, 20, 6.001))
    c = after(b, 5, leg("0017", "seoul_village", 0, 10, 5))
    # 15.001 km: 5.001 km beyond 10 km is two started units.
    assert fares([a, b, c]) == [1650 + 200]


def test_seated_bus_sets_30_km_base_for_the_whole_journey() -> None:
    a = leg("7", "gyeonggi_city", kst(*NOV, 9, 0), 20, 20)
    b = after(a, 5, leg("3000", "gyeonggi_seated", 0, 30, 10))
    assert fares([a, b]) == [2650]  # 30 km, within the 30 km base


def test_surcharge_cap_700() -> None:
    at_cap = leg("G6000", "gyeonggi_wide_area", kst(*NOV, 7, 0), 90, 65)
    over_cap = leg("G6100", "gyeonggi_wide_area", kst(*NOV, 18, 0), 120, 100)
    quote = ENGINE.price([over_cap])
    assert fares([at_cap]) == [3200 + 700]
    assert (quote.surcharge_units, quote.surcharge_krw, quote.fare_krw) == (14, 700, 3900)
    assert any("capped at 700 KRW" in line for line in quote.explain)


def test_gyeonggi_circular_and_seoul_wide_area_bases() -> None:
    assert fares([leg("8000", "gyeonggi_circular", kst(*NOV, 9, 0), 40, 10)]) == [3450]
    assert fares([leg("M7106", "seoul_wide_area", kst(*NOV, 9, 0), 60, 30)]) == [3000]
    assert fares([leg("0017", "seoul_village", kst(*NOV, 9, 0), 10, 2)]) == [1200]


# ------------------------------------------------------------------ golden: youth and child


def test_youth_and_child_g6000_42_km() -> None:
    g = leg("G6000", "gyeonggi_wide_area", kst(*NOV, 8, 0), 60, 42)
    assert fares([g], "youth") == [2300 + 3 * 80]
    assert fares([g], "child") == [1600 + 3 * 50]


def test_youth_and_child_caps() -> None:
    g = leg("G6100", "gyeonggi_wide_area", kst(*NOV, 8, 0), 120, 100)
    assert fares([g], "youth") == [2300 + 560]
    assert fares([g], "child") == [1600 + 350]


def test_youth_and_child_seoul_trunk_then_city_bus() -> None:
    trunk = leg("9401", "seoul_trunk", kst(*NOV, 15, 0), 20, 8)
    city = after(trunk, 10, leg("7", "gyeonggi_city", 0, 15, 4))
    assert fares([trunk, city], "youth") == [1160 + 80]
    assert fares([trunk, city], "child") == [830 + 50]


# ------------------------------------------------------------------ golden: transfers


def test_same_route_reboard_is_a_new_fare() -> None:
    a = leg("7", "gyeonggi_city", kst(*NOV, 8, 0), 20, 5)
    b = after(a, 5, leg("7", "gyeonggi_city", 0, 20, 5))
    assert group_journeys([a, b], RULES) == [[a], [b]]
    assert fares([a, b]) == [1650, 1650]


def test_sixth_ride_starts_a_new_journey() -> None:
    rides = [leg("r1", "gyeonggi_city", kst(*NOV, 7, 30), 5, 1)]
    for n in range(2, 7):
        rides.append(after(rides[-1], 2, leg(f"r{n}", "gyeonggi_city", 0, 5, 1)))
    journeys = group_journeys(rides, RULES)
    assert [len(j) for j in journeys] == [5, 1]
    assert fares(rides) == [1650, 1650]


def test_transfer_exactly_30_min_continues_30_min_1_s_does_not() -> None:
    a = leg("7", "gyeonggi_city", kst(*NOV, 12, 0), 10, 3)
    on_time = after(a, 30, leg("9401", "seoul_trunk", 0, 10, 3))
    late = leg("9401", "seoul_trunk", a.alight_t + 30 * MIN + 1, 10, 3)
    assert len(group_journeys([a, on_time], RULES)) == 1
    assert len(group_journeys([a, late], RULES)) == 2
    assert fares([a, late]) == [1650, 1500]


def test_night_window_is_60_min() -> None:
    night = leg("7", "gyeonggi_city", kst(*NOV, 21, 30), 20, 3)  # alights 21:50
    next_night = after(night, 55, leg("9401", "seoul_trunk", 0, 10, 3))
    day = leg("7", "gyeonggi_city", kst(*NOV, 12, 0), 20, 3)
    next_day = after(day, 55, leg("9401", "seoul_trunk", 0, 10, 3))
    assert fares([night, next_night]) == [1650]
    assert fares([day, next_day]) == [1650, 1500]
    exactly = after(night, 60, leg("9401", "seoul_trunk", 0, 10, 3))
    too_late = leg("9401", "seoul_trunk", night.alight_t + 60 * MIN + 1, 10, 3)
    assert len(group_journeys([night, exactly], RULES)) == 1
    assert len(group_journeys([night, too_late], RULES)) == 2


@pytest.mark.parametrize(
    ("alight", "night"),
    [
        ((20, 59, 59), False),
        ((21, 0, 0), True),
        ((0, 30, 0), True),
        ((6, 59, 59), True),
        ((7, 0, 0), False),
    ],
)
def test_night_period_edges(alight: tuple[int, int, int], night: bool) -> None:
    hour, minute, second = alight
    alight_t = kst(*NOV, hour, minute, second=second)
    first = FareLeg("7", "gyeonggi_city", alight_t - 600, alight_t, 3000)
    then = leg("9401", "seoul_trunk", alight_t + 45 * MIN, 10, 3)
    assert (len(group_journeys([first, then], RULES)) == 1) is night


def test_journey_spanning_2025_10_25_uses_the_rules_of_its_first_boarding() -> None:
    city = leg("7", "gyeonggi_city", kst(2025, 10, 24, 23, 40), 15, 5)
    g = after(city, 15, leg("G6000", "gyeonggi_wide_area", 0, 40, 20))  # boards 00:10 on 10-25
    quote = ENGINE.price([city, g])
    assert quote.ruleset_id == "seoul-2023-08-12+gyeonggi-2019-09-28"
    assert quote.fare_krw == 2800
    # The same G6000 ride as a journey of its own is priced under the new table.
    assert fares([g]) == [3200]
    assert ENGINE.price([g]).ruleset_id == "seoul-2023-08-12+gyeonggi-2025-10-25"


def test_old_table_figures() -> None:
    day = (2024, 5, 14)
    g = leg("G6000", "gyeonggi_wide_area", kst(*day, 8, 0), 60, 42)
    assert fares([g]) == [2800 + 300]
    assert fares([g], "youth") == [1960 + 240]
    assert fares([g], "child") == [1400 + 150]
    assert fares([leg("7", "gyeonggi_city", kst(*day, 8, 0), 20, 3)]) == [1450]
    assert fares([leg("3000", "gyeonggi_seated", kst(*day, 8, 0), 20, 3)]) == [2450]
    assert fares([leg("8000", "gyeonggi_circular", kst(*day, 8, 0), 20, 3)]) == [3050]


def test_explain_lines() -> None:
    trunk = leg("9401", "seoul_trunk", kst(*NOV, 8, 0), 15, 6)
    g = after(trunk, 12, leg("G6000", "gyeonggi_wide_area", 0, 40, 25))
    lines = ENGINE.price([trunk, g]).explain
    assert lines[0].startswith("rule set seoul-2023-08-12+gyeonggi-2025-10-25 (in force from")
    assert "first boarding at 2025-11-03 08:00:00" in lines[0]
    assert any(line.startswith("leg 1: route 9401") and "1,500 KRW" in line for line in lines)
    assert any(line.startswith("leg 2: route G6000") and "3,200 KRW" in line for line in lines)
    assert any("transfer 1: boarded 12 min 00 s after" in line for line in lines)
    assert "highest base fare: 3,200 KRW (gyeonggi_wide_area, leg 2)" in lines
    assert any(
        line.startswith("base distance: 30 km, because a gyeonggi_wide_area") for line in lines
    )
    assert "total distance: 31.000 km (31,000 m)" in lines
    assert any("1 started unit(s) of 5 km x 100 KRW" in line for line in lines)
    assert lines[-1] == "total: 3,200 + 100 = 3,300 KRW"


def test_engine_helpers() -> None:
    assert ENGINE.rules is RULES
    assert group_journeys([], RULES) == []
    assert ENGINE.price_all([]) == []


def test_price_sorts_legs_and_rejects_empty() -> None:
    a = leg("7", "gyeonggi_city", kst(*NOV, 8, 0), 10, 3)
    b = after(a, 5, leg("9401", "seoul_trunk", 0, 10, 3))
    assert ENGINE.price([b, a]).legs == (a, b)
    with pytest.raises(FareInputError):
        ENGINE.price([])


# ------------------------------------------------------------------ golden: period adjustments


def with_adjustments(**changes: object) -> FareRules:
    return dataclasses.replace(RULES, **changes)  # type: ignore[arg-type]


def test_adjustments_are_off_by_default() -> None:
    charges = [Charge(f"c{i}", "r1", kst(*NOV, 8, i), 3500) for i in range(40)]
    assert period_adjustments(charges, RULES) == []


def test_daily_cap() -> None:
    rules = with_adjustments(
        daily_cap=DailyCap(
            enabled=True,
            day_start=dt.time(4, 30),
            amount_krw=MappingProxyType({"adult": 5000}),
        )
    )
    charges = [
        Charge("a", "r1", kst(*NOV, 8, 0), 1650),
        Charge("b", "r1", kst(*NOV, 12, 0), 1650),
        Charge("c", "r1", kst(*NOV, 18, 0), 1650),
        # 02:00 the next morning is still the travel day of 2025-11-03.
        Charge("d", "r1", kst(2025, 11, 4, 2, 0), 1650),
        # 04:30 starts the next travel day.
        Charge("e", "r1", kst(2025, 11, 4, 4, 30), 1650),
        Charge("y", "r1", kst(*NOV, 9, 0), 900, category="youth"),  # youth: no cap set
        Charge("z", "r2", kst(*NOV, 9, 0), 3500),
    ]
    adjustments = period_adjustments(charges, rules)
    assert adjustments == [
        Adjustment(
            kind="daily_cap",
            rider_id="r1",
            category="adult",
            period="2025-11-03",
            amount_krw=-1600,
            paid_krw=6600,
            limit_krw=5000,
            charge_ids=("a", "b", "c", "d"),
            reason=adjustments[0].reason,
        )
    ]
    assert "credit 1,600 KRW" in adjustments[0].reason


def test_monthly_refund_above_62000() -> None:
    rules = with_adjustments(
        monthly_refund=RULES.monthly_refund.__class__(
            enabled=True, threshold_krw=RULES.monthly_refund.threshold_krw
        )
    )
    # 40 journeys of 1,650 KRW in November 2025 = 66,000 KRW; one in December.
    charges = [
        Charge(f"n{i}", "r1", kst(2025, 11, 1 + i // 2, 8 + 10 * (i % 2), 0), 1650)
        for i in range(40)
    ]
    charges.append(Charge("d1", "r1", kst(2025, 12, 1, 8, 0), 1650))
    [refund] = period_adjustments(charges, rules)
    assert (refund.kind, refund.period, refund.amount_krw) == ("monthly_refund", "2025-11", -4000)
    assert (refund.paid_krw, refund.limit_krw, len(refund.charge_ids)) == (66000, 62000, 40)


def test_monthly_refund_counts_daily_cap_credits() -> None:
    rules = with_adjustments(
        daily_cap=DailyCap(enabled=True, amount_krw=MappingProxyType({"adult": 6000})),
        monthly_refund=MonthlyRefund(
            enabled=True, threshold_krw=MappingProxyType({"adult": 62000})
        ),
    )
    # 20 days, 4 x 1,650 = 6,600 KRW a day: 600 credited a day, 6,000 paid a day.
    charges = [
        Charge(f"{d}-{k}", "r1", kst(2025, 11, d, 7 + 3 * k, 0), 1650)
        for d in range(1, 21)
        for k in range(4)
    ]
    adjustments = period_adjustments(charges, rules)
    daily = [a for a in adjustments if a.kind == "daily_cap"]
    monthly = [a for a in adjustments if a.kind == "monthly_refund"]
    assert len(daily) == 20
    assert all(a.amount_krw == -600 for a in daily)
    # 132,000 gross - 12,000 daily credits = 120,000 paid; refund 58,000 above 62,000.
    assert [(m.paid_krw, m.amount_krw) for m in monthly] == [(120000, -58000)]
    assert sum(c.fare_krw for c in charges) + sum(a.amount_krw for a in adjustments) == 62000


def test_period_adjustments_reject_duplicate_charges() -> None:
    c = Charge("same", "r1", kst(*NOV, 8, 0), 1650)
    with pytest.raises(FareInputError, match="duplicate"):
        period_adjustments([c, c], RULES)


def test_charge_from_quote() -> None:
    quote = ENGINE.price([leg("7", "gyeonggi_city", kst(*NOV, 8, 0), 10, 3)], "youth")
    charge = Charge.from_quote(quote, charge_id="j1", rider_id="r1")
    assert (charge.t, charge.fare_krw, charge.category) == (kst(*NOV, 8, 0), 1160, "youth")


# ------------------------------------------------------------------ rules: loading, errors


def test_default_rules_file() -> None:
    assert DEFAULT_RULES_PATH.is_file()
    assert RULES.timezone == "Asia/Seoul"
    assert RULES.default_network == "gyeonggi_city"
    assert [r.effective_from for r in RULES.rulesets] == [
        dt.datetime(2023, 8, 12),
        dt.datetime(2025, 10, 25),
    ]
    assert not RULES.daily_cap.enabled
    assert not RULES.monthly_refund.enabled
    assert RULES.monthly_refund.threshold_krw["adult"] == 62000


def test_timezone_override() -> None:
    rules = load_rules(timezone="Asia/Tokyo")  # same offset as Seoul
    assert rules.timezone == "Asia/Tokyo"
    utc = load_rules(timezone="UTC")
    # 2025-10-25 03:00 KST is 2025-10-24 18:00 UTC: still the old set in UTC.
    assert utc.in_force(kst(2025, 10, 25, 3, 0)).effective_from == dt.datetime(2023, 8, 12)
    with pytest.raises(FareRulesValidationError, match="timezone"):
        load_rules(timezone="Mars/Olympus")


def test_no_rules_in_force_before_the_first_set() -> None:
    with pytest.raises(NoRulesInForceError) as info:
        ENGINE.price([leg("7", "gyeonggi_city", kst(2023, 8, 11, 23, 59), 10, 3)])
    assert info.value.earliest == dt.datetime(2023, 8, 12)


def test_unknown_category() -> None:
    with pytest.raises(UnknownCategoryError, match="senior"):
        ENGINE.price([leg("7", "gyeonggi_city", kst(*NOV, 8, 0), 10, 3)], "senior")


def test_network_map() -> None:
    mapping = RULES.network_map({"G6000": "gyeonggi_wide_area", "9401": "seoul_trunk"})
    assert mapping.network_for("G6000") == "gyeonggi_wide_area"
    assert mapping.network_for("no-network") == "gyeonggi_city"
    other = RULES.network_map({}, default_network="seoul_trunk")
    assert other.network_for("x") == "seoul_trunk"
    with pytest.raises(UnknownNetworkError) as info:
        RULES.network_map({"M1": "gyeonggi_wide_area", "X9": "incheon_trunk"})
    assert info.value.route_id == "X9"
    assert info.value.network_id == "incheon_trunk"
    assert "route 'X9' has network_id 'incheon_trunk'" in str(info.value)
    with pytest.raises(UnknownNetworkError):
        RULES.network_map({}, default_network="nowhere")


def test_unknown_network_in_a_leg() -> None:
    with pytest.raises(UnknownNetworkError, match="incheon_trunk"):
        ENGINE.price([leg("X9", "incheon_trunk", kst(*NOV, 8, 0), 10, 3)])


def test_errors_are_config_errors_and_value_errors() -> None:
    assert issubclass(FareRulesError, ConfigError)
    assert issubclass(FareRulesError, ValueError)
    assert issubclass(FareRulesValidationError, FareRulesError)
    assert issubclass(FareInputError, ValueError)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


MINIMAL = """\
format = "busbell-fare-rules/1"
timezone = "Asia/Seoul"
default_network = "city"

[[ruleset]]
id = "only"
effective_from = 2020-01-01T05:00:00
categories = ["adult"]
transfer = { window_min = 30, night_window_min = 60, night_start = "21:00", night_end = "07:00", \
max_transfers = 4 }
distance = { unit_km = 5, surcharge_krw = { adult = 100 }, cap_krw = { adult = 700 } }
networks.city = { base_distance_km = 10, fare_krw = { adult = 1000 } }
"""


def test_minimal_rules_file_and_datetime_effective_from(tmp_path: Path) -> None:
    rules = load_rules(write(tmp_path, MINIMAL))
    assert rules.rulesets[0].effective_from == dt.datetime(2020, 1, 1, 5, 0)
    assert rules.rulesets[0].networks["city"].name == "city"
    engine = FareEngine(rules)
    assert engine.price([leg("1", "city", kst(2024, 1, 1, 9, 0), 10, 11)]).fare_krw == 1100
    with pytest.raises(NoRulesInForceError):
        rules.in_force(kst(2020, 1, 1, 4, 59))


@pytest.mark.parametrize(
    ("old", "new", "key", "expected"),
    [
        (
            "fare_krw = { adult = 1000 }",
            'fare_krw = { adult = "1000" }',
            "ruleset[0].networks.city.fare_krw.adult",
            "int >= 0",
        ),
        (
            "fare_krw = { adult = 1000 }",
            "fare_krw = { adult = -5 }",
            "ruleset[0].networks.city.fare_krw.adult",
            "int >= 0",
        ),
        (
            "fare_krw = { adult = 1000 }",
            "fare_krw = { adult = 1000, youth = 600 }",
            "ruleset[0].networks.city.fare_krw.youth",
            "a category (adult)",
        ),
        (
            "surcharge_krw = { adult = 100 }",
            "surcharge_krw = { }",
            "ruleset[0].distance.surcharge_krw.adult",
            "int >= 0",
        ),
        (
            "window_min = 30",
            "window_min = true",
            "ruleset[0].transfer.window_min",
            "number >= 0 (minutes)",
        ),
        (
            'night_start = "21:00"',
            'night_start = "9pm"',
            "ruleset[0].transfer.night_start",
            'local time "HH:MM"',
        ),
        ("unit_km = 5", "unit_km = 0", "ruleset[0].distance.unit_km", "number > 0 (km)"),
        (
            "max_transfers = 4",
            "max_transfers = 4.5",
            "ruleset[0].transfer.max_transfers",
            "int >= 0",
        ),
        (
            "effective_from = 2020-01-01T05:00:00",
            'effective_from = "2020-01-01"',
            "ruleset[0].effective_from",
            "TOML local date (YYYY-MM-DD) or date-time",
        ),
        (
            'default_network = "city"',
            'default_network = "village"',
            "default_network",
            "a network every rule set defines (ruleset[0] does not)",
        ),
        (
            'format = "busbell-fare-rules/1"',
            'format = "busbell-fare-rules/9"',
            "format",
            "'busbell-fare-rules/1'",
        ),
        ('id = "only"', 'id = "only"\nextra = 1', "ruleset[0].extra", "no such key"),
        (
            'categories = ["adult"]',
            "categories = []",
            "ruleset[0].categories",
            "non-empty array of unique strings",
        ),
        ("unit_km = 5", "unit_km = inf", "ruleset[0].distance.unit_km", "number > 0 (km)"),
        ("unit_km = 5", "unit_km = 0.0001", "ruleset[0].distance.unit_km", "number > 0 (km)"),
        ("unit_km = 5", 'unit_km = "5"', "ruleset[0].distance.unit_km", "number > 0 (km)"),
        (
            "window_min = 30",
            "window_min = -1",
            "ruleset[0].transfer.window_min",
            "number >= 0 (minutes)",
        ),
        (
            'night_end = "07:00"',
            "night_end = 7",
            "ruleset[0].transfer.night_end",
            'local time "HH:MM"',
        ),
        (
            'night_end = "07:00"',
            'night_end = "07:00+09:00"',
            "ruleset[0].transfer.night_end",
            'local time "HH:MM"',
        ),
        ("networks.city = {", "networks.other = {", "default_network", "a network every"),
        (
            "networks.city = { base_distance_km = 10, fare_krw = { adult = 1000 } }",
            "networks = {}",
            "ruleset[0].networks",
            "non-empty table of networks",
        ),
        ("distance = {", "distance_ = {", "ruleset[0].distance_", "no such key"),
        ('id = "only"', 'id = ""', "ruleset[0].id", "non-empty string"),
        (
            "base_distance_km = 10",
            "base_distance_km = 10, fare = 1",
            "ruleset[0].networks.city.fare",
            "no such key",
        ),
    ],
)
def test_validation_errors_name_key_and_expected(
    tmp_path: Path, old: str, new: str, key: str, expected: str
) -> None:
    assert old in MINIMAL
    with pytest.raises(FareRulesValidationError) as info:
        load_rules(write(tmp_path, MINIMAL.replace(old, new, 1)))
    assert info.value.key == key
    assert info.value.expected.startswith(expected)
    assert key in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_toml_time_and_offset_datetime_values(tmp_path: Path) -> None:
    text = (
        MINIMAL.replace('night_start = "21:00"', "night_start = 22:30:00")
        .replace('night_end = "07:00"', "night_end = 23:30:00")
        .replace("effective_from = 2020-01-01T05:00:00", "effective_from = 2020-01-01T05:00:00Z")
    )
    rules = load_rules(write(tmp_path, text))
    ruleset = rules.rulesets[0]
    assert ruleset.effective_from == dt.datetime(2020, 1, 1, 14, 0)  # 05:00 UTC in Seoul
    assert ruleset.transfer.is_night(dt.time(23, 0))
    assert not ruleset.transfer.is_night(dt.time(23, 30))
    assert not ruleset.transfer.is_night(dt.time(1, 0))
    data = tomllib.loads(text)
    data["ruleset"][0]["transfer"]["night_end"] = dt.time(23, 30, tzinfo=SEOUL)
    with pytest.raises(FareRulesValidationError, match="night_end"):
        parse_rules(data)


def test_missing_ruleset_array(tmp_path: Path) -> None:
    head = MINIMAL[: MINIMAL.index("[[ruleset]]")]
    with pytest.raises(FareRulesValidationError, match=r"ruleset: expected non-empty array"):
        load_rules(write(tmp_path, head))


def test_missing_keys_and_duplicates(tmp_path: Path) -> None:
    with pytest.raises(
        FareRulesValidationError, match="timezone: expected non-empty string, got missing"
    ):
        load_rules(write(tmp_path, MINIMAL.replace('timezone = "Asia/Seoul"\n', "")))
    doubled = MINIMAL + MINIMAL[MINIMAL.index("[[ruleset]]") :]
    with pytest.raises(FareRulesValidationError, match=r"ruleset\[1\]\.id"):
        load_rules(write(tmp_path, doubled))
    same_date = doubled.replace('id = "only"', 'id = "again"').replace(
        'id = "again"', 'id = "only"', 1
    )
    with pytest.raises(FareRulesValidationError, match="effective_from"):
        load_rules(write(tmp_path, same_date))


def test_adjustment_tables_validated(tmp_path: Path) -> None:
    text = MINIMAL + '\n[daily_cap]\nenabled = true\nday_start = "04:00"\n'
    with pytest.raises(FareRulesValidationError, match=r"daily_cap\.amount_krw"):
        load_rules(write(tmp_path, text))
    ok = load_rules(write(tmp_path, text + "amount_krw = { adult = 3000 }\n"))
    assert ok.daily_cap == DailyCap(True, dt.time(4, 0), MappingProxyType({"adult": 3000}))
    off = load_rules(write(tmp_path, MINIMAL + "\n[monthly_refund]\nenabled = false\n"))
    assert off.monthly_refund == MonthlyRefund()
    with pytest.raises(FareRulesValidationError, match=r"monthly_refund\.enabled: expected bool"):
        load_rules(write(tmp_path, MINIMAL + '\n[monthly_refund]\nenabled = "yes"\n'))


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(FareRulesError, match="cannot read"):
        load_rules(tmp_path / "absent.toml")
    with pytest.raises(FareRulesError, match="not valid TOML"):
        load_rules(write(tmp_path, "format = "))
    with pytest.raises(FareRulesValidationError, match="<root>: expected table"):
        parse_rules([])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("alight_t", {"board_t": 10.0, "alight_t": 9.0}),
        ("distance_m", {"distance_m": -1.0}),
        ("board_t", {"board_t": float("nan")}),
        ("distance_m", {"distance_m": "5"}),
    ],
)
def test_invalid_legs(field: str, kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {
        "route_id": "7",
        "network_id": "gyeonggi_city",
        "board_t": 0.0,
        "alight_t": 10.0,
        "distance_m": 1.0,
    }
    with pytest.raises(FareInputError) as info:
        FareLeg(**(base | kwargs))  # type: ignore[arg-type]
    assert info.value.field == field


def test_invalid_charges() -> None:
    with pytest.raises(FareInputError):
        Charge("c", "r", 0.0, -1)
    with pytest.raises(FareInputError):
        Charge("c", "r", float("inf"), 1)


# ------------------------------------------------------------------ properties

NETWORKS = sorted(RULES.rulesets[-1].networks)
ROUTES = ["7", "9401", "G6000", "3000", "0017", "M7106"]
START = kst(2025, 10, 25, 0, 0)


@st.composite
def rider_legs(draw: st.DrawFn) -> list[FareLeg]:
    """A rider's day: legs one after another, with random gaps, routes and classes."""
    t = START + draw(st.floats(0, 40 * 86400))
    legs: list[FareLeg] = []
    for _ in range(draw(st.integers(1, 12))):
        t += draw(st.floats(0, 5400))
        ride = draw(st.floats(0, 7200))
        legs.append(
            FareLeg(
                route_id=draw(st.sampled_from(ROUTES)),
                network_id=draw(st.sampled_from(NETWORKS)),
                board_t=t,
                alight_t=t + ride,
                distance_m=draw(st.floats(0, 80_000)),
            )
        )
        t += ride
    return legs


@given(rider_legs(), st.sampled_from(["adult", "youth", "child"]))
@settings(max_examples=200, deadline=None)
def test_fare_between_highest_base_and_base_plus_cap(legs: list[FareLeg], category: str) -> None:
    for journey in group_journeys(legs, RULES):
        quote = ENGINE.price(journey, category)
        ruleset = RULES.in_force(journey[0].board_t)
        highest = max(ruleset.networks[leg.network_id].fare_krw[category] for leg in journey)
        assert highest <= quote.fare_krw <= highest + ruleset.distance.cap_krw[category]
        assert quote.fare_krw == quote.base_fare_krw + quote.surcharge_krw


@given(rider_legs())
@settings(max_examples=200, deadline=None)
def test_grouping_partitions_the_legs(legs: list[FareLeg]) -> None:
    shuffled = list(reversed(legs))
    journeys = group_journeys(shuffled, RULES)
    flat = [leg for journey in journeys for leg in journey]
    assert sorted(flat, key=repr) == sorted(legs, key=repr)
    assert [leg.board_t for leg in flat] == sorted(leg.board_t for leg in legs)
    assert group_journeys(legs, RULES) == journeys  # input order does not matter
    for journey in journeys:
        assert 1 <= len(journey) <= 5
        for previous, current in itertools.pairwise(journey):
            assert previous.route_id != current.route_id
            assert current.board_t - previous.alight_t <= 3600


@given(
    rider_legs(),
    st.data(),
    st.floats(0, 50_000),
    st.sampled_from(["adult", "youth", "child"]),
)
@settings(max_examples=200, deadline=None)
def test_monotone_in_distance(
    legs: list[FareLeg], data: st.DataObject, extra: float, category: str
) -> None:
    journey = group_journeys(legs, RULES)[0]
    index = data.draw(st.integers(0, len(journey) - 1))
    longer = list(journey)
    longer[index] = dataclasses.replace(
        journey[index], distance_m=journey[index].distance_m + extra
    )
    assert ENGINE.price(longer, category).fare_krw >= ENGINE.price(journey, category).fare_krw


@given(rider_legs())
@settings(max_examples=100, deadline=None)
def test_price_ignores_leg_order(legs: list[FareLeg]) -> None:
    journey = group_journeys(legs, RULES)[0]
    assert ENGINE.price(journey[::-1]) == ENGINE.price(journey)


@pytest.mark.parametrize(
    "timezone", ["Asia/Seoul", "UTC", "America/New_York", "Pacific/Kiritimati"]
)
def test_rule_set_in_force_near_a_change_is_read_in_local_time(timezone: str) -> None:
    """The set in force is found without a time zone lookup far from a change; near one
    (within a day, whatever the offset) the local wall clock decides, as it always did."""
    rules = load_rules(timezone=timezone)
    tz = ZoneInfo(timezone)
    for rs in rules.rulesets:
        change = rs.effective_from.replace(tzinfo=tz).timestamp()
        for dt_s in (-3 * 86400, -86401, -86400, -3600, -1, 0, 1, 3600, 86400, 86401, 9e6):
            t = change + dt_s
            when = dt.datetime.fromtimestamp(t, tz).replace(tzinfo=None)
            expected = [r for r in rules.rulesets if r.effective_from <= when]
            if not expected:
                with pytest.raises(NoRulesInForceError):
                    rules.in_force(t)
            else:
                assert rules.in_force(t) is expected[-1], (timezone, rs.ruleset_id, dt_s)


def test_explain_is_written_from_the_quote() -> None:
    """The explanation is made when read, from the quote: the same lines every time, and
    quotes equal whether or not anyone read them."""
    legs = [
        leg("7", "gyeonggi_city", kst(2025, 11, 3, 8, 0), 20, 6),
        leg("G6000", "gyeonggi_wide_area", kst(2025, 11, 3, 8, 20), 25, 30),
    ]
    a, b = ENGINE.price(legs), ENGINE.price(list(reversed(legs)))
    assert a.explain == b.explain
    assert a == b
    assert a.explain[-1] == f"total: {a.base_fare_krw:,} + {a.surcharge_krw:,} = {a.fare_krw:,} KRW"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.4, "0 s"),
        (45, "45 s"),
        (59.6, "1 min 00 s"),
        (725.4, "12 min 05 s"),
        (-90, "-1 min 30 s"),
        (-30, "-30 s"),
    ],
)
def test_durations_read_the_same_in_fare_explanations_and_reports(
    seconds: float, text: str
) -> None:
    assert duration_text(seconds) == text
