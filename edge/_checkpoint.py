"""Open presences survive a restart: the pipeline's state checkpointed in the fare store.

The daemon (and anything else that records fare events from a live pipeline) keeps a
:class:`Checkpointer`: every batch of closed segments is recorded **in the same SQLite
transaction** as a snapshot of the pipeline taken right after it closed them, and a
snapshot is saved on its own every ``checkpoint_s`` of trace time. After a crash or a
power cut the pipeline is restored from the last snapshot: riders on board stay on
board (the downtime does not count towards their fade), and no segment already recorded
is emitted again (it was recorded together with a snapshot in which it was closed).
Adverts heard between the last snapshot and the crash are lost, which at most shortens
a ride's evidence by ``checkpoint_s``; identity-aware settlement joins the segments of a
ride that the gap split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from busbell import StoreError, get_logger
from edge._pipeline import CheckpointError, EdgePipeline
from edge._segment import SegmentDraft
from edge._store import FareStore

__all__ = ["Checkpointer"]

_log = get_logger("edge.checkpoint")


class Checkpointer:
    """Keeps an :class:`EdgePipeline`'s state in its :class:`FareStore`.

    Args:
        pipeline: the live pipeline.
        store: the bus's fare store.
        every_s: save a snapshot at least this often (trace time); 0 disables all
            checkpointing (segments are still recorded).
    """

    def __init__(self, pipeline: EdgePipeline, store: FareStore, every_s: float) -> None:
        self.pipeline = pipeline
        self.store = store
        self.every_s = every_s
        self.saved = 0
        self.failed = 0
        self.last_error: str | None = None
        """Why the last periodic snapshot failed; ``None`` once one succeeds again."""
        self._last_t = float("-inf")

    async def restore(self) -> bool:
        """Restore the pipeline from the store's checkpoint, if there is a usable one.

        A checkpoint of another code version or a corrupt one is logged
        (``classifier_checkpoint_rejected``) and the pipeline starts empty; it never
        stops the daemon.

        Raises:
            busbell.StoreError: when the store cannot be read.
        """
        if self.every_s <= 0:
            return False
        found = await self.store.load_checkpoint()
        if found is None:
            return False
        t, blob = found
        try:
            self.pipeline.restore(blob)
        except CheckpointError as exc:
            _log.warning("classifier_checkpoint_rejected", t=t, error=str(exc))
            return False
        self._last_t = t
        _log.info(
            "classifier_checkpoint_restored",
            t=t,
            bytes=len(blob),
            on_board=self.pipeline.on_board(),
            stopped_t=self.pipeline.stopped_t,
        )
        return True

    def state(self) -> tuple[bytes, float] | None:
        """A snapshot of the pipeline now, for ``FareStore.append_many(checkpoint=...)``."""
        if self.every_s <= 0:
            return None
        t = self.pipeline.t
        self._last_t = t
        self.saved += 1
        return self.pipeline.snapshot(), t

    async def record(self, drafts: Sequence[SegmentDraft]) -> list[dict[str, Any]]:
        """Record closed segments together with a snapshot (one transaction).

        Raises:
            busbell.StoreError: nothing was recorded (keep the drafts and retry).
            busbell.ContractError: a draft does not make a valid event.
        """
        return await self.store.append_many(drafts, checkpoint=self.state())

    def stop(self, t: float) -> list[SegmentDraft]:
        """What a clean stop (SIGTERM) closes, at ``t``.

        Mid-trip (:attr:`EdgePipeline.mid_trip`) with checkpointing on: nothing. The
        open presences stay in the snapshot the stop saves, and the restart restores
        them as after a crash, so a restart for an update or a new configuration
        cuts no ride short. Before (and still with ``checkpoint_s = 0``, or with no
        trip under way, or after the trip's last stop): every open ride was closed by
        :meth:`EdgePipeline.finish`, ``lost`` at the last stop it was seen on board
        after, and the rider was charged to there (``benchmarks.edge_clean_stop``:
        39 rides of 12 riders wrong over 12 stop moments of one trip).

        The snapshot saved after it says the stop was clean
        (:meth:`EdgePipeline.stop_mid_trip`): a restart more than
        ``stop_resume_max_s`` later closes the presences as of the stop instead of
        resuming them (a bus switched off for the night, a driver who signed off early).
        """
        if self.every_s > 0 and self.pipeline.mid_trip:
            self.pipeline.stop_mid_trip()
            _log.info(
                "edge_stopped_mid_trip",
                t=self.pipeline.t,
                on_board=self.pipeline.on_board(),
                trip_id=self.pipeline.vehicle.trip_id,
            )
            return []
        return self.pipeline.finish(t)

    def due(self) -> bool:
        """Whether a periodic snapshot is due (``every_s`` of trace time since the last)."""
        return self.every_s > 0 and self.pipeline.t >= self._last_t + self.every_s

    async def save(self) -> None:
        """Save a snapshot now; a store failure is logged and counted, never raised."""
        state = self.state()
        if state is None:
            return
        try:
            await self.store.save_checkpoint(*state)
        except StoreError as exc:
            self.failed += 1
            self.last_error = str(exc)
            _log.error("classifier_checkpoint_failed", error=str(exc))
            return
        self.last_error = None
