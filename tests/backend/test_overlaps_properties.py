"""Properties of the overlap rule (``backend._overlaps.overlap_winner``) on random leg pairs.

Two legs of one rider on two buses overlap in time: at most one was ridden. The rule
picks the one heard clearly stronger, or neither (both held). Random worlds through the
whole journey builder rarely reach its riders'-level clause (one world in thousands), so
these feed the rule itself with pairs drawn around its thresholds.
"""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from backend._journeys import JourneyPolicy
from backend._legs import Leg
from backend._overlaps import overlap_winner
from tests.factories.properties import examples

_STOPS = st.sampled_from(["S1", "S2", "S3", "S4", None])
_POLICY = JourneyPolicy()
_ABSOLUTE_ONLY = dataclasses.replace(_POLICY, overlap_loser_under_riders_db=None)


# (strategies built once: hypothesis validates each new strategy object, which cost more
# than the drawing when these were built inside the composites, once per example)
# any level, and often the band where a rider through another bus's windows and one
# aboard meet (around the rule's -65 dBm ceiling)
_RSSI = st.floats(-100.0, -30.0) | st.floats(-70.0, -45.0)
_ADVERTS = st.integers(min_value=0, max_value=20_000)  # (0: valid on the wire)
# how far below the riders its bus carried the bus heard it (riders_lvl - rssi_med)
_UNDER = st.none() | st.floats(-15.0, 45.0) | st.floats(5.0, 25.0)
_BOARD = st.floats(min_value=0.0, max_value=600.0)
_RIDE = st.floats(min_value=1.0, max_value=1800.0)
# the other bus's ends near the first's (within and beyond the rule's 60-s cover slack)
_NEAR = st.floats(min_value=-200.0, max_value=200.0)
_WITHIN = st.floats(min_value=0.0, max_value=1.0)  # (a share of the first leg)


def _leg(draw: st.DrawFn, bus: str, board_t: float, alight_t: float) -> Leg:
    rssi = draw(_RSSI)
    adverts = draw(_ADVERTS)
    under = draw(_UNDER)
    return Leg(
        rider_id="r1",
        bus_id=bus,
        route_id=bus,
        trip_id=None,
        board_t=board_t,
        board_stop_id=draw(_STOPS),
        alight_t=alight_t,
        alight_stop_id=draw(_STOPS),
        distance_m=1000.0,
        distance_source="events",
        network_id="seoul_trunk",
        event_ids=(f"{bus}-e",),
        heard=((board_t, alight_t, rssi),),
        counted=((board_t, alight_t, adverts),),
        under=() if under is None else ((board_t, alight_t, under),),
    )


@st.composite
def _overlapping(draw: st.DrawFn) -> tuple[Leg, Leg]:
    board_a = draw(_BOARD)
    alight_a = board_a + draw(_RIDE)
    # the other bus's ends near the first's or anywhere, as long as the two overlap
    near = draw(st.booleans())
    board_b = board_a + (draw(_NEAR) if near else draw(_WITHIN) * (alight_a - board_a))
    board_b = min(board_b, alight_a - 0.5)
    alight_b = max(alight_a + draw(_NEAR), board_b + 0.5)
    return _leg(draw, "bus-a", board_a, alight_a), _leg(draw, "bus-b", board_b, alight_b)


def _strengths(a: Leg, b: Leg) -> tuple[float, float]:
    start, end = max(a.board_t, b.board_t), min(a.alight_t, b.alight_t)
    sa, sb = a.strength(start, end), b.strength(start, end)
    assert sa is not None
    assert sb is not None
    return sa, sb


@settings(max_examples=examples(600), deadline=None)
@given(_overlapping())
def test_the_winner_does_not_depend_on_the_order_and_is_heard_clearly_better(
    pair: tuple[Leg, Leg],
) -> None:
    a, b = pair
    won = overlap_winner(a, b, _POLICY)
    assert won is overlap_winner(b, a, _POLICY)
    if won is not None:
        lost = b if won is a else a
        s_won, s_lost = _strengths(won, lost)
        rate_margin = _POLICY.overlap_rate_margin_db
        alone = _POLICY.overlap_rate_alone_ratio
        assert rate_margin is not None
        assert alone is not None
        # heard clearly stronger, or its bus decoded far more of the token's adverts and
        # it was heard at most the rate margin weaker
        span = max(a.board_t, b.board_t), min(a.alight_t, b.alight_t)
        r_won, r_lost = won.advert_rate(*span), lost.advert_rate(*span)
        assert s_won - s_lost >= rate_margin or (
            s_won - s_lost >= -rate_margin
            and r_won is not None
            and r_lost is not None
            and r_won >= alone * r_lost
        )


@settings(max_examples=examples(2000), deadline=None)
@given(_overlapping())
def test_the_riders_level_clause_only_decides_pairs_the_absolute_ceiling_held(
    pair: tuple[Leg, Leg],
) -> None:
    a, b = pair
    with_rule = overlap_winner(a, b, _POLICY)
    without = overlap_winner(a, b, _ABSOLUTE_ONLY)
    if without is not None:
        assert with_rule is without  # it never undoes or turns a decision
    elif with_rule is not None:
        # it decided a pair held only because the loser sounded like a rider aboard, or
        # because the loser went on beyond the winner's ride (at another stop), and only
        # on the loser's bus hearing it well below the riders it carried
        won = with_rule
        lost = b if won is a else a
        _, s_lost = _strengths(won, lost)
        ceiling = _POLICY.overlap_loser_max_dbm
        under = _POLICY.overlap_loser_under_riders_db
        cover = _POLICY.overlap_cover_s
        assert ceiling is not None
        assert under is not None
        assert lost.under
        # well below (or, beside a bus that heard it as one of its riders, at least half
        # that and that much further below its riders than the winner's bus below its own:
        # _rider_of_one)
        assert lost.under[0][2] >= under or (
            won.under
            and lost.under[0][2] >= under / 2.0
            and won.under[0][2] >= -under
            and lost.under[0][2] - won.under[0][2] >= under
        )
        beyond = (
            won.board_t - cover > lost.board_t
            and (won.board_stop_id is None or won.board_stop_id != lost.board_stop_id)
        ) or (
            lost.alight_t > won.alight_t + cover
            and (won.alight_stop_id is None or won.alight_stop_id != lost.alight_stop_id)
        )
        assert s_lost > ceiling or beyond
        if beyond:
            # and that much further below than the winner's bus heard it below its own
            assert won.under
            assert lost.under[0][2] - won.under[0][2] >= under


@settings(max_examples=examples(300), deadline=None)
@given(_overlapping())
def test_without_riders_levels_in_the_evidence_the_clause_changes_nothing(
    pair: tuple[Leg, Leg],
) -> None:
    a, b = (dataclasses.replace(leg, under=()) for leg in pair)
    assert overlap_winner(a, b, _POLICY) is overlap_winner(a, b, _ABSOLUTE_ONLY)


@settings(max_examples=examples(600), deadline=None)
@given(_overlapping())
def test_a_winner_under_the_margin_without_the_rates_carried_the_rider_round_the_hop(
    pair: tuple[Leg, Leg],
) -> None:
    a, b = pair
    won = overlap_winner(a, b, _POLICY)
    if won is None:
        return
    lost = b if won is a else a
    s_won, s_lost = _strengths(won, lost)
    span = max(a.board_t, b.board_t), min(a.alight_t, b.alight_t)
    r_won, r_lost = won.advert_rate(*span), lost.advert_rate(*span)
    margin, ratio = _POLICY.overlap_margin_db, _POLICY.overlap_rate_ratio
    alone, cover = _POLICY.overlap_rate_alone_ratio, _POLICY.overlap_cover_s
    assert margin is not None
    assert alone is not None
    by_rates = (
        r_won is not None and r_lost is not None and r_won > r_lost and r_won >= ratio * r_lost
    )
    if s_won - s_lost < margin and not by_rates:
        # 5 dB decided it: the loser is a hop the winner carried the rider round, a minute
        # and more on either side (the same trip would have to be caught again)
        assert won.board_t + cover <= lost.board_t
        assert lost.alight_t + cover <= won.alight_t
