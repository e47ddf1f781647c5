"""The cache isolation every test tier shares (tests/ and bench/tests/ import it into their conftest)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point NLPJOBS_CACHE at a per-session tmp dir so no test writes to ~/.cache."""
    cache = tmp_path_factory.mktemp("nlpjobs-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NLPJOBS_CACHE", str(cache))
        yield cache
