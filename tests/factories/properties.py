"""How many examples the property tests draw: ``BUSBELL_PROPERTY_SCALE`` (default 1).

Each property test's ``max_examples`` is multiplied by it, so a hunt for rare worlds
(``BUSBELL_PROPERTY_SCALE=25 pytest -p no:cacheprovider --hypothesis-seed=N
tests/backend/test_journeys_properties.py``) draws many more without slowing the
default run. See docs/backend.md ("Property hunts").
"""

from __future__ import annotations

import os

SCALE = max(1, int(os.environ.get("BUSBELL_PROPERTY_SCALE", "1")))


def examples(n: int) -> int:
    """``n`` examples times :data:`SCALE`."""
    return n * SCALE
