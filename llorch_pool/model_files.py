"""`models add`: bring a model file where the pool may load it, then register it.

A pool loads files only from its allowed dirs (`paths.model_dirs`). A file already inside
`<data-dir>/models` or the bundled wheel's dir, or one the user asks to keep in place, is
registered where it lies. Any other file is hard-linked into `<data-dir>/models/<name>.gguf`
(same filesystem: instant, no extra space, the same bytes), else copied there.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from llorch_pool import catalog
from llorch_pool.paths import model_dirs, models_dir
from llorch_pool.spawn_checks import is_allowed

How = Literal["in place", "linked", "copied"]
Progress = Callable[[int], None]  # called with the bytes copied so far
_CHUNK = 8 << 20


@dataclass(frozen=True, slots=True)
class Added:
    record: catalog.ModelRecord
    source: Path  # the file the user named, resolved
    how: How
    allowed: bool  # the file lies in a dir every pool of this data dir may load from


def add(
    data_dir: Path,
    name: str,
    path: Path,
    in_place: bool,
    progress: Progress,
    link: Callable[[Path, Path], None] = os.link,
) -> Added:
    """Check, place (link or copy unless in place) and register; `link` is swappable so tests
    can take the copy path on one filesystem."""
    source = path.resolve()
    catalog.check_new_entry(name, source)  # before any copy: a bad file costs nothing
    allowed = is_allowed(source, model_dirs(data_dir, []))
    how: How = "in place"
    target = source
    if not (allowed or in_place):
        target = models_dir(data_dir).resolve() / f"{name}.gguf"
        how = bring_in(source, target, progress, link)
        allowed = True
    record = catalog.add_model(data_dir, name, target)
    return Added(record=record, source=source, how=how, allowed=allowed)


def bring_in(
    source: Path, target: Path, progress: Progress, link: Callable[[Path, Path], None]
) -> Literal["linked", "copied"]:
    """`target` becomes `source`'s bytes, through a temporary name: a serving pool never sees
    half a file, and a replaced model's running workers keep their own (still open) file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # left by a crashed add with the same pid
    try:
        try:
            link(source, tmp)
            how: Literal["linked", "copied"] = "linked"
        except OSError:  # another filesystem (EXDEV), or linking refused (protected_hardlinks)
            _copy(source, tmp, progress)
            how = "copied"
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return how


def _copy(source: Path, target: Path, progress: Progress) -> None:
    done = 0
    with source.open("rb") as src, target.open("wb") as dst:
        while chunk := src.read(_CHUNK):
            dst.write(chunk)
            done += len(chunk)
            progress(done)
