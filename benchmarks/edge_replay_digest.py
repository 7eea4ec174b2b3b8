"""Replay traces through the edge pipeline and write every segment it emits, exactly.

``python -m benchmarks.edge_replay_digest [SCENARIO ...] [--crowd TOKENS ADVERTS] --out F``
replays, in process, every trace of each scenario directory (one kept by ``busbell sim
score --keep``: ``traces/``, ``gtfs/``, ``FLEET.csv``; a directory holding such
directories is searched for them) and, with ``--crowd``, the crowd benchmark's stream
(``benchmarks/edge_classifier.py --crowd``, the same records as it replays), through a
fresh :class:`edge.EdgePipeline` each with the default :class:`edge.ClassifierParams`. It
writes one JSON line per segment (every field of the draft, floats exact) and one per
trace with the pipeline's counters and a digest of its final state (the checkpoint's
contents), then prints a SHA-256 of the whole file.

What it is for: a change meant to speed the edge up without changing its behaviour is
run against the code before it on the same traces (``PYTHONPATH`` of a ``git archive``
snapshot of each), and the two files must be byte-identical (``cmp``). Unlike ``busbell
edge replay`` it needs no device key and writes no fare events, and it also checks the
counters and the state the daemon would checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import random
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from busbell import (
    AdvRecord,
    TokenVerifier,
    TraceReader,
    TraceRecord,
    configure_logging,
    load_gtfs,
    read_fleet_keys,
)
from edge._checkpoint_pickle import _Unpickler
from edge._params import ClassifierParams
from edge._pipeline import EdgePipeline
from edge._segment import SegmentDraft

__all__ = ["main", "scenario_dirs"]


def scenario_dirs(roots: Iterable[Path]) -> list[Path]:
    """The scenario directories (with ``traces/`` and ``FLEET.csv``) in or under ``roots``."""
    out: list[Path] = []
    for root in roots:
        if (root / "traces").is_dir() and (root / "FLEET.csv").is_file():
            out.append(root)
        else:
            found = (p.parent for p in root.rglob("FLEET.csv"))
            out.extend(sorted(d for d in found if (d / "traces").is_dir()))
    return out


def _num(x: Any) -> Any:
    """JSON-safe and exact: floats as their repr (``inf``, ``nan`` included)."""
    if isinstance(x, float):
        return repr(x)
    if isinstance(x, dict):
        return {str(k): _num(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_num(v) for v in x]
    return x


def _segment_line(name: str, n: int, d: SegmentDraft) -> str:
    row = {
        "trace": name,
        "record": n,
        "rid": d.rid,
        "interval": d.interval,
        "route_id": d.route_id,
        "trip_id": d.trip_id,
        "start": [d.start.t, d.start.stop_id, d.start.cause],
        "end": [d.end.t, d.end.stop_id, d.end.cause],
        "distance_m": d.distance_m,
        "proof": [d.proof_first, d.proof_last],
        "evidence": d.evidence,
    }
    return json.dumps(_num(row), sort_keys=True)


def _state_digest(pipe: EdgePipeline, omit: frozenset[str] = frozenset()) -> str:
    """SHA-256 of the checkpointed state, as values (not as pickle bytes).

    The rid records' fields are taken in the order of their names, not of the record's
    slots (a layout: a checkpoint restores by name), so that code with the slots
    reordered digests the same state alike; the classifier's and the vehicle's attributes
    too (since the compiled build: digests of files written before differ for that alone).
    Rid fields and classifier attributes named in ``omit`` are left out (state a change
    added, to compare with the code before it).
    """
    state = _Unpickler(io.BytesIO(pipe.snapshot())).load()
    slots = state["rid_slots"]
    by_name = sorted((i for i in range(len(slots)) if slots[i] not in omit), key=slots.__getitem__)
    for name in omit:
        state["classifier"].pop(name, None)
    state["rid_slots"] = [slots[i] for i in by_name]
    state["rid_records"] = [tuple(row[i] for i in by_name) for row in state["rid_records"]]
    for part in ("classifier", "vehicle"):  # (by name too: a compiled build lists them in
        state[part] = dict(sorted(state[part].items()))  # its own order)
    return hashlib.sha256(repr(state).encode()).hexdigest()


def _replay(
    name: str,
    pipe: EdgePipeline,
    records: Iterable[TraceRecord],
    out: TextIO,
    omit: frozenset[str] = frozenset(),
) -> int:
    n_seg = 0
    n = -1
    last_t = 0.0
    for n, rec in enumerate(records):
        last_t = rec.t
        for d in pipe.feed(rec):
            out.write(_segment_line(name, n, d) + "\n")
            n_seg += 1
    for d in pipe.finish(last_t + 60.0):
        out.write(_segment_line(name, n + 1, d) + "\n")
        n_seg += 1
    cls = pipe.classifier
    st = pipe.stats
    row = {
        "trace": name,
        "records": n + 1,
        "adverts": st.adverts_seen,
        "accepted": st.adverts_accepted,
        "rejected": st.rejected,
        "errors": st.errors,
        "closed": st.segments,
        "confirmed": cls.confirmed,
        "discarded": cls.discarded,
        "tentative": cls.tentative,
        "classifier_rejected": cls.rejected,
        "state": _state_digest(pipe, omit),
    }
    out.write(json.dumps(_num(row), sort_keys=True) + "\n")
    return n_seg


def _scenario(scenario: Path, out: TextIO, omit: frozenset[str] = frozenset()) -> tuple[int, int]:
    p = ClassifierParams()
    fleet = read_fleet_keys(scenario / "FLEET.csv")
    feed = load_gtfs(scenario / "gtfs")
    n_traces = n_seg = 0
    for trace in sorted((scenario / "traces").glob("*.jsonl")):
        with trace.open(encoding="utf-8", errors="surrogateescape") as fp:
            reader = TraceReader(fp, on_error=lambda _err: None)
            verifier = TokenVerifier(fleet, window_s=p.tq_window_s)
            pipe = EdgePipeline(reader.meta.bus_id, feed, verifier, p)
            n_seg += _replay(str(trace), pipe, reader, out, omit)
        n_traces += 1
    return n_traces, n_seg


def _crowd(
    n_tokens: int, n_adverts: int, seed: int, out: TextIO, omit: frozenset[str] = frozenset()
) -> int:
    """The crowd benchmark's stream (``_bench`` with ``crowd``), through the pipeline."""
    from benchmarks.edge_classifier import BOUNDARY_T, bench_tokens, crowd_plan
    from tests.factories.edge_world import synth_trace, verifier_for, write_gtfs

    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="busbell-digest-"))
    plan = crowd_plan(60.0)
    gtfs = load_gtfs(write_gtfs(tmp / "gtfs", plan.n_stops, plan.spacing_m))
    tokens = bench_tokens(n_tokens, rng, plan, True)
    recs, _ = synth_trace(plan, tokens, seed=seed, until=BOUNDARY_T + 150.0)
    advs = [r for r in recs if isinstance(r, AdvRecord)]
    n_adverts = min(n_adverts, len(advs))
    limit_t = advs[n_adverts - 1].t if advs else math.inf
    stream = [r for r in recs if r.t <= limit_t][: n_adverts * 2]
    pipe = EdgePipeline("BENCH", gtfs, verifier_for(recs))
    return _replay(f"crowd-{n_tokens}-{n_adverts}-{seed}", pipe, stream, out, omit)


def main(argv: Sequence[str] | None = None) -> int:
    """Replay, write the segments and counters, print the file's digest."""
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.edge_replay_digest",
        description="Replay traces through the edge pipeline; write every segment exactly.",
        epilog="example: python -m benchmarks.edge_replay_digest /tmp/kept --crowd 300 150000"
        " --out /tmp/a.jsonl (then the same with the other code, and cmp the two files)",
    )
    ap.add_argument("scenarios", nargs="*", type=Path, help="scenario directories or their roots")
    ap.add_argument(
        "--crowd",
        nargs=2,
        type=int,
        metavar=("TOKENS", "ADVERTS"),
        help="also the crowd benchmark's stream (as --crowd --tokens T --adverts A replays it)",
    )
    ap.add_argument("--seed", type=int, default=7, help="the crowd benchmark's seed")
    ap.add_argument("--out", type=Path, required=True, help="the JSON-lines file to write")
    ap.add_argument(
        "--omit",
        action="append",
        default=[],
        metavar="NAME",
        help="leave this rid field or classifier attribute out of the state digests (state"
        " the code added, to compare with code before it: --omit ec --omit eo_k ...);"
        " repeatable",
    )
    args = ap.parse_args(argv)
    omit = frozenset(args.omit)
    configure_logging("error")  # (vehicle warnings of the simulated faults: not the point)
    dirs = scenario_dirs(args.scenarios)
    if not dirs and not args.crowd:
        ap.error("no scenario directory found and no --crowd")
    n_traces = n_seg = 0
    with args.out.open("w", encoding="utf-8") as out:
        for d in dirs:
            t, s = _scenario(d, out, omit)
            n_traces += t
            n_seg += s
        if args.crowd:
            n_seg += _crowd(args.crowd[0], args.crowd[1], args.seed, out, omit)
            n_traces += 1
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    from benchmarks.edge_classifier import edge_build

    sys.stdout.write(
        f"{n_traces} traces, {n_seg} segments -> {args.out}: sha256 {digest}"
        f" (edge code from {Path(sys.modules['edge'].__file__ or '').parent}: {edge_build()})\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
