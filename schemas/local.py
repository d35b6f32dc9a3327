"""Conventions of a llorch host that every process reads the same way: where its state lives,
what its pool is called by default, and how numbers on a command line are checked."""

from __future__ import annotations

import argparse
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

DATA_DIR_ENV = "LLORCH_DATA_DIR"
T = TypeVar("T", int, float)


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """`$LLORCH_DATA_DIR`, else `$XDG_DATA_HOME/llorch`, else `~/.local/share/llorch`."""
    env = os.environ if env is None else env
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
