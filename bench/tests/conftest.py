"""The bench's tests run with the suite's cache isolation: NLPJOBS_CACHE in a per-session tmp dir."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from isolation import _isolated_cache  # noqa: E402,F401  (autouse: registered by the import)
