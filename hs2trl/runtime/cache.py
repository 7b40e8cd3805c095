"""Where hs2trl keeps what it makes once and reuses: converted models, the demo data, downloaded benchmark files."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$HS2TRL_CACHE`, else ~/.cache/hs2trl."""
    return Path(os.environ.get("HS2TRL_CACHE", Path.home() / ".cache" / "hs2trl"))
