"""Presence classifier: where a weak candidate's ride began after its rid rotated.

Found in the full-scale runs of tuning seeds 1-2, weak cells (``busbell edge trace-rider``;
docs/classifier.md, "A new rid from a candidate's address"). Each test fails without the
rule it names.
"""

from __future__ import annotations

from edge._classifier import _CANDIDATE, _GONE, _ROTATING, PresenceClassifier, _Rid
from edge._segment import SegmentDraft
from edge._vehicle import StopVisit
from tests.edge.test_classifier import T0


def _visit(seq: int, stop_id: str, open_t: float, odo: float, dwell_s: float) -> StopVisit:
    return StopVisit(seq, stop_id, open_t, odo, "door", open_t + dwell_s, odo)


def test_a_new_rid_taking_over_a_waiters_candidacy_keeps_where_its_track_began() -> None:
    # full scale, tuning seed 1, -25 dBm, shared_stop_three_routes r-00195 on the route-17
    # bus: someone waiting at S2 was first heard 110 m before its doors (two track points
    # at -93 dBm, 690 and 795 m past S1), then at those doors at that level: S2's
    # candidate, heard at that level at three points past S2 too (a track over two hops,
    # five points). Its rid ended before it boarded; its new rid, sent from the same address
    # and not yet heard on the way (no track point of its own), took over the candidacy
    # with the old rid's track (:meth:`PresenceClassifier._inherit`). The track began
    # 110 m before S2's doors, too close to be a ride from S1 (someone waiting at S2 is
    # heard from there). Before: the new rid's track had no first point (-inf), so it
    # "began" far enough before S2 and the rider was boarded at S1 (charged BD004 ->
    # BD006 for a wait at BD005, and the rider's real leg on the other bus was held)
    c = PresenceClassifier()
    c._riders_lvl = -80.0
    s1 = _visit(1, "S1", T0, 0.0, 20.0)
    s2 = _visit(2, "S2", T0 + 120.0, 800.0, 20.0)
    c._visits.extend((s1, s2))
    c._visit = s2
    iv = int(T0 // 600)
    old = _Rid(b"old-rid-0001", iv, T0 + 100.0)
    old.reset(T0 + 110.0, 690.0, b"\x20" * 24, -93)
    old.state = _GONE
    old.addr = "addr-waiter"
    old.lvl = -93.0
    old.visit = s2
    old.tk_visit, old.tk_seq, old.tk_hops = s1, 2, 2
    old.tk_n, old.tk_sum = 5, -465.0
    old.tk_odo0, old.tk_odo, old.tk_lvl = 690.0, 1250.0, -93.0
    old.tk_stood = old.tk_stay = 2  # heard at its track's level at S2's open doors
    c._rids[old.rid] = old
    c._heirs[(iv + 1, old.addr)] = (old.rid, s2)
    new = _Rid(b"new-rid-0001", iv + 1, T0 + 200.0)
    new.reset(T0 + 200.0, 1300.0, b"\x20" * 24, -92)
    new.state = _ROTATING
    new.addr = old.addr
    c._rids[new.rid] = new
    c._inherit(new)
    assert new.state == _CANDIDATE
    assert new.visit is s2
    out: list[SegmentDraft] = []
    c._confirm_new(new, T0 + 230.0, s2, out)
    assert new.start is not None
    assert new.start.stop_id == "S2"
