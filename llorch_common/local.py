"""Conventions of a llorch host that every process reads the same way: where its state lives,
what `llorch up` records there, what its pool is called by default, and how numbers on a
command line are checked."""

from __future__ import annotations

import argparse
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import msgspec

from llorch_common.connect import Credentials

DATA_DIR_ENV = "LLORCH_DATA_DIR"
NATS_URL_ENV = "LLORCH_NATS_URL"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
STACK_FILE = "stack.json"
T = TypeVar("T", int, float)


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """`$LLORCH_DATA_DIR`, else `$XDG_DATA_HOME/llorch`, else `~/.local/share/llorch`."""
    env = os.environ if env is None else env
    if env.get(DATA_DIR_ENV):
        return Path(env[DATA_DIR_ENV])
    if env.get("XDG_DATA_HOME"):
        return Path(env["XDG_DATA_HOME"]) / "llorch"
    return Path.home() / ".local" / "share" / "llorch"


def seed_file(creds_dir: Path, name: str) -> Path:
    """Where an identity's nkey seed lives (`llorch up` and `nats-config` write them)."""
    return creds_dir / f"{name}.nk"


class StackRecord(msgspec.Struct, frozen=True, kw_only=True):
    """`<data-dir>/stack.json`: written by `llorch up` once the stack serves, removed when it
    stops, so the commands of the same host find its URL and identities without being told."""

    nats_url: str
    creds_dir: str | None  # seeds per identity; None: an open server
    pid: int  # of `llorch up`


def write_stack_record(data_dir: Path, nats_url: str, creds_dir: Path | None) -> None:
    record = StackRecord(
        nats_url=nats_url,
        creds_dir=None if creds_dir is None else str(creds_dir),
        pid=os.getpid(),
    )
    tmp = data_dir / f".{STACK_FILE}.{os.getpid()}.tmp"
    tmp.write_bytes(msgspec.json.encode(record))
    tmp.replace(data_dir / STACK_FILE)  # a reader never sees half a file


def read_stack_record(data_dir: Path) -> StackRecord | None:
    """The record of a stack whose `llorch up` still runs; None if there is none."""
    try:
        record = msgspec.json.decode((data_dir / STACK_FILE).read_bytes(), type=StackRecord)
    except (OSError, msgspec.MsgspecError):
        return None
    return record if _alive(record.pid) else None


def servers(url: str) -> list[str]:
    """The servers of a NATS URL as the clients of NATS take it: one URL or a comma-separated
    list of them (`nats://a:4222,nats://b:4222`), blanks trimmed. For `nats.connect`, which
    takes a string as one URL: the list is what lets a connection move to another server of a
    cluster when its own goes away."""
    found = [part.strip() for part in url.split(",") if part.strip()]
    if not found:
        raise argparse.ArgumentTypeError(f"no NATS server URL in {url!r}")
    return found


def nats_url(text: str) -> str:
    """The argparse type of `--nats-url`: checked, blanks trimmed, and kept one string, as it
    travels on (a worker's command line, stack.json, logs)."""
    return ",".join(servers(text))


def add_nats_url_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nats-url",
        type=nats_url,
        default=os.environ.get(NATS_URL_ENV) or None,
        metavar="URL[,URL...]",
        help=f"NATS server(s), comma-separated (default ${NATS_URL_ENV}, else the URL "
        f"`llorch up` recorded in --data-dir, else {DEFAULT_NATS_URL})",
    )


def stack_endpoint(
    data_dir: Path, nats_url: str | None, credentials: Credentials, identity: str
) -> tuple[str, Credentials]:
    """Where and as whom a client process connects: flags and env first, else what
    `llorch up` recorded in the data dir (its URL, the seed it made for `identity`), else the
    defaults."""
    stack = read_stack_record(data_dir)
    url = nats_url or (stack.nats_url if stack else DEFAULT_NATS_URL)
    if not credentials.empty:
        return url, credentials
    creds_dir = Path(stack.creds_dir) if stack and stack.creds_dir else data_dir / "creds"
    seed = seed_file(creds_dir, identity)
    return url, Credentials(nkey_seed_file=seed) if seed.is_file() else credentials


def remove_stack_record(data_dir: Path) -> None:
    """Only our own: a second `llorch up` on the same data dir may have replaced it."""
    record = read_stack_record(data_dir)
    if record is not None and record.pid == os.getpid():
        (data_dir / STACK_FILE).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    return True


def sanitise_id(raw: str, fallback: str = "pool") -> str:
    """Map any text to an id of `[A-Za-z0-9_-]{1,64}` (ids travel inside subjects)."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "-", raw)[:64]
    return cleaned or fallback


def default_pool_id() -> str:
    """The host name, made a valid id."""
    return sanitise_id(socket.gethostname())


def _checked(value: T, ok: bool, what: str) -> T:
    if not ok:
        raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    return _checked(value, value >= 1, ">= 1")


def nonnegative_int(text: str) -> int:
    value = int(text)
    return _checked(value, value >= 0, ">= 0")


def positive_float(text: str) -> float:
    value = float(text)
    return _checked(value, value > 0, "> 0")
