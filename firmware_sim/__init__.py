"""busbell firmware_sim: the simulated world around a bus (tokens, stops, vehicles, radio).

See ``docs/simulator.md``. Public API: scenario generation (:func:`generate`,
:func:`run_scenario`), the suite (:data:`SCENARIOS`), scoring (:func:`score_scenario`,
:func:`score_suite`) and the live hooks (:func:`timed_adverts`, :func:`run_live`,
the emulated bluetoothd of the BlueZ path: :class:`PrivateBluez`, :class:`BluezFeed`).
"""

from __future__ import annotations

from firmware_sim._bluez_feed import BluezFeed, PrivateBluez
from firmware_sim._live import run_live, timed_adverts, timed_records
from firmware_sim._output import GenerateOptions, generate, group_journeys, run_scenario
from firmware_sim._scenarios import SCENARIOS, build_scenario, scenario_names
from firmware_sim._score import ScenarioScore, SuiteScore, score_scenario, score_suite
from firmware_sim._tokens import DeviceKind, TokenDevice
from firmware_sim._world import TokenEnvelope

__all__ = [
    "SCENARIOS",
    "BluezFeed",
    "DeviceKind",
    "GenerateOptions",
    "PrivateBluez",
    "ScenarioScore",
    "SuiteScore",
    "TokenDevice",
    "TokenEnvelope",
    "build_scenario",
    "generate",
    "group_journeys",
    "run_live",
    "run_scenario",
    "scenario_names",
    "score_scenario",
    "score_suite",
    "timed_adverts",
    "timed_records",
]
