"""Durations in words for people reading reports (fare explanations, missed-stop reports)."""

from __future__ import annotations

__all__ = ["duration_text"]


def duration_text(seconds: float) -> str:
    """``seconds`` rounded to the second: ``45 s``, ``12 min 05 s``, ``-1 min 30 s``.

    Example:
        >>> duration_text(725.4), duration_text(45), duration_text(-90)
        ('12 min 05 s', '45 s', '-1 min 30 s')
    """
    whole = round(seconds)
    sign = "-" if whole < 0 else ""
    minutes, secs = divmod(abs(whole), 60)
    return f"{sign}{minutes} min {secs:02d} s" if minutes else f"{sign}{secs} s"
