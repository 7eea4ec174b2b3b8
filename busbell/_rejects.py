"""Count rejected input by reason and log it without letting a flood fill the log.

A hostile sender can make a daemon reject thousands of messages a second; logging each
one would turn an input flood into a disk flood. :class:`RejectLog` counts every
rejection by reason (the counters go into status and metrics) and logs at most
``burst`` events per reason per ``window_s``; the next event logged for that reason
carries ``suppressed=N``, how many were counted but not logged meanwhile.

Usage::

    rejects = RejectLog(get_logger("edge.daemon"), "mqtt_message_rejected")
    ...
    except JsonRejected as exc:
        rejects.reject(exc.reason, topic=topic, error=str(exc))
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["RejectLog"]


class RejectLog:
    """Counters by reason plus a per-reason rate-limited warning log.

    Args:
        log: a structlog logger.
        event: the snake_case event name every rejection is logged under.
        burst: events logged per reason per window.
        window_s: the window, in seconds of ``clock``.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        log: Any,
        event: str,
        *,
        burst: int = 10,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.event = event
        self.burst = burst
        self.window_s = window_s
        self._clock = clock
        self.counts: dict[str, int] = {}
        """Rejections by reason since start."""
        self._window: dict[str, tuple[float, int, int]] = {}  # reason -> start, logged, hidden

    @property
    def total(self) -> int:
        """All rejections since start."""
        return sum(self.counts.values())

    def reject(self, reason: str, **fields: Any) -> bool:
        """Count one rejection; log it unless over the rate. Returns whether it was logged.

        String field values are cut to 200 characters (input is never echoed at length).
        """
        self.counts[reason] = self.counts.get(reason, 0) + 1
        now = self._clock()
        start, logged, hidden = self._window.get(reason, (now, 0, 0))
        if now - start >= self.window_s:
            start, logged = now, 0
        if logged >= self.burst:
            self._window[reason] = (start, logged, hidden + 1)
            return False
        self._window[reason] = (start, logged + 1, 0)
        cut = {k: v[:200] if isinstance(v, str) else v for k, v in fields.items()}
        if hidden:
            cut["suppressed"] = hidden
        self.log.warning(self.event, reason=reason, **cut)
        return True
