"""python-dbusmock template for the edge's BlueZ tests: the simulator's emulated bluetoothd.

dbusmock loads a template from a file path; the template itself is emulated hardware and
lives in the simulator (``firmware_sim/_bluez_template.py``, documented there and in
docs/ble-host.md). This file only re-exports it, so the tests keep one path to load.
"""

from __future__ import annotations

from firmware_sim._bluez_template import *  # noqa: F403
