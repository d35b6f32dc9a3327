"""The style checks are part of the test suite: `python3 -m pytest` fails when ruff's lint or
format check, or mypy --strict over every package, does (their settings: pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _run(*args: str, timeout: float = 600) -> None:
    done = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        pytest.fail(f"`{' '.join(args)}` exited {done.returncode}:\n{done.stdout}{done.stderr}")


def test_ruff_check() -> None:
    _run("ruff", "check", ".")  # product code, tests, bench, docs' scripts


def test_ruff_format() -> None:
    _run("ruff", "format", "--check", ".")


def test_mypy_strict() -> None:
    """Over [tool.mypy] files, with strict = true (an incremental cache in .mypy_cache)."""
    _run("mypy")


def test_mypy_is_strict_over_every_package() -> None:
    """Every package setuptools ships is in mypy's files, and strict is on: a new package (or
    a config edit) cannot slip out of the check."""
    config = PYPROJECT["tool"]["mypy"]
    assert config.get("strict") is True
    patterns = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    tops = {p.removesuffix("*") for p in patterns}
    packages = {d.name for d in ROOT.iterdir() if (d / "__init__.py").is_file()} & tops
    assert packages >= {"schemas", "llorch_common", "llorch_orch", "llorch_pool", "llorch_worker"}
    assert packages <= set(config["files"]), sorted(packages - set(config["files"]))
    for override in config.get("overrides", []):  # never a relaxation for our own code
        modules = override["module"]
        ours = [
            m
            for m in ([modules] if isinstance(modules, str) else modules)
            if m.split(".")[0] in tops
        ]
        assert not ours, f"a mypy override names our own code: {ours}"
