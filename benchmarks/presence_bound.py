"""How much can a presence rule charge? A hindsight upper bound, and the misses by cause.

Over kept scenario directories (``busbell sim score --keep``), every true leg and every
non-leg episode a bus heard, their features, the best monotone rule with hindsight at one
bystander charge per 10,000 passes, and the kept run's misses against it
(:mod:`firmware_sim._bound`; docs/accuracy.md, "What is observable: a hindsight bound")::

    python -m benchmarks.presence_bound KEPT [KEPT/cell-23/seed-1/quiet_route ...] [--list]

Reads only; generates and scores nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from busbell import configure_logging
from firmware_sim._bound import EPISODE_GAP_S, bound_report


def main(argv: Sequence[str] | None = None) -> int:
    """Print the bound per cell of the kept scenarios under the given directories."""
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.presence_bound", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("dirs", type=Path, nargs="+", help="--keep directories or scenario dirs")
    ap.add_argument(
        "--gap", type=float, default=EPISODE_GAP_S, help="silence (s) that ends a non-leg episode"
    )
    ap.add_argument("--list", action="store_true", help="list misses and charged non-legs")
    args = ap.parse_args(argv)
    configure_logging("warning")
    try:
        lines = bound_report(args.dirs, args.gap, listing=args.list)
    except ValueError as err:
        ap.error(str(err))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
