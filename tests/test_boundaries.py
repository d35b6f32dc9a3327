"""Package boundaries, read from the source (ast), not from what happens to be importable.

- the components (`llorch_orch`, `llorch_pool`, `llorch_worker`, and the HTTP edge
  `llorch_http`) never import each other: they talk only over NATS;
- `llorch_common` (the runtime they share) imports `schemas` and no llorch package besides;
- `schemas` (the wire contract) imports no llorch package at all;
- `schemas` and the orchestrator's pure core (`llorch_orch/core`) import no I/O library (no
  network, process, file, clock, thread or telemetry module) and no third-party package but
  msgspec, and call no I/O builtin; the core draws no randomness either (its decisions are
  replayable from its inputs).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ("llorch_http", "llorch_orch", "llorch_pool", "llorch_worker")

# Standard-library modules that do I/O or load code: the wire contract and the pure core use none.
NETWORK = {"socket", "socketserver", "ssl", "select", "selectors", "http", "urllib", "ftplib"}
PROCESSES = {"subprocess", "multiprocessing", "signal", "os", "sys", "atexit", "faulthandler"}
FILES = {"io", "pathlib", "shutil", "tempfile", "glob", "fcntl", "mmap", "sqlite3", "logging"}
CONCURRENCY_AND_CLOCK = {"asyncio", "concurrent", "threading", "time", "datetime"}
HOST = {"ctypes", "importlib", "platform", "pwd", "grp", "getpass", "resource", "pty", "tty"}
IO_STDLIB = frozenset(NETWORK | PROCESSES | FILES | CONCURRENCY_AND_CLOCK | HOST)
# Randomness: the core's decisions must follow from its inputs alone.
RANDOM_STDLIB = frozenset({"random", "secrets", "uuid"})
# The only third-party packages the contract and the core may use (typing_extensions: for the
# type checker only, `TypeForm` in schemas.codec).
THIRD_PARTY_ALLOWED = frozenset({"msgspec", "typing_extensions"})
IO_BUILTINS = frozenset({"open", "print", "input", "breakpoint", "exec", "eval", "__import__"})
# schemas.ids.new_id draws a job/batch id from the OS's randomness (not I/O of the process;
# the core never calls it: the shell hands it ids).
EXEMPT = frozenset({("schemas/ids.py", "secrets")})


@dataclass(frozen=True)
class Imported:
    file: str  # relative to the repo root
    line: int
    module: str  # the absolute dotted name

    @property
    def top(self) -> str:
        return self.module.split(".")[0]

    def __str__(self) -> str:
        return f"{self.file}:{self.line} imports {self.module}"


def sources(package: str) -> list[Path]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no source under {package}/"
    return files


def _resolve(path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = list(path.relative_to(ROOT).with_suffix("").parts)
    base = base[: len(base) - node.level]  # a module's own name counts as one level
    return ".".join([*base, *([node.module] if node.module else [])])


def imports(package: str) -> Iterator[Imported]:
    """Every import statement under a package, wherever it is (also inside functions and
    `if TYPE_CHECKING:`), relative imports resolved to absolute names."""
    for path in sources(package):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), rel)):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Imported(rel, node.lineno, alias.name)
            elif isinstance(node, ast.ImportFrom):
                module = _resolve(path, node)
                yield Imported(rel, node.lineno, module)
                for alias in node.names:  # `from schemas import tracing` names a module too
                    yield Imported(rel, node.lineno, f"{module}.{alias.name}")


def builtin_calls(package: str, names: frozenset[str]) -> list[str]:
    found = []
    for path in sources(package):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), rel)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in names
            ):
                found.append(f"{rel}:{node.lineno} calls {node.func.id}()")
    return found


def _ours(imported: Imported) -> bool:
    return imported.top == "schemas" or imported.top.startswith("llorch_")


def _fail(offences: list[Imported] | list[str], rule: str) -> None:
    listed = "\n  ".join(sorted({str(o) for o in offences}))
    pytest.fail(f"{rule}:\n  {listed}")


def test_the_scanner_sees_imports() -> None:
    """A vacuous scan would pass every rule below: it must see what is surely there."""
    seen = {(i.file, i.module) for i in imports("llorch_orch")}
    assert ("llorch_orch/service.py", "nats") in seen
    assert ("llorch_orch/core/tenancy.py", "schemas.subjects") in seen
    assert any(f == "llorch_orch/batch/cli.py" and m.startswith("llorch_orch.") for f, m in seen)


@pytest.mark.parametrize("component", COMPONENTS)
def test_components_never_import_each_other(component: str) -> None:
    others = set(COMPONENTS) - {component}
    bad = [i for i in imports(component) if i.top in others]
    if bad:
        _fail(bad, f"{component} imports another component (they talk only over NATS)")


def test_common_imports_only_schemas_of_ours() -> None:
    bad = [
        i
        for i in imports("llorch_common")
        if _ours(i) and i.top not in ("llorch_common", "schemas")
    ]
    if bad:
        _fail(bad, "llorch_common imports a llorch package besides schemas")


def test_schemas_imports_nothing_of_ours() -> None:
    bad = [i for i in imports("schemas") if _ours(i) and i.top != "schemas"]
    if bad:
        _fail(bad, "the wire contract imports a llorch package")


def test_the_core_imports_only_the_contract_of_ours() -> None:
    bad = [
        i
        for i in imports("llorch_orch/core")
        if _ours(i) and i.top != "schemas" and not i.module.startswith("llorch_orch.core")
    ]
    if bad:
        _fail(bad, "the pure core imports more of llorch than schemas and itself")


def _impure(package: str, denied: frozenset[str]) -> list[Imported]:
    bad = []
    for i in imports(package):
        if _ours(i) or (i.file, i.top) in EXEMPT:
            continue
        if i.top in sys.stdlib_module_names:
            if i.top in denied:
                bad.append(i)
        elif i.top != "__future__" and i.top not in THIRD_PARTY_ALLOWED:
            bad.append(i)  # nats, opentelemetry, llama_cpp, pynvml, nkeys, …
    return bad


@pytest.mark.parametrize(
    ("package", "denied"),
    [("schemas", IO_STDLIB | RANDOM_STDLIB), ("llorch_orch/core", IO_STDLIB | RANDOM_STDLIB)],
)
def test_contract_and_core_import_no_io(package: str, denied: frozenset[str]) -> None:
    bad = _impure(package, denied)
    if bad:
        _fail(bad, f"{package} imports an I/O, randomness or third-party module")
    calls = builtin_calls(package, IO_BUILTINS)
    if calls:
        _fail(calls, f"{package} calls an I/O builtin")


def test_the_io_rule_can_fail() -> None:
    """The same rule over a shell module names what it imports."""
    bad = {i.module for i in _impure("llorch_orch", IO_STDLIB | RANDOM_STDLIB)}
    assert {"asyncio", "nats"} <= bad
