"""Orchestrator configuration from a TOML file plus command-line overrides."""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from .core.config import Limits, ModelConfig, OrchConfig


class ConfigError(ValueError):
    pass


def load(path: Path | None, overrides: dict[str, Any] | None = None) -> OrchConfig:
    """TOML keys mirror OrchConfig's fields; `[models.NAME]` and `[default_model]` tables."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
    default = raw.setdefault("default_model", {})
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key in {f.name for f in dataclasses.fields(ModelConfig)}:
            default[key] = value
        else:
            raw[key] = value
    raw.pop("batch", None)  # the [batch] table is llorch_orch.batch's (it checks its keys)
    _check_keys(raw, OrchConfig, "")
    for name, table in raw.get("models", {}).items():
        _check_keys(table, ModelConfig, f"models.{name}.")
    # a model's table overrides [default_model] key by key, not as a whole
    raw["models"] = {name: {**default, **table} for name, table in raw.get("models", {}).items()}
    try:
        return msgspec.convert(raw, OrchConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid config: {exc}") from None


def _check_keys(table: dict[str, Any], kind: type, where: str) -> None:
    """A misspelt key is an error, not a silent default."""
    fields = {f.name: f for f in dataclasses.fields(kind)}
    for key, value in table.items():
        if key not in fields:
            raise ConfigError(f"unknown config key {where}{key} (known: {', '.join(fields)})")
        nested = {"default_model": ModelConfig, "limits": Limits}.get(key)
        if nested is not None and isinstance(value, dict):
            _check_keys(value, nested, f"{where}{key}.")


# (flag, OrchConfig/ModelConfig key, type, choices, help)
_FLAGS: list[tuple[str, str, type, list[str] | None, str]] = [
    ("--queue-capacity", "queue_capacity", int, None, "jobs waiting, both priorities"),
    ("--queue-policy", "queue_policy", str, ["reject", "drop-oldest-batch"], "when full"),
    ("--placement", "placement", str, ["best-fit", "spread"], "device choice for new workers"),
    ("--keep-alive", "keep_alive_s", float, None, "idle worker lifetime in s; 0 = never"),
    ("--max-workers", "max_workers", int, None, "workers per model; 0 = one per device"),
    ("--slots", "slots", int, None, "jobs a worker runs at once; 0 = by device"),
    ("--spawn-timeout", "spawn_timeout_s", float, None, "spawn to ready, s"),
    ("--stall-timeout", "stall_timeout_s", float, None, "silent running job => worker lost, s"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML file (keys: see docs/scheduling.md)")
    for flag, key, kind, choices, help_ in _FLAGS:
        parser.add_argument(flag, dest=key, type=kind, choices=choices, help=help_)
    parser.add_argument(
        "--record-events",
        type=Path,
        metavar="FILE",
        help="write every event the orchestrator's core is fed, with its outputs, to FILE "
        "(JSON lines, prompts included; replay: python -m llorch_orch.replay FILE)",
    )
    parser.add_argument(
        "--stream-replicas",
        type=int,
        metavar="N",
        help="servers holding each batch stream and the leader lease (JetStream replicas, 1-5; "
        "default [batch] replicas, else min(3, the NATS cluster's servers); an existing "
        "batch stream is changed)",
    )


def from_args(args: argparse.Namespace) -> OrchConfig:
    return load(args.config, {key: getattr(args, key) for _, key, *_ in _FLAGS})


def to_args(args: argparse.Namespace) -> list[str]:
    """The same options as flags, to hand to a child `llorch orch` process."""
    out = ["--config", str(args.config)] if args.config else []
    if args.record_events:  # resolved: the child may run in another cwd
        out += ["--record-events", str(args.record_events.resolve())]
    if args.stream_replicas is not None:
        out += ["--stream-replicas", str(args.stream_replicas)]
    for flag, key, *_ in _FLAGS:
        value = getattr(args, key, None)
        if value is not None:
            out += [flag, str(value)]
    return out
