"""Configuration of the simulator (``busbell config sim`` lists every option).

Load with ``busbell.load_config(SimConfig, path)``; every option can be overridden
from the environment as ``BUSBELL_<SECTION>__<KEY>`` (e.g. ``BUSBELL_RADIO__SENSITIVITY_DBM``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from busbell import option
from busbell._mqtt import MqttSettings
from firmware_sim._output import GenerateOptions
from firmware_sim._radio import DEFAULT_PARAMS, Loss, RadioParams

__all__ = ["CONFIG_CLASS", "LiveSettings", "RadioSettings", "ScenarioSettings", "SimConfig"]


@dataclass(frozen=True, slots=True)
class ScenarioSettings:
    """How scenarios are generated (the ``[scenario]`` section)."""

    seed: int = option(1, doc="Seed of every random draw and every simulated key.")
    scale: str = option("small", doc="small (CI, seconds) or full (the accuracy report).")
    gtfs_dir: Path | None = option(
        None, doc="GTFS static directory to simulate; default: the packaged sample feed."
    )
    cutoff_m: float = option(
        100.0, doc="Tokens farther than this from a bus are not sampled (below sensitivity)."
    )
    pass_radius_m: float = option(
        30.0, doc="A token within this distance of a bus it does not ride is a bystander pass."
    )
    alight_hold_s: float = option(
        5.0, doc="How long a token holds the ALIGHT flag after the stop-bell button press."
    )
    gnss_sigma_m: float = option(
        3.5, doc="GNSS error per axis, 1 sigma (3.5 m per axis is ~5 m horizontal RMS)."
    )
    tq_window_s: float = option(
        60.0, doc="The edge's tq window; legs of tokens whose clock is off by more are flagged."
    )

    def __post_init__(self) -> None:
        """Validate.

        Raises:
            ValueError: bad scale or a non-positive distance.
        """
        if self.scale not in ("small", "full"):
            raise ValueError(f"scenario.scale must be small or full, got {self.scale!r}")
        if min(self.cutoff_m, self.pass_radius_m, self.alight_hold_s) <= 0:
            raise ValueError("cutoff_m, pass_radius_m and alight_hold_s must be positive")


@dataclass(frozen=True, slots=True)
class RadioSettings:
    """The most useful radio parameters (the ``[radio]`` section; docs/radio.md)."""

    tx_eirp_dbm: float = option(DEFAULT_PARAMS.tx_eirp_dbm, doc="Token radiated power, dBm.")
    sensitivity_dbm: float = option(
        DEFAULT_PARAMS.sensitivity_dbm, doc="Weakest packet the bus scanner decodes, dBm."
    )
    scan_interval_s: float = option(DEFAULT_PARAMS.scan_interval_s, doc="Scan interval, s.")
    scan_window_s: float = option(DEFAULT_PARAMS.scan_window_s, doc="Scan window, s.")
    shell_loss_db: float = option(
        DEFAULT_PARAMS.shell_loss.mean_db, doc="Mean bus-body penetration loss, dB."
    )
    device_offset_std_db: float = option(
        DEFAULT_PARAMS.device_offset_std_db, doc="Spread of per-token power offsets, dB."
    )
    capture_db: float = option(
        DEFAULT_PARAMS.capture_db,
        doc=(
            "Co-channel rejection of the scanner, dB: an overlapped packet this far above the "
            "packets it overlaps is still decoded (inf: every overlapped packet is lost)."
        ),
    )

    def params(self) -> RadioParams:
        """The radio model parameters with these overrides."""
        return replace(
            DEFAULT_PARAMS,
            tx_eirp_dbm=self.tx_eirp_dbm,
            sensitivity_dbm=self.sensitivity_dbm,
            scan_interval_s=self.scan_interval_s,
            scan_window_s=self.scan_window_s,
            shell_loss=Loss(self.shell_loss_db, DEFAULT_PARAMS.shell_loss.std_db),
            device_offset_std_db=self.device_offset_std_db,
            capture_db=self.capture_db,
        )


@dataclass(frozen=True, slots=True)
class LiveSettings:
    """Live mode (``busbell sim run``; the ``[live]`` section)."""

    speed: float = option(1.0, doc="Time factor: 2.0 plays the scenario twice as fast.")
    adv_target: str = option(
        "", doc="tcp://HOST:PORT of the edge's StreamSource for adverts; empty: none."
    )
    now: bool = option(
        True, doc="Shift the scenario to start now, so token times match the wall clock."
    )


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Root configuration of ``busbell sim``."""

    scenario: ScenarioSettings = option(factory=ScenarioSettings, doc="Scenario generation.")
    radio: RadioSettings = option(factory=RadioSettings, doc="Radio model.")
    live: LiveSettings = option(factory=LiveSettings, doc="Live mode.")
    mqtt: MqttSettings = option(factory=MqttSettings, doc="Broker of live mode.")

    def generate_options(self, start_at: float | None = None) -> GenerateOptions:
        """The generator options this configuration selects."""
        s = self.scenario
        return GenerateOptions(
            gtfs_dir=s.gtfs_dir,
            radio=self.radio.params(),
            cutoff_m=s.cutoff_m,
            pass_radius_m=s.pass_radius_m,
            alight_hold_s=s.alight_hold_s,
            gnss_sigma_m=s.gnss_sigma_m,
            tq_window_s=s.tq_window_s,
            start_at=start_at,
        )


CONFIG_CLASS = SimConfig
