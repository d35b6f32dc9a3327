"""A recording of what the core was fed and what it output, as JSON lines.

The first line names the format, the core's incarnation and its configuration; every further
line is one event and the outputs it produced:

    {"format": "llorch-events/1", "incarnation": "3f9a1c", "config": {...}}
    {"event": ["Submit", {...}], "out": [["SendExecute", {...}], ...]}

Off by default (`--record-events FILE` on `llorch orch` and `llorch up`): it holds prompts.
`python -m llorch_orch.replay FILE` feeds the events to a fresh core and checks the outputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, get_args

import msgspec

from .core import OrchConfig, Output
from .core import events as ev

FORMAT = "llorch-events/1"
EVENT_TYPES: dict[str, type[Any]] = {t.__name__: t for t in get_args(ev.Event)}


class Header(msgspec.Struct):
    format: str
    incarnation: str
    config: OrchConfig


class Line(msgspec.Struct):
    event: tuple[str, msgspec.Raw]
    out: msgspec.Raw


def encode_outputs(outputs: list[Output]) -> bytes:
    """Outputs as JSON, each tagged with its type (what a replay compares)."""
    return msgspec.json.encode([(type(o).__name__, o) for o in outputs])


class EventLog:
    """Appends one line per event; line-buffered, so a crash loses at most the last event."""

    def __init__(self, path: Path, cfg: OrchConfig, incarnation: str) -> None:
        self._file: IO[bytes] = path.open("wb")
        header = Header(format=FORMAT, incarnation=incarnation, config=cfg)
        self._write(msgspec.json.encode(header))

    def write(self, event: ev.Event, outputs: list[Output]) -> None:
        tagged = (type(event).__name__, msgspec.Raw(msgspec.json.encode(event)))
        line = Line(event=tagged, out=msgspec.Raw(encode_outputs(outputs)))
        self._write(msgspec.json.encode(line))

    def _write(self, data: bytes) -> None:
        self._file.write(data + b"\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True, slots=True)
class Recorded:
    event: ev.Event
    out: bytes  # the outputs as recorded (`encode_outputs`)


def read(path: Path) -> tuple[Header, Iterator[Recorded]]:
    """The header and the recorded events of a file `EventLog` wrote."""
    lines = path.read_bytes().splitlines()
    if not lines:
        raise ValueError(f"{path} is empty")
    header = msgspec.json.decode(lines[0], type=Header)
    if header.format != FORMAT:
        raise ValueError(f"{path}: format {header.format!r}, expected {FORMAT!r}")

    def events() -> Iterator[Recorded]:
        for data in lines[1:]:
            line = msgspec.json.decode(data, type=Line)
            name, raw = line.event
            event = msgspec.json.decode(raw, type=EVENT_TYPES[name])
            yield Recorded(event, bytes(line.out))

    return header, events()
