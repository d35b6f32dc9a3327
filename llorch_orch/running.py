"""What `llorch up` leaves in its data dir for the client commands of the same host:
`<data-dir>/stack.json` names the NATS URL it serves on and where the identities' seeds are,
so `llorch generate`/`state`/... find a stack started with `--port` or `--nats-url` without
being told again. Written when the stack is up, removed when it stops.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

RECORD_FILE = "stack.json"


class Running(msgspec.Struct, frozen=True, kw_only=True):
    nats_url: str
    creds_dir: str | None  # seeds per identity (natsconf); None: an open server
    pid: int  # of `llorch up`


def write(data_dir: Path, nats_url: str, creds_dir: Path | None) -> None:
    record = Running(
        nats_url=nats_url, creds_dir=None if creds_dir is None else str(creds_dir),
        pid=os.getpid(),
    )  # fmt: skip
    tmp = data_dir / f".{RECORD_FILE}.{os.getpid()}.tmp"
    tmp.write_bytes(msgspec.json.encode(record))
    tmp.replace(data_dir / RECORD_FILE)  # a reader never sees half a file


def read(data_dir: Path) -> Running | None:
    """The record of a stack whose `llorch up` still runs; None if there is none."""
    try:
        record = msgspec.json.decode((data_dir / RECORD_FILE).read_bytes(), type=Running)
    except (OSError, msgspec.MsgspecError):
        return None
    return record if _alive(record.pid) else None


def remove(data_dir: Path) -> None:
    """Only our own record: a second `llorch up` on the same data dir may have replaced it."""
    record = read(data_dir)
    if record is not None and record.pid == os.getpid():
        (data_dir / RECORD_FILE).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    return True
