"""Fuzz settings: ``BUSBELL_FUZZ_EXAMPLES`` examples per property (CI default is small).

``BUSBELL_FUZZ_EXAMPLES=20000 pytest tests/fuzz -p no:cacheprovider`` runs the full
campaign reported in docs/reliability.md.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("BUSBELL_FUZZ_EXAMPLES", "200"))

settings.register_profile(
    "busbell-fuzz",
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=os.environ.get("BUSBELL_FUZZ_RANDOM") != "1",
)
