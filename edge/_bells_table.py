"""The boarding-wait request lifecycle on one bus, as a transition table (Bells v1).

Each live wait the bus tracks has a local :class:`ReqState`; the bell core
(:mod:`edge._bells`) turns inputs into :class:`ReqEvent` values and moves the request
with :func:`next_state`. Every pair is listed: a pair missing from :data:`TRANSITIONS` is
a bug and raises. Which transitions are published on ``requests/{id}/status`` is the
core's business (it does not overwrite another bus's newer status).

``MISSED`` is terminal for this bus on this trip only: the wait stays live for the next
bus, and a trip change makes it ``PENDING`` here again.
"""

from __future__ import annotations

import enum

__all__ = ["LIVE", "TERMINAL", "TRANSITIONS", "ReqEvent", "ReqState", "next_state"]


class ReqState(enum.Enum):
    """Where a wait request stands on this bus (the values are the wire names)."""

    PENDING = "pending"
    """Tracked, not (yet) shown to the driver: its stop is not ahead within the horizon."""
    SEEN = "seen"
    """Shown on the driver display."""
    ACKNOWLEDGED = "acknowledged"
    """The driver acknowledged it."""
    SERVED = "served"
    """The bus opened its doors at the stop while the wait was live."""
    MISSED = "missed"
    """The bus passed the stop, doors closed, after showing the wait (a signed record)."""
    EXPIRED = "expired"
    """Its ``expires_t`` passed."""
    CANCELLED = "cancelled"
    """Cleared (empty payload) or ended elsewhere (served by another bus, cancelled)."""


class ReqEvent(enum.Enum):
    """What can happen to a tracked wait."""

    SHOWN = "shown"
    """Its stop is ahead within the horizon (and the status grace is over)."""
    HIDDEN = "hidden"
    """It left the display without being passed (horizon shrank, relocalised, far pass)."""
    ACK = "ack"
    """The driver acked it while it was displayed."""
    DOORS_OPENED = "doors_opened"
    """A stop visit opened at its stop."""
    PASSED = "passed"
    """The bus passed its stop without a visit there (with enough notice, close enough)."""
    EXPIRE = "expire"
    """Bus time reached ``expires_t``."""
    CANCEL = "cancel"
    """Empty payload, or a terminal status from elsewhere."""
    TRIP_CHANGED = "trip_changed"
    """The driver signed on to another trip (or direction)."""


S, E = ReqState, ReqEvent
LIVE = frozenset({S.PENDING, S.SEEN, S.ACKNOWLEDGED})
"""States in which the request may still be served by this bus."""
TERMINAL = frozenset({S.SERVED, S.MISSED, S.EXPIRED, S.CANCELLED})
"""States this bus does not leave on this trip (MISSED is left on a trip change)."""

TRANSITIONS: dict[tuple[ReqState, ReqEvent], ReqState] = {
    (S.PENDING, E.SHOWN): S.SEEN,
    (S.PENDING, E.HIDDEN): S.PENDING,
    (S.PENDING, E.ACK): S.ACKNOWLEDGED,
    (S.PENDING, E.DOORS_OPENED): S.SERVED,
    (S.PENDING, E.PASSED): S.PENDING,
    (S.PENDING, E.EXPIRE): S.EXPIRED,
    (S.PENDING, E.CANCEL): S.CANCELLED,
    (S.PENDING, E.TRIP_CHANGED): S.PENDING,
    (S.SEEN, E.SHOWN): S.SEEN,
    (S.SEEN, E.HIDDEN): S.PENDING,
    (S.SEEN, E.ACK): S.ACKNOWLEDGED,
    (S.SEEN, E.DOORS_OPENED): S.SERVED,
    (S.SEEN, E.PASSED): S.MISSED,
    (S.SEEN, E.EXPIRE): S.EXPIRED,
    (S.SEEN, E.CANCEL): S.CANCELLED,
    (S.SEEN, E.TRIP_CHANGED): S.PENDING,
    (S.ACKNOWLEDGED, E.SHOWN): S.ACKNOWLEDGED,
    (S.ACKNOWLEDGED, E.HIDDEN): S.PENDING,
    (S.ACKNOWLEDGED, E.ACK): S.ACKNOWLEDGED,
    (S.ACKNOWLEDGED, E.DOORS_OPENED): S.SERVED,
    (S.ACKNOWLEDGED, E.PASSED): S.MISSED,
    (S.ACKNOWLEDGED, E.EXPIRE): S.EXPIRED,
    (S.ACKNOWLEDGED, E.CANCEL): S.CANCELLED,
    (S.ACKNOWLEDGED, E.TRIP_CHANGED): S.PENDING,
    (S.MISSED, E.TRIP_CHANGED): S.PENDING,
    (S.MISSED, E.EXPIRE): S.EXPIRED,
    (S.MISSED, E.CANCEL): S.CANCELLED,
}
"""Every (state, event) pair; terminal states absorb everything (MISSED: see module)."""
for _s in (S.SERVED, S.EXPIRED, S.CANCELLED):
    for _e in E:
        TRANSITIONS[_s, _e] = _s
for _e in (E.SHOWN, E.HIDDEN, E.ACK, E.DOORS_OPENED, E.PASSED):
    TRANSITIONS[S.MISSED, _e] = S.MISSED
del S, E, _s, _e


def next_state(state: ReqState, event: ReqEvent) -> ReqState:
    """The state after ``event``.

    Raises:
        KeyError: for a pair not in :data:`TRANSITIONS` (a bug: the table is total).
    """
    return TRANSITIONS[state, event]
