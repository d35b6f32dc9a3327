"""Where llorch keeps its local state (the same rule as the pool's: XDG data dir)."""

import os
from pathlib import Path


def default_data_dir() -> Path:
    if env := os.environ.get("LLORCH_DATA_DIR"):
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "llorch"
