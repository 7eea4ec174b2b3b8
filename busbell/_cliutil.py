"""What the ``busbell`` commands share: safe output paths, rejection summaries, progress.

Output files never clobber inputs; one summary line says why events were rejected; a
progress line reports long runs.

User-facing text goes to standard error here (the commands' own output, e.g. JSON, goes
to standard output); the library modules log with structlog instead.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TextIO

from busbell._errors import BusbellError

__all__ = ["NothingUseful", "Progress", "check_output_path", "dirs_holding", "rejection_summary"]


class NothingUseful(BusbellError):
    """A command ran but produced nothing a user can use (exit status 1, with why)."""


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def check_output_path(out: Path, inputs: Iterable[Path], *, force: bool = False) -> None:
    """Refuse an output that would overwrite an input, or any existing file unless ``force``.

    Raises:
        BusbellError: naming the file and what to do instead.
    """
    for path in inputs:
        if _same_file(out, path):
            raise BusbellError(f"--out {out} is one of the inputs; choose another file")
        if path.is_dir() and out.resolve().is_relative_to(path.resolve()):
            raise BusbellError(f"--out {out} is inside the input directory {path}")
    if out.exists() and not force:
        raise BusbellError(
            f"--out {out} already exists (it may be a ground truth or an earlier result); "
            "choose another file or pass --force to replace it"
        )


def dirs_holding(paths: Iterable[Path], marker: str) -> list[Path]:
    """The directories holding a file named ``marker``, at or under each of ``paths``.

    A path holding one itself is taken as it is; otherwise every such directory under it,
    sorted; in the order the paths were given.
    """
    found: list[Path] = []
    for p in paths:
        if (p / marker).is_file():
            found.append(p)
        else:
            found.extend(sorted(q.parent for q in p.rglob(marker)))
    return found


def rejection_summary(total: int, rejected: Mapping[str, int], what: str = "event") -> str:
    """One line saying how many of ``total`` were rejected and why, most frequent first.

    >>> rejection_summary(26, {"bad_signature": 26})
    'all 26 events rejected: bad_signature'
    >>> rejection_summary(30, {"bad_signature": 20, "unknown_bus": 6})
    '26 of 30 events rejected: bad_signature 20, unknown_bus 6'
    """
    n = sum(rejected.values())
    noun = what if total == 1 else what + "s"
    if n == 0:
        return f"0 of {total} {noun} rejected"
    top = sorted(rejected.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(top) == 1:
        why = top[0][0]
    else:
        why = ", ".join(f"{reason} {count}" for reason, count in top[:6])
        if len(top) > 6:
            why += f", and {len(top) - 6} more reasons"
    head = f"all {n} {noun}" if n == total else f"{n} of {total} {noun}"
    return f"{head} rejected: {why}"


class Progress:
    """A one-line progress report on standard error for long runs.

    It redraws at most ``hz`` times a second, only when the stream is a terminal (set
    ``BUSBELL_PROGRESS=1`` to force it, ``0`` to silence it), and leaves one final line.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        unit: str = "",
        stream: TextIO | None = None,
        hz: float = 4.0,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        env = os.environ.get("BUSBELL_PROGRESS")
        is_tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self.enabled = env == "1" or (env != "0" and is_tty)
        self._min_gap = 1.0 / hz
        self._t0 = time.monotonic()
        self._last = 0.0

    def _line(self) -> str:
        elapsed = time.monotonic() - self._t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        unit = f" {self.unit}" if self.unit else ""
        speed = f", {rate:,.0f}{unit}/s" if rate >= 10 else ""
        if self.total:
            pct = 100.0 * self.done / self.total
            left = (self.total - self.done) / rate if rate > 0 else 0.0
            return (
                f"{self.label}: {self.done}/{self.total}{unit} ({pct:.0f} %){speed}, "
                f"{elapsed:.0f} s elapsed, ~{left:.0f} s left"
            )
        return f"{self.label}: {self.done}{unit}{speed}, {elapsed:.0f} s elapsed"

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more done; redraw when due."""
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last >= self._min_gap:
            self._last = now
            self._stream.write("\r" + self._line() + "\x1b[K")
            self._stream.flush()

    def clear(self) -> None:
        """Erase the progress line (before other output goes to the same terminal)."""
        if self.enabled:
            self._stream.write("\r\x1b[K")
            self._stream.flush()

    def close(self) -> None:
        """Leave the final figures on their own line."""
        if self.enabled:
            self._stream.write("\r" + self._line() + "\x1b[K\n")
            self._stream.flush()
