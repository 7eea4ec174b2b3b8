"""Settling a rider's legs on different buses that overlap in time (sans-I/O).

The same rider on two buses at overlapping times cannot both be true. When one leg covers
the other in time (within ``overlap_cover_s``, or beyond it where the other leg's bus
heard the rider far under its riders, unlike the first: never carried), was heard at
least ``overlap_margin_db`` stronger over their common time (the edges' median RSSI,
weighted by time) -- or at least ``overlap_rate_margin_db`` stronger with its bus
decoding at least ``overlap_rate_ratio`` times as many of the token's adverts per second
over that time (both buses hear the same token's adverts: the one it rides hears it
better on both counts, whatever the token's power or advertising interval), or decoded
``overlap_rate_alone_ratio`` times as many while heard at most ``overlap_rate_margin_db``
weaker (near the scanners' floor a median RSSI is censored), or at least
``overlap_rate_margin_db`` stronger over a hop the weaker one made within its ride (a
minute or more before and after it: the rider would have caught its trip again) -- and
the weaker one sounds like a rider heard through the bus's windows (not above
``overlap_loser_max_dbm``, or at least ``overlap_loser_under_riders_db`` below the riders
its own bus carried, or, the stronger one ``overlap_margin_db`` stronger and heard as one of
its bus's riders, that much further below its riders: :func:`_rider_of_one`), the rider was
on the stronger bus and the other drove alongside:
the weaker leg is dropped (``overlap_dropped``, never charged) and the stronger one
charged (``overlap_resolved``).
This also drops a short weak hop lying wholly within another bus's leg. Before these
rules, two buses that ran together to the stop where the rider changed are untangled:
:func:`changes_beside` (the later bus heard them beside from an earlier stop) and
:func:`changes_bunched` (the earlier bus heard them on, beside, past the change). A rider seen
alighting from one bus at the stop where the other bus was seen boarding them, later, is
a transfer when the legs overlap by at most ``change_overlap_s`` (the two buses stood at
that stop together, the later one holding for the change); a longer overlap is no
change a bus waits for (a cloned token boarding at the stop minutes before the rider got
there). Any other overlap longer than ``replay_overlap_s`` is a suspected replay: both
legs are marked and held, not charged automatically; so is a leg that only lost to a leg
that is itself held. Only a leg that is not itself dropped can drop another one. Of a
held pair that made one ride on two buses side by side (the same stops, the same times),
the leg whose bus decoded far more of the token's adverts is charged after all
(``overlap_preferred``, :func:`_same_ride`), the other still held; unless that leg is also
in a pair nothing settles with a leg held in the end (one held again because it lost only
to held legs: the pairs are judged again until no such leg is left).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from backend._legs import (
    FLAG_LOST,
    FLAG_OVERLAP_DROPPED,
    FLAG_OVERLAP_PREFERRED,
    FLAG_OVERLAP_RESOLVED,
    FLAG_PARTIAL,
    FLAG_REVIEW,
    FLAG_SUSPECTED_REPLAY,
    JourneyPolicy,
    Leg,
)

__all__ = ["changes_beside", "changes_bunched", "overlap_winner", "settle_overlaps"]


def settle_overlaps(legs: Sequence[Leg], policy: JourneyPolicy) -> list[Leg]:
    """Settle legs of one rider on different buses that overlap in time.

    Two legs conflict when they overlap by more than ``replay_overlap_s``, or when one
    lies wholly within the other (however short). A conflict is settled in favour of
    one leg when :func:`overlap_winner` finds one; only a leg that is not dropped
    itself can drop another (a leg that loses to a stronger one drops nobody), and
    a leg dropped only by legs that end up held is held with them. The dropped leg is
    flagged ``overlap_dropped``, its winner ``overlap_resolved``. Legs in a conflict
    longer than ``replay_overlap_s`` that is not settled, neither of them dropped, are
    flagged ``suspected_replay`` and held for review; a short, unsettled containment
    is not a conflict (detection latency at a transfer), nor is an unsettled change of
    buses at one stop overlapping by at most ``change_overlap_s`` (:func:`_changed_at`:
    both buses standing there).
    """
    if len(legs) < 2 or len({leg.bus_id for leg in legs}) < 2:
        return list(legs)  # legs on one bus never conflict (most riders, most days)
    tol = policy.replay_overlap_s
    wins: list[tuple[int, int]] = []  # (winner, loser)
    unsettled: list[tuple[int, int]] = []
    order = sorted(range(len(legs)), key=lambda k: legs[k].sort_key())
    for a_pos, a in enumerate(order):
        la = legs[a]
        for b in order[a_pos + 1 :]:
            lb = legs[b]
            if lb.board_t >= la.alight_t:
                break
            if lb.bus_id == la.bus_id:
                continue
            overlap = min(la.alight_t, lb.alight_t) - max(la.board_t, lb.board_t)
            long = overlap > tol
            if not (long or _within(la, lb) or _within(lb, la)):
                continue  # a transfer
            winner = overlap_winner(la, lb, policy)
            win, lose = (a, b) if winner is la else (b, a)
            if winner is None:
                if long and not _changed_at(la, lb, policy.change_overlap_s):
                    unsettled.append((a, b))
            elif long or _within(legs[lose], legs[win]):
                wins.append((win, lose))
    dropped, dropped_by, cyclic = _settle_wins(wins)
    suspect: set[int] = set()
    for a, b in [*unsettled, *cyclic]:
        if a not in dropped and b not in dropped:
            suspect |= {a, b}
    held = [p for p in unsettled if suspect.issuperset(p)]
    while True:
        # (a leg that lost to another is never preferred, even when held again below)
        preferred = _preferred(legs, held, cyclic, policy) - dropped_by.keys()
        now_held = suspect - preferred
        now_dropped = set(dropped)
        for lose, winners in dropped_by.items():
            if winners <= now_held:
                now_dropped.discard(lose)
                now_held.add(lose)
        # a leg held now that it lost only to held legs may leave a preferred leg in a
        # held pair nothing settles: that leg is held too (judged again with the pair)
        more = [p for p in unsettled if (now_held | preferred).issuperset(p)]
        if len(more) == len(held):
            break
        held = more
    suspect, dropped = now_held, now_dropped
    resolved = {w for w, lose in wins if lose in dropped and w not in dropped}

    def settled(k: int, leg: Leg) -> Leg:
        if k in dropped:
            return leg.with_flags(FLAG_OVERLAP_DROPPED)
        if k in suspect:
            return leg.with_flags(FLAG_SUSPECTED_REPLAY, FLAG_REVIEW)
        if k in resolved:
            return leg.with_flags(FLAG_OVERLAP_RESOLVED)
        if k in preferred:
            return leg.with_flags(FLAG_OVERLAP_PREFERRED)
        return leg

    return [settled(k, leg) for k, leg in enumerate(legs)]


def _preferred(
    legs: Sequence[Leg],
    held: Sequence[tuple[int, int]],
    cyclic: Sequence[tuple[int, int]],
    policy: JourneyPolicy,
) -> set[int]:
    """Legs of held pairs to charge after all: one ride made on two buses side by side.

    ``held`` are the unsettled pairs whose legs are both about to be held as a suspected
    replay, ``cyclic`` the settlements left in a cycle (held too). A leg is charged
    (flagged ``overlap_preferred``; its partner stays held, ``suspected_replay`` +
    ``review``, for a person to look at) when :func:`_same_ride` prefers it in every
    held pair it is in, and it is in no cycle.
    """
    if not held:
        return set()
    won: set[int] = set()
    lost = {k for pair in cyclic for k in pair}
    for a, b in held:
        pref = _same_ride(legs[a], legs[b], policy)
        if pref is None:
            lost |= {a, b}
        else:
            win, lose = (a, b) if pref is legs[a] else (b, a)
            won.add(win)
            lost.add(lose)
    return won - lost


def _same_ride(a: Leg, b: Leg, policy: JourneyPolicy) -> Leg | None:
    """The leg of two that made one ride on two buses together that its bus heard far better.

    Two buses standing at one stop and running to the next side by side (routes sharing
    the road): a weak rider of one is heard by the other through both buses' windows
    from door to door (the edge's door-to-door rule, docs/classifier.md "Fifteenth pass"),
    and neither bus's median RSSI settles it (the far bus decodes only the token's
    strongest packets). Both legs boarded at one named stop and alighted at one named
    stop (neither ``lost`` nor ``partial``), each ending within ``overlap_cover_s`` of the
    other at both ends: the same ride, the same stops, the same distance. The one whose
    bus decoded at least ``overlap_rate_alone_ratio`` times as many of the token's
    adverts per second over their common time is preferred, however the medians
    compare. ``None`` otherwise (both held), and whenever overlaps are held
    (``overlap_margin_db`` ``None``) or settled by RSSI alone (``overlap_rate_margin_db``
    ``None``).

    A cloned token (docs/security.md, "Cloned and replayed tokens") is preferred only by
    riding a bus beside the rider's from the rider's boarding stop to their alighting
    stop, at the same times, decoded three times as often: the rider is then charged for
    those stops at the copy's route's fare, once, and their own leg is held for review.
    """
    ratio = policy.overlap_rate_alone_ratio
    cover = policy.overlap_cover_s
    if (
        ratio is None
        or policy.overlap_margin_db is None
        or policy.overlap_rate_margin_db is None
        or a.board_stop_id is None
        or a.board_stop_id != b.board_stop_id
        or a.alight_stop_id is None
        or a.alight_stop_id != b.alight_stop_id
        or abs(a.board_t - b.board_t) > cover
        or abs(a.alight_t - b.alight_t) > cover
        or any(f in leg.flags for leg in (a, b) for f in (FLAG_LOST, FLAG_PARTIAL))
    ):
        return None
    span = (max(a.board_t, b.board_t), min(a.alight_t, b.alight_t))
    if _rate_times(a, b, span, ratio):
        return a
    if _rate_times(b, a, span, ratio):
        return b
    return None


def overlap_winner(a: Leg, b: Leg, policy: JourneyPolicy) -> Leg | None:
    """The leg of two overlapping ones that the rider was on, if the evidence says.

    The winner must cover the other leg in time (``overlap_cover_s`` of slack at
    either end, or beyond it at a stop both legs share at that end or where the other
    leg's bus heard the rider as no rider of its own: :func:`_never_aboard`) and have
    been heard, over their common time, at least
    ``overlap_margin_db`` stronger, or at least ``overlap_rate_margin_db`` stronger
    with at least ``overlap_rate_ratio`` times the loser's rate of adverts decoded, or
    have decoded ``overlap_rate_alone_ratio`` times the loser's rate while heard at most
    ``overlap_rate_margin_db`` weaker, or be ``overlap_rate_margin_db`` stronger over a
    loser that is a hop within its ride (:func:`_carried_through`);
    the loser must not have been heard louder than ``overlap_loser_max_dbm`` unless its
    bus heard it at least ``overlap_loser_under_riders_db`` below its riders aboard, or
    the winner won by ``overlap_margin_db`` heard as one of its riders and the loser that
    much further under its own (:func:`_rider_of_one`). Otherwise ``None``.
    """
    got = _evidence(a, b, policy)
    if got is None:
        return None
    win, lose = got
    start, end = max(a.board_t, b.board_t), min(a.alight_t, b.alight_t)
    cover = policy.overlap_cover_s
    if (
        win.board_t - cover <= lose.board_t
        or _same_stop(win.board_stop_id, lose.board_stop_id)
        or _never_aboard(win, lose, (lose.board_t, win.board_t), (start, end), policy)
    ) and (
        lose.alight_t <= win.alight_t + cover
        or _same_stop(win.alight_stop_id, lose.alight_stop_id)
        or _never_aboard(win, lose, (win.alight_t, lose.alight_t), (start, end), policy)
    ):
        # beyond the slack only at a stop both legs share at that end: the other bus
        # reached the stop where the rider got off (or left the one where the rider got
        # on) minutes apart; it heard the rider standing there, which is no ride of its own;
        # or where the other bus heard the rider as far below its riders as through its
        # windows before, unlike the bus they rode: it never carried them
        return win
    return None


def _evidence(a: Leg, b: Leg, policy: JourneyPolicy) -> tuple[Leg, Leg] | None:
    """``(winner, loser)`` of two overlapping legs by how their buses heard the rider.

    Over their common time: the margins and advert rates of :func:`overlap_winner`, and
    the loser no louder than the ceiling (unless both measures agree or its bus heard it
    under its riders); whether the winner covers the loser in time is not asked.
    """
    margin = policy.overlap_margin_db
    if margin is None:
        return None
    start, end = max(a.board_t, b.board_t), min(a.alight_t, b.alight_t)
    sa, sb = a.strength(start, end), b.strength(start, end)
    if sa is None or sb is None:
        return None
    if sa < sb:
        a, b, sa, sb = b, a, sb, sa
    by_rate = _decoded_more(a, b, sa - sb, (start, end), policy)
    if (
        sa - sb >= margin
        or by_rate
        or _decoded_far_more(a, b, (start, end), policy)
        or _carried_through(a, b, sa - sb, policy)
    ):
        win, lose, weak = a, b, sb
    elif sa - sb <= (policy.overlap_rate_margin_db or 0.0) and _decoded_far_more(
        b, a, (start, end), policy
    ):
        # at the scanners' floor the weaker link's median is censored (only its strongest
        # packets are decoded), so the bus the rider is in may even read a little weaker
        win, lose, weak = b, a, sa
    else:
        return None
    ceiling = policy.overlap_loser_max_dbm
    if (
        ceiling is not None
        and weak > ceiling
        and not (sa - sb >= margin and by_rate)
        and not _under_riders(lose, (start, end), policy)
        and not (sa - sb >= margin and _rider_of_one(win, lose, (start, end), policy))
    ):
        # heard at in-bus strength: the rider's own leg, made the weaker one by a relay
        # by the other bus's scanner? Unless the other bus also decoded the token's
        # adverts overlap_rate_ratio times as often: both measures of the one advert
        # train then agree, whatever the token's power (+3 dBm tokens behind 5-dB shells
        # are heard through the neighbour's windows at -57..-64 dBm); or unless its bus
        # heard it well below the riders it carried: through its windows, at any power;
        # or unless the stronger bus heard it as one of its riders and the other that much
        # further under its own (one token is heard about as far under the riders of any
        # bus it rides: the other did not carry it)
        return None
    return win, lose


def _rider_of_one(win: Leg, lose: Leg, span: tuple[float, float], policy: JourneyPolicy) -> bool:
    """Whether ``win``'s bus heard the rider as one of its riders over ``span``, ``lose``'s not.

    ``win``'s bus heard them at most ``overlap_loser_under_riders_db`` above the riders
    it carried (a relay at its scanner would be louder than any of them), ``lose``'s bus
    at least that much further below its riders than ``win``'s below its own (the
    events' ``riders_lvl``), and at least half that margin below its own riders: a token
    heard at the level of a bus's riders may have ridden it whatever the other bus heard
    (a rider of ``lose``'s bus by ``win``'s window, heard louder than ``win``'s own
    riders, changing buses where ``lose``'s leg ends: the pair stays held, a change is
    placed there). One token is heard about as far under the riders of any bus it rides
    (its power, pocket or bag), so the bus that heard it that much further under did not
    carry it, however loud: +3 dBm tokens behind 5-dB shells are heard through a
    neighbour's windows louder than ``overlap_loser_max_dbm`` and less than
    ``overlap_loser_under_riders_db`` under its riders (issue 11, cell 11, unseen seed
    53, ``shared_stop_three_routes``, as the lead described it: 23 dB weaker, 9 dB under
    its riders, the rider's bus 2 dB over its own). ``False`` when the events do not
    say.
    """
    got = _unders(win, span, lose, span, policy)
    if got is None:
        return False
    under, won, lost = got
    return won >= -under and lost >= under / 2.0 and lost - won >= under


def _unders(
    win: Leg,
    won_span: tuple[float, float],
    lose: Leg,
    lost_span: tuple[float, float],
    policy: JourneyPolicy,
) -> tuple[float, float, float] | None:
    """``overlap_loser_under_riders_db`` and how far each bus heard the rider under its riders.

    ``win``'s bus over ``won_span``, ``lose``'s over ``lost_span`` (dB, positive: below);
    ``None`` when the rule is off or either event does not say.
    """
    under = policy.overlap_loser_under_riders_db
    if under is None:
        return None
    won = win.under_riders(*won_span)
    lost = lose.under_riders(*lost_span)
    if won is None or lost is None:
        return None
    return under, won, lost


def _never_aboard(
    win: Leg,
    lose: Leg,
    beyond: tuple[float, float],
    common: tuple[float, float],
    policy: JourneyPolicy,
) -> bool:
    """Whether ``lose``'s bus heard the rider, beyond ``win``'s ride, as no rider of its own.

    Over ``beyond`` (the part of ``lose`` outside ``win``'s time) its bus heard the rider
    at least ``overlap_loser_under_riders_db`` below the riders it carried, and that much
    further below them than ``win``'s bus heard the rider below its own riders over the
    ``common`` time. One token in one pocket or bag is heard about as far from the riders
    of any bus it rides (the level relative to the riders is the token's, not the
    bus's), so a rider who boarded ``lose``'s bus after ``win``'s ride ended would be heard
    there near ``win``'s figure; one heard that much further under is standing at the
    stop or walking off beside the bus. ``False`` when the events do not say.
    """
    got = _unders(win, common, lose, beyond, policy)
    if got is None:
        return False
    under, won, lost = got
    return lost >= under and lost - won >= under


def _carried_through(outer: Leg, inner: Leg, db: float, policy: JourneyPolicy) -> bool:
    """Whether ``inner`` is a hop on another bus within ``outer``'s ride, ``outer`` the stronger.

    ``outer`` began at least ``overlap_cover_s`` before ``inner`` and ended that long after
    it, and was heard at least ``overlap_rate_margin_db`` (not ``overlap_margin_db``)
    stronger over ``inner``'s time. For ``inner`` to be the ride, the rider would have left
    ``outer``'s bus and caught the same trip again after the hop, which no rider does (the
    rule that joins a rider's legs on one trip); the bus beside it for a stop or two is
    what heard them. The ceiling on how loud the loser may be still holds (a relay).
    """
    rate_db = policy.overlap_rate_margin_db
    cover = policy.overlap_cover_s
    return (
        rate_db is not None
        and db >= rate_db
        and outer.board_t + cover <= inner.board_t
        and inner.alight_t + cover <= outer.alight_t
    )


def _same_stop(a: str | None, b: str | None) -> bool:
    return a is not None and a == b


def _decoded_more(
    strong: Leg, weak: Leg, db: float, span: tuple[float, float], policy: JourneyPolicy
) -> bool:
    """Whether ``strong`` wins on the advert rate as well as the RSSI margin.

    It must be ``overlap_rate_margin_db`` stronger (``db``) and its bus must have decoded
    the token's adverts ``overlap_rate_ratio`` times as often as ``weak``'s over ``span``.
    """
    rate_db = policy.overlap_rate_margin_db
    if rate_db is None or db < rate_db:
        return False
    return _rate_times(strong, weak, span, policy.overlap_rate_ratio)


def _decoded_far_more(
    strong: Leg, weak: Leg, span: tuple[float, float], policy: JourneyPolicy
) -> bool:
    """Whether ``strong``'s bus decoded the token's adverts far more often than ``weak``'s.

    At least ``overlap_rate_alone_ratio`` times as many per second over ``span``: the
    advert rate alone, whatever the RSSI medians say (the caller bounds how much weaker
    ``strong`` may be heard).
    """
    ratio = policy.overlap_rate_alone_ratio
    if ratio is None or policy.overlap_rate_margin_db is None:
        return False
    return _rate_times(strong, weak, span, ratio)


def _rate_times(strong: Leg, weak: Leg, span: tuple[float, float], ratio: float) -> bool:
    """Whether ``strong``'s bus decoded at least ``ratio`` times ``weak``'s adverts per second.

    Over ``span``; both rates known, and ``strong``'s above ``weak``'s: two legs whose
    events both say ``n_adv`` 0 (valid on the wire) decoded nothing to compare, so
    neither wins on the rate (``0 >= ratio * 0`` would let the leg passed first win).
    """
    rs, rw = strong.advert_rate(*span), weak.advert_rate(*span)
    return rs is not None and rw is not None and rs > rw and rs >= ratio * rw


def _under_riders(weak: Leg, span: tuple[float, float], policy: JourneyPolicy) -> bool:
    """Whether ``weak``'s bus heard the rider well below the riders it carried over ``span``.

    At least ``overlap_loser_under_riders_db`` below the level at which that bus heard
    its riders aboard meanwhile (the events' ``riders_lvl``): a rider heard through its
    windows, whatever the token's power. ``False`` when the events do not say.
    """
    under = policy.overlap_loser_under_riders_db
    if under is None:
        return False
    db = weak.under_riders(*span)
    return db is not None and db >= under


def changes_beside(
    legs: Sequence[Leg],
    policy: JourneyPolicy,
    board_at: Callable[[Leg, str, float], Leg | None],
    together: Callable[[Leg, Leg], bool],
) -> list[Leg]:
    """Legs boarded where the rider changed to them from a bus that drove beside.

    Of two legs of one rider on two buses, the earlier (``first``) seen alighting (not
    ``lost``) at stop ``S``, the later (``beside``) begun after ``first`` (or before it,
    at ``first``'s own boarding stop: two buses standing there, the one whose doors opened
    first boards a rider waiting at the stop first, whichever bus they board; issue 11,
    unseen seed 51, ``transfer_bunched``) and before it ended, ending after it, at
    another stop than ``S``, overlapping it (from ``beside``'s boarding to ``first``'s
    alighting) by more than ``replay_overlap_s`` and at most ``beside_overlap_s``, with
    nothing settling the pair (:func:`overlap_winner`) but the rule for a rider heard
    walking off (:func:`_unsettled_or_on_past`), and the two buses together at
    ``beside``'s boarding stop (``together(first, beside)``: ``first``'s bus there, by
    its trip's distances, within :data:`backend._journeys._TOGETHER_S` of that boarding;
    a bus hears a rider through another bus's windows only beside it): when ``first``'s
    bus heard the rider the stronger over the common time by the evidence that settles
    overlaps (:func:`_evidence`), or ``beside``'s bus heard them far further under its riders than
    ``first``'s under its own (:func:`_heard_beside`: the level relative to the riders,
    where the RSSI margin falls short; tuning cell 1 seed 2, ``transfer_bunched``,
    r-00080: 6 dB weaker, 12 dB further under), or neither is the stronger by either
    measure (two buses bunched from that stop to ``S``, each hearing the rider through
    both buses' windows: a 5-dB shell, +3 dBm tokens, tuning cell 11 seeds 3-4,
    ``transfer_bunched``; 9c6112a), the rider rode ``first`` until ``S`` and ``beside``'s
    bus drove beside it until then; the rider changed to it at ``S``.
    ``board_at(beside, S, first.alight_t)`` gives the leg boarded there, or ``None`` when
    ``S`` is not a stop of its trip after its boarding stop with its alighting stop past
    the next one (then nothing changes: a bus beside may hear a rider who got off at ``S``
    on to its next stop). Unsettled, such a pair was held on both buses, the rider charged
    nothing (issue 11, the unseen seed 36 shape).

    What a copy of the token can make this charge (``docs/security.md``, "Cloned and
    replayed tokens"): a copy riding a bus that stood with the rider's at a stop, boarded
    there at most ``beside_overlap_s`` before the rider left their bus at ``S``, on a trip
    through ``S`` and two stops on, is indistinguishable from the rider changing to it at
    ``S``: the rider is charged that change. The radio cannot tell them apart (the same
    token on both buses, one leg each; the earlier leg ends at ``S`` either way). A copy
    on a bus that was not at that stop with the rider's, or that boarded it longer before
    the change, is held with the rider's leg (before this bound only the
    neither-the-stronger case asked for the buses together, with no bound on the time:
    a copy heard weakly, then loudly past ``S``, boarded anywhere on the road). The same
    charge, within the same bounds, for a copy that boarded the bus beside at the
    rider's own boarding stop before the rider boarded theirs, or that its bus heard far
    under its riders past ``S`` (a copy in a bag): before, the first was held and the
    second dropped, while the copy boarding seconds later, or held in the open, was
    charged so already.
    """
    if len(legs) < 2 or len({leg.bus_id for leg in legs}) < 2:
        return list(legs)
    out = list(legs)
    for first in legs:
        stop = first.alight_stop_id
        if stop is None or FLAG_LOST in first.flags:
            continue
        for k, beside in enumerate(legs):
            if (
                beside.bus_id == first.bus_id
                or not beside.board_t < first.alight_t < beside.alight_t
                or not (
                    first.board_t <= beside.board_t
                    or _same_stop(beside.board_stop_id, first.board_stop_id)
                )
                or not (
                    policy.replay_overlap_s
                    < first.alight_t - beside.board_t
                    <= policy.beside_overlap_s
                )
                or not _unsettled_or_on_past(first, beside, policy)
                or not together(first, beside)
            ):
                continue
            won = _evidence(first, beside, policy)
            span = (beside.board_t, first.alight_t)
            if (
                (won is not None and won[0] is first)
                or _heard_beside(beside, first, span, policy)
                or (won is None and not _heard_beside(first, beside, span, policy))
            ):
                moved = board_at(beside, stop, first.alight_t)
                if moved is not None:
                    out[k] = moved
    return out


def _unsettled_or_on_past(first: Leg, beside: Leg, policy: JourneyPolicy) -> bool:
    """Whether :func:`changes_beside` may place a change between the two legs.

    Nothing settles the pair (:func:`overlap_winner`), or ``first`` wins it while
    ``beside`` rides on past ``first``'s alighting beyond ``overlap_cover_s`` to another
    stop: ``first`` covers it there only because ``beside``'s bus heard the rider, after
    ``first`` let them off, far under its riders (:func:`_never_aboard`). That rule is
    for a rider heard walking off beside a bus at their stop; a bus hears nobody it does
    not carry on past a further stop (``board_at`` asks for two), and a rider in a bag
    or a pocket is heard as far under the riders of the bus they ride (docs/classifier.md,
    thirty-second pass: 26-35 dB). Dropping ``beside`` whole charged nothing for the ride
    the rider made on it from ``S`` (issue 11, unseen seed 51, ``transfer_two_buses``
    r-00049: the G6000 from BD003 beside the 17, dropped; the rider changed to it at BD005).
    """
    winner = overlap_winner(first, beside, policy)
    return winner is None or (
        winner is first
        and beside.alight_t > first.alight_t + policy.overlap_cover_s
        and not _same_stop(first.alight_stop_id, beside.alight_stop_id)
    )


def _heard_beside(
    beside: Leg,
    ride: Leg,
    span: tuple[float, float],
    policy: JourneyPolicy,
    ride_span: tuple[float, float] | None = None,
) -> bool:
    """Whether ``beside``'s bus heard the rider over ``span`` as through windows, ``ride``'s not.

    At least ``overlap_loser_under_riders_db`` below the riders ``beside``'s bus carried
    and that much further below them than ``ride``'s bus heard the rider below its own
    over ``ride_span`` (default ``span``; the events' ``riders_lvl``): one token is heard
    about as far under the riders of any bus it rides, at any power, so the bus that
    heard it that much further under did not carry it then. ``False`` when the events do
    not say (or ``overlap_loser_under_riders_db`` is ``None``).
    """
    under = policy.overlap_loser_under_riders_db
    if under is None:
        return False
    far = beside.under_riders(*span)
    near = ride.under_riders(*(ride_span or span))
    return far is not None and near is not None and far >= under and far - near >= under


def changes_bunched(
    legs: Sequence[Leg],
    policy: JourneyPolicy,
    split_at: Callable[[Leg, str], tuple[Leg, Leg] | None],
) -> tuple[list[Leg], list[Leg]]:
    """Legs cut where the rider changed to a bus bunched beside: ``(legs, tails dropped)``.

    Two buses halting together and running bunched to stop ``S``, where the later one
    waits for the change: the first bus's edge saw the rider alight at ``S`` but heard
    them on, through both buses' windows, on the bus beside (a rid rotating at the door
    starts a new segment there), so its leg was stitched on past ``S`` over the time the
    rider rode the other one, and the two legs overlapped as a suspected replay (issue
    11: unseen seeds 36 and 40, ``transfer_bunched``). Of two legs of one rider on two
    buses, ``first`` and ``later`` (boarded at a named stop ``S``, not ``partial``, during
    ``first``'s leg, alighting after it): ``split_at(first, S)`` gives ``first``'s
    segments up to its last alighting at ``S`` (``head``) and those after (``tail``), or
    ``None``. When ``first``'s bus heard the ``tail`` at least
    ``overlap_loser_under_riders_db`` below its riders, and that much further below them
    than it heard the ``head`` and than ``later``'s bus heard the rider over the tail's
    time (:func:`_heard_beside`, twice: the level relative to the riders is the token's,
    so the same bus hearing it that much further under after ``S`` no longer carried it),
    ``first`` ends at ``S`` (``head``) and the ``tail`` is returned flagged
    ``overlap_dropped`` (held, never charged; the caller keeps it out of the overlap
    rules). A cloned token on a bus that was never beside leaves the rider's own bus
    hearing its token as a rider after ``S``: nothing is cut, the overlap held.
    """
    if len(legs) < 2 or len({leg.bus_id for leg in legs}) < 2:
        return list(legs), []
    out = list(legs)
    tails: list[Leg] = []
    for k in range(len(out)):
        for later in legs:
            first = out[k]
            stop = later.board_stop_id
            if (
                stop is None
                or later.bus_id == first.bus_id
                or FLAG_PARTIAL in later.flags
                or not first.board_t < later.board_t < first.alight_t < later.alight_t
            ):
                continue
            got = split_at(first, stop)
            if got is None:
                continue
            head, tail = got
            span = (max(tail.board_t, later.board_t), min(tail.alight_t, later.alight_t))
            if (
                span[0] < span[1]
                and _heard_beside(tail, later, span, policy)
                and _heard_beside(tail, head, span, policy, (head.board_t, head.alight_t))
            ):
                out[k] = head
                tails.append(tail.with_flags(FLAG_OVERLAP_DROPPED))
    return out, tails


def _changed_at(first: Leg, later: Leg, bound_s: float) -> bool:
    """Whether the rider left ``first``'s bus and boarded ``later``'s at one stop: a transfer.

    ``first`` was seen alighting (not ``lost``) at the stop where ``later`` was seen
    boarding (a named start, not ``partial``), ``later`` boarded and alighted after
    ``first`` did, and they overlap by at most ``bound_s`` (``change_overlap_s``). That
    is the two buses standing at that stop together: the edge times a boarding from the
    doors opening (or the first piece heard there, as the bus drew up) and an alighting
    from the doors closing, so a bus that reached the stop first and held for the change
    boards the rider before the other bus closes its doors (issue 11: unseen seed 36,
    cell 11, five riders changing 17 -> G6000 at BD005 held on both buses). The overlap
    is how long ``later``'s bus stood there before ``first``'s let the rider off, plus
    that approach: beyond the bound no bus waited for them, and ``later``'s boarding is a
    token heard at that stop while the rider was still riding towards it (a cloned token
    waiting at the rider's stop): a suspected replay, as any other unsettled overlap.
    Such a pair is settled like any other when the evidence decides it
    (:func:`overlap_winner`: a bus beside the stop that heard the rider walk off far
    under its riders); left unsettled within the bound, it is a transfer, both legs
    charged, not a suspected replay.
    """
    stop = first.alight_stop_id
    return (
        stop is not None
        and stop == later.board_stop_id
        and first.board_t < later.board_t
        and first.alight_t < later.alight_t
        and first.alight_t - later.board_t <= bound_s
        and FLAG_LOST not in first.flags
        and FLAG_PARTIAL not in later.flags
    )


def _within(inner: Leg, outer: Leg) -> bool:
    """``inner`` lies wholly within ``outer``'s time (no slack)."""
    return outer.board_t <= inner.board_t and inner.alight_t <= outer.alight_t


def _settle_wins(
    wins: Sequence[tuple[int, int]],
) -> tuple[set[int], dict[int, set[int]], list[tuple[int, int]]]:
    """Which legs the ``(winner, loser)`` settlements drop, winners first.

    A loser is dropped by the winners that lose to nobody still standing; the
    settlements of a dropped leg are void, and the rest are looked at again. Settlements
    left in a cycle (each leg beaten by another, which the RSSI rule makes all but
    impossible) drop nobody and are returned as conflicts to hold.

    Returns:
        The dropped legs, for each the winners that dropped it, and the cyclic pairs.
    """
    active = list(wins)
    dropped: set[int] = set()
    dropped_by: dict[int, set[int]] = {}
    while active:
        losers = {lose for _, lose in active}
        free = [(w, lose) for w, lose in active if w not in losers]
        if not free:
            break
        for w, lose in free:
            dropped.add(lose)
            dropped_by.setdefault(lose, set()).add(w)
        active = [(w, lose) for w, lose in active if w not in dropped and lose not in dropped]
    return dropped, dropped_by, active
