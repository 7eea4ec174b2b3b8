"""Every threshold of the vehicle context and the presence classifier, in one place.

:class:`ClassifierParams` is a frozen dataclass whose fields are documented options, so
it doubles as the ``[classifier]`` section of the edge configuration
(``BUSBELL_CLASSIFIER__<KEY>`` in the environment). ``docs/classifier.md`` explains how
each value is used and why it has its default.
"""

from __future__ import annotations

from dataclasses import dataclass

from busbell import DEFAULT_COMPANY_ID, DEFAULT_TQ_WINDOW_S, option

__all__ = ["ClassifierParams"]


@dataclass(frozen=True, slots=True)
class ClassifierParams:
    """Thresholds of the presence classifier and the vehicle context."""

    # --- advertisements -------------------------------------------------------------
    company_id: int = option(
        DEFAULT_COMPANY_ID,
        doc="BLE company id whose manufacturer data carries rider tokens (0xFFFF = test id)",
    )
    tq_window_s: float = option(
        DEFAULT_TQ_WINDOW_S,
        doc="accept a token only if its time (tq) is within this many seconds of GNSS time",
    )
    verify_cache_size: int = option(
        65536, doc="accepted payloads memoised (by their 24 raw bytes) to skip the HMAC"
    )

    # --- RSSI ---------------------------------------------------------------------------
    rssi_tau_s: float = option(
        2.0, doc="time constant (s) of the per-rid exponentially weighted RSSI average"
    )
    in_bus_rssi_dbm: float = option(
        -100.0,
        doc="absolute floor: smoothed RSSI at or above which an advertisement may count as"
        " in-bus evidence (-100: below any scanner's sensitivity, i.e. no calibrated floor;"
        " evidence is judged relative to the token's own level and by co-movement)",
    )

    in_bus_margin_db: float = option(
        25.0,
        doc="with 3 or more riders aboard, the in-bus threshold is lowered to their median"
        " baseline minus this many dB when that is below in_bus_rssi_dbm (weak tokens: the"
        " threshold follows the riders' level, not a calibration); 0: off. Co-movement"
        " evidence (sparse_adverts) counts only within this many dB of that median (a rider"
        " of a vehicle alongside is heard through two shells), and boards nobody with"
        " nobody aboard; a candidate first heard late at the open doors and this far below"
        " the riders drew up outside (0: never)",
    )

    in_bus_gap_s: float = option(
        6.0,
        doc="... and only if the rid was also heard within this many seconds before"
        " (a far-away token is heard in sporadic lucky packets)",
    )

    baseline_tau_s: float = option(
        30.0, doc="time constant (s) of a rider's slow RSSI baseline while on board"
    )
    fade_drop_db: float = option(
        18.0,
        doc="on board, the smoothed RSSI must also stay within this many dB of the rider's"
        " baseline to count as in-bus (an alighted rider fades relative to their own level)",
    )

    # --- boarding -----------------------------------------------------------------------
    candidate_lookback_s: float = option(
        10.0,
        doc="rids heard this long before the doors open become boarding candidates too",
    )
    board_grace_s: float = option(
        5.0, doc="a rid first heard this long after the doors close still joins that stop"
    )
    stay_s: float = option(
        5.0,
        doc="a candidate carried to a later stop boards on co-movement if heard there at its"
        " level this long after the doors opened, the bus standing (it rode to that stop; a"
        " vehicle alongside drives on as the bus halts); else only once moving on past it",
    )
    confirm_distance_m: float = option(
        150.0, doc="a boarding is confirmed only after the bus has moved this far from the stop"
    )
    confirm_min_s: float = option(
        20.0, doc="... and at least this many seconds after the doors closed"
    )
    confirm_far_m: float = option(
        60.0,
        doc="in-bus evidence counts only once the bus is this far from the boarding stop",
    )
    confirm_adverts: int = option(
        4, doc="in-bus advertisements needed beyond confirm_far_m to confirm a boarding"
    )
    confirm_span_m: float = option(
        100.0,
        doc="... and that evidence must be unbroken over this much travel (a pedestrian"
        " the bus passes further on is heard strongly only briefly)",
    )
    confirm_stretch_s: float = option(
        30.0,
        doc="... and last this long (a pass-by is strong for seconds, a rider for minutes);"
        " a shorter ride counts if it ends as the doors open at the next stop",
    )
    confirm_gap_s: float = option(
        15.0, doc="a pause in in-bus evidence longer than this restarts that stretch"
    )
    convoy_m: float = option(
        150.0,
        doc="a rid already heard while the bus travelled this far to the stop is in a"
        " vehicle alongside (or a missed rider): to board it must get clearly stronger",
    )
    outside_run_gap_s: float = option(
        10.0, doc="a rid silent this long starts a new run of hearing (for convoy_m)"
    )
    convoy_gain_db: float = option(
        6.0, doc="... its median RSSI must rise by this much after the stop ..."
    )
    convoy_strong_dbm: float = option(
        -72.0, doc="... or be at least this strong (a rider the classifier missed)"
    )
    convoy_span_m: float = option(
        1500.0,
        doc="... and its unbroken in-bus stretch must span a later stop visit of this bus, or"
        " this much travel (a bus of another route serving the same stops is heard well"
        " between two of them); a convoy candidate is never a short hop",
    )
    sparse_adverts: int = option(
        4,
        doc="co-movement: a candidate heard at its own level (within fade_drop_db of its"
        " level at the stop) while the bus was confirm_distance_m or more past the stop, at"
        " this many points of the way ...",
    )
    sparse_step_m: float = option(
        100.0,
        doc="... each this much travel after the previous one, boarded however sparse its"
        " adverts (someone left at the stop falls 20-30 dB below their level there within a"
        " few hundred metres; a bus alongside now and then is heard in clusters)",
    )
    sparse_fall_db: float = option(
        12.0,
        doc="a candidate whose smoothed RSSI fell this far below its level at the stop once"
        " the bus left (left behind, a car falling back) is not boarded on co-movement alone;"
        " nor one whose smoothed RSSI at its co-movement points spread by more than this (a"
        " car beside the bus at a red light, then pulling away)",
    )
    reject_distance_m: float = option(
        600.0,
        doc="a candidate never heard in-bus confirm_distance_m from its stop is dropped once"
        " the bus is this far away",
    )

    # --- alighting / loss ---------------------------------------------------------------
    fade_timeout_s: float = option(
        15.0, doc="a rid with no in-bus advertisement for this long has left (or is lost)"
    )
    fade_gaps: float = option(
        8.0,
        doc="... or this many times the rid's own mean gap between in-bus adverts, if longer"
        " (a weakly heard token's silences are judged against its own rate); 0: off",
    )
    alight_pre_s: float = option(
        1.0,
        doc="a fade counts for a stop whose doors opened up to this long after it began",
    )
    lost_after_m: float = option(
        200.0,
        doc="in-bus evidence this far past a stop means the rid vanished while moving (lost)",
    )

    lost_min_m: float = option(
        2000.0,
        doc="a boarded rid that vanishes while moving (no door) before riding this far"
        " (heard on the way: not the travel during silences it was held aboard through) is"
        " dropped, not charged: likely someone in a vehicle alongside (two buses of"
        " different routes leaving a shared stop together run side by side for 1-2 km)",
    )

    lost_wait_s: float = option(
        900.0,
        doc="a rider who rode lost_min_m or more and went silent while the bus was moving is"
        " held on board until the next door opening (nobody leaves a moving bus), then"
        " alighted there if still silent; at most this long (then lost); 0: off",
    )

    # --- rotation -----------------------------------------------------------------------
    rotation_slack_s: float = option(
        16.0,
        doc="rids last heard this close (token time) to their interval's end may have rotated;"
        " rids first heard this close to its start may be a rotated rider's new rid",
    )
    rotation_gap_s: float = option(
        5.0,
        doc="a new rid first heard at most this long after an old rid's last advert pairs"
        " with it (rotation)",
    )
    rotation_gaps: float = option(
        6.0,
        doc="... or this many times the old rid's own mean gap between in-bus adverts, if"
        " longer (at most rotation_settle_s): a token heard through a lossy or crowded"
        " channel loses the adverts around its payload change as often as any others; 0: off",
    )
    rotation_drop_db: float = option(
        12.0,
        doc="a rid whose smoothed RSSI had dropped this far below its baseline when it"
        " stopped faded away (left); it did not rotate",
    )
    skew_tolerance_s: float = option(
        2.0,
        doc="an old and a new rid pair only if their clock offsets (the least GNSS time"
        " minus token time seen) agree within this",
    )
    rotation_confirm_s: float = option(
        20.0, doc="a new rid appearing at its interval's start needs this long in-bus evidence"
    )
    rotation_settle_s: float = option(
        30.0,
        doc="a rid that stopped at its interval's end waits this long (after its last advert)"
        " for a new rid to pair with before it is closed by the fade rules",
    )
    rotation_skew_weight: float = option(
        10.0,
        doc="pairing cost per second of clock-offset difference between an old and a new rid",
    )
    rotation_rssi_weight: float = option(
        0.3, doc="pairing cost per dB of RSSI difference between an old and a new rid"
    )
    rotation_phase_weight: float = option(
        40.0,
        doc="pairing cost per second by which a new rid's first advert misses the old rid's"
        " advertising rhythm (a whole number of its intervals after its last advert)",
    )
    rotation_phase_max_period_s: float = option(
        2.5,
        doc="the rhythm term is used only if the old rid's advertising interval (its"
        " shortest gap between adverts) is below this (a 2-s advertiser included: its new"
        " rid is first heard 2 s after its old rid's last advert, not at once)",
    )
    rotation_wait_s: float = option(
        60.0, doc="a rotation candidate not paired with a rotated rid is dropped after this"
    )
    tentative_points: int = option(
        2,
        doc="a candidate dropped unconfirmed that was alive across a rid rotation (its rid"
        " ended, or began at most tentative_window_s before it was first heard) with this"
        " many co-movement points or more, at the riders' level, is sent as a tentative"
        " segment: summed by the backend with the rider's other rid, charged alone only"
        " when heard door to door (docs/backend.md); 0: off",
    )
    tentative_window_s: float = option(
        120.0,
        doc="... a rid first heard at most this long (token time) into its interval began"
        " at a rotation",
    )

    # --- bus beacon echo (token byte 23) -------------------------------------------------
    echo_evidence: bool = option(
        True,
        doc="read a token's echo of the bus it has heard longest (token v1 byte 23,"
        " docs/protocol.md): an echo naming this bus since a stop it has left, heard by the"
        " bus while it carries the token, boards a candidacy too thin for the co-movement"
        " rules and dates its boarding from that stop; an echo naming another bus, or this"
        " bus since a stop after the candidacy's, bars the thin rules; a token's stretch"
        " goes on under its next rid (docs/classifier.md, 'Twentieth pass', 'Twenty-first"
        " pass'). Off: the echo is ignored and the output is that of an edge without it",
    )
    echo_points: int = option(
        2,
        doc="... the points, sparse_step_m apart, confirm_distance_m or more past the stop"
        " the bus last left (at or after the echo's stop), at which adverts naming this"
        " bus are heard (their mean within in_bus_margin_db of the riders' level) before"
        " the echo boards or moves a boarding: the bus's own hearing, never the echo alone"
        " (a code collides with another bus's for 1 rid in 31). One point is enough, on"
        " the echo rule's own boarding, for a stretch older than a stop the bus served"
        " before it first heard it, unless a bus of another stop pattern of the feed sends"
        " that seq where it did (docs/classifier.md, 'Thirty-eighth pass'), or the echo's"
        " stop lies within echo_reach_m of where the bus first heard it",
    )
    echo_reach_m: float = option(
        600.0,
        doc="... how near, in a straight line, the echo's stop may lie to where the bus first"
        " heard a stretch for someone standing there to have heard the bus without a gap"
        " since that stop: a phone hears a beacon up to ~100 m off, the bus a token up to"
        " ~100 m off, and a bus drives ~400 m in a listening token's 30-s gap. Within it (a"
        " route looping back) one echo point does not board an old stretch; 0: never"
        " (docs/classifier.md, 'Forty-first pass')",
    )
    echo_other_adverts: int = option(
        3,
        doc="... a candidate whose last this many echoes in a row (0 = no echo, not"
        " counted) name another bus is not boarded on thin evidence (co-movement, track,"
        " door to door, tentative pieces): it has been with that bus longer; 0: off",
    )

    # --- flags / bookkeeping ------------------------------------------------------------
    flag_ttl_s: float = option(
        10.0, doc="a flag (alight request, assist, wait) counts while heard this recently"
    )
    outside_forget_s: float = option(
        60.0, doc="rids heard only outside (never candidates) are forgotten after this silence"
    )
    forget_s: float = option(
        900.0, doc="rids not heard for this long are forgotten (a rid lives 600 s)"
    )
    tick_s: float = option(0.5, doc="how often (trace time) timeouts are evaluated")
    checkpoint_s: float = option(
        10.0,
        doc="the daemon checkpoints the classifier's open presences in its store this often"
        " (trace time) and with every fare event, so a restart loses no ride; 0: never",
    )
    resume_gap_s: float = option(
        3.0,
        doc="after a restore from a checkpoint, a first record more than this long after the"
        " last one the checkpoint saw starts the resume (nothing was heard meanwhile: fades"
        " and rotations get their full timeouts from it); within it, nothing was missed and"
        " the pipeline goes on exactly as if it had not stopped",
    )
    stop_resume_max_s: float = option(
        600.0,
        doc="a clean stop (SIGTERM) mid-trip keeps the open presences in the checkpoint; a"
        " restart whose first record comes within this many seconds of the stop resumes"
        " them (an update, a new configuration), a later one closes them as of the stop"
        " instead, alighted at the stop where the bus stood (by the fade rules if it stood"
        " between stops; evidence.end_by 'stopped'), and ends the trip (a bus switched off"
        " for the night, a driver who signed off early); 0: every restart closes them. 600:"
        " a rid's interval, past which no restored rider's rid pairs with its next one",
    )

    # --- vehicle: stops, motion, GNSS ---------------------------------------------------
    stop_radius_m: float = option(
        40.0, doc="doors open within this distance of a stop of the trip serve that stop"
    )
    moving_speed_mps: float = option(1.5, doc="GNSS speed at or above which the bus is moving")
    offroute_m: float = option(
        120.0, doc="fixes farther than this from the pattern do not move its progress"
    )
    gnss_dropout_s: float = option(
        3.0, doc="no GNSS fix for this long is a dropout (tunnel): dead-reckon"
    )
    dead_reckon_max_s: float = option(
        120.0, doc="dead-reckon along the pattern at the last speed for at most this long"
    )
    dropout_match_m: float = option(
        250.0,
        doc="during a dropout a door opening serves the stop of the trip nearest the"
        " dead-reckoned position, if within this distance",
    )

    # --- vehicle: door sensor faults ----------------------------------------------------
    stuck_open_speed_mps: float = option(4.0, doc="doors 'open' at or above this speed ...")
    stuck_open_s: float = option(8.0, doc="... for this long means the door sensor is stuck open")
    dwell_min_s: float = option(
        6.0, doc="stopped near a stop this long is a dwell (a stop visit when doors unknown)"
    )
    stuck_closed_dwells: int = option(
        1, doc="this many dwells in a row with no door opening: door sensor stuck closed"
    )
