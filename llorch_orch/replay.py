"""Replay a recording (`--record-events FILE`) through a fresh core and check that it outputs
exactly what the recorded one did, event by event.

    python -m llorch_orch.replay FILE

Exit 0 when every output matches; 1 at the first difference, which is printed.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from .core import Core
from .eventlog import encode_outputs, read


@dataclass(frozen=True, slots=True)
class Mismatch:
    index: int  # 1-based, among the recorded events
    event: str
    recorded: bytes
    replayed: bytes


def replay(path: Path) -> tuple[int, Mismatch | None]:
    """Events replayed, and the first whose outputs differ (None: all identical)."""
    header, recorded = read(path)
    core = Core(header.config, header.incarnation)
    count = 0
    for count, line in enumerate(recorded, 1):
        replayed = encode_outputs(core.handle(line.event))
        if replayed != line.out:
            return count, Mismatch(count, type(line.event).__name__, line.out, replayed)
    return count, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llorch_orch.replay", description=__doc__)
    parser.add_argument("file", type=Path, help="a recording of `--record-events`")
    args = parser.parse_args(argv)
    try:
        count, mismatch = replay(args.file)
    except (OSError, ValueError) as exc:
        print(f"cannot replay {args.file}: {exc}", file=sys.stderr)
        return 1
    if mismatch is None:
        print(f"replayed {count} events: every output identical")
        return 0
    print(f"event {mismatch.index} ({mismatch.event}): outputs differ", file=sys.stderr)
    print(f"  recorded: {mismatch.recorded.decode()}", file=sys.stderr)
    print(f"  replayed: {mismatch.replayed.decode()}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
