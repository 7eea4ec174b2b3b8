"""The rider API's state and the dependency that hands it to routes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from backend._api_auth import ApiAuth
from backend._gtfs_rt import FleetView, OccupancyThresholds
from backend._waits import WaitRules
from backend._waits_api import WaitService
from busbell._gtfs import Feed
from busbell._mqtt import Publisher
from busbell._topics import Topics

__all__ = ["ApiState", "State", "api_state"]


@dataclass
class ApiState:
    """What the API needs: the ledger, the broker and the reference data.

    Attributes:
        engine: the ledger database.
        topics: topic names.
        publisher: the broker connection (``None``: waits answer 503).
        feed: GTFS static (route and stop checks), if loaded.
        fleet: vehicle state for GTFS-Realtime.
        wait_rules: the rules of boarding-wait requests (``[waits]``).
        occupancy: thresholds for occupancy_status.
        on_enrolled: called with ``(rider_id, token_key)`` after an enrolment.
        on_revoked: called with ``rider_id`` after a revocation.
        on_denylist_changed: called after a rider or device revocation (``backend run``
            publishes the new signed deny list at once).
        clock: wall time (UNIX seconds).
        waits: the wait service (made from the above unless given).
        auth: credentials, rate limits and the body cap (``[api]``).
    """

    engine: AsyncEngine
    topics: Topics = field(default_factory=Topics)
    publisher: Publisher | None = None
    feed: Feed | None = None
    fleet: FleetView | None = None
    wait_rules: WaitRules = field(default_factory=WaitRules)
    occupancy: OccupancyThresholds = field(default_factory=OccupancyThresholds)
    on_enrolled: Callable[[str, bytes], None] | None = None
    on_revoked: Callable[[str], None] | None = None
    on_denylist_changed: Callable[[], None] | None = None
    clock: Callable[[], float] = time.time
    waits: WaitService | None = None
    auth: ApiAuth = field(default_factory=ApiAuth)

    def __post_init__(self) -> None:
        if self.fleet is None:
            self.fleet = FleetView(self.topics)
        if self.waits is None:
            self.waits = WaitService(
                self.engine,
                self.topics,
                self.wait_rules,
                feed=self.feed,
                publisher=lambda: self.publisher,
                clock=self.clock,
            )


def api_state(request: Request) -> ApiState:
    """The :class:`ApiState` of the app serving ``request`` (a route dependency)."""
    state: ApiState = request.app.state.busbell
    return state


State = Annotated[ApiState, Depends(api_state)]
"""A route parameter annotated ``State`` receives the app's :class:`ApiState`."""
