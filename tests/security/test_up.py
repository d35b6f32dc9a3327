"""`llorch up` with auth on: per-role seeds (0600 in a 0700 dir), a server that refuses strangers
and listens on loopback, children that get their role's identity by file or env (never a secret
in argv or in a log), and the generate path working end to end under it."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from llorch_orch.natsserver import free_port
from tests.security.test_permissions import refusal

LLORCH = [sys.executable, "-m", "llorch_orch"]


def _procs_with(data_dir: Path) -> dict[int, list[bytes]]:
    """argv by pid of every process whose command line names this data dir, and of their
    children (workers)."""
    argv, parent = {}, {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit():
                argv[int(proc.name)] = (proc / "cmdline").read_bytes().split(b"\0")
                parent[int(proc.name)] = int(
                    (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
        except OSError:
            continue
    ours = {pid for pid, cmd in argv.items() if any(str(data_dir).encode() in p for p in cmd)}
    return {pid: cmd for pid, cmd in argv.items() if pid in ours or parent.get(pid) in ours}


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    port = free_port()
    env = {**os.environ, "LLORCH_DATA_DIR": str(tmp_path)}  # client commands find their seed
    proc = subprocess.Popen(
        [*LLORCH, "up", "--port", str(port), "--data-dir", str(tmp_path), "--cpu", "--http",
         f"127.0.0.1:{free_port()}"],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        line = proc.stderr.readline()  # blocks until the stack is up (or failed)
        assert "llorch is up" in line, line + proc.stderr.read()
        yield port, env
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        proc.stderr.close()


def test_up_runs_with_least_privilege(up: tuple[int, dict[str, str]], tmp_path: Path) -> None:
    port, env = up
    creds = tmp_path / "creds"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o700
    seeds = {p.name: p.read_text().strip() for p in creds.iterdir()}
    assert set(seeds) >= {"orchestrator.nk", "admin.nk", "client-cli.nk", "producer-cli.nk"}
    assert {stat.S_IMODE((creds / n).stat().st_mode) for n in seeds} == {0o600}
    assert all(seed.startswith("SU") for seed in seeds.values())

    url = f"nats://127.0.0.1:{port}"
    assert "Authorization" in asyncio.run(refusal(url))
    gen = subprocess.run([*LLORCH, "generate", "Hi", "--max-tokens", "3", "--nats-url", url],
                         capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert gen.returncode == 0 and "3 tokens" in gen.stderr, gen.stderr

    procs = _procs_with(tmp_path)
    server = [cmd for cmd in procs.values() if cmd[0].endswith(b"nats-server")]
    assert server and b"127.0.0.1" in server[0][server[0].index(b"-a") + 1]
    workers = [pid for pid, cmd in procs.items() if b"llorch_worker" in cmd]
    assert workers, procs
    for pid in workers:  # the worker identity of its pool, by env, naming a file
        assert _environ(pid)["LLORCH_NATS_NKEY_SEED"].endswith("/worker-" + _pool_id(procs))
    texts = [b" ".join(cmd).decode() for cmd in procs.values()]
    texts += [p.read_text(errors="replace") for p in (tmp_path / "logs").iterdir()]
    texts.append((tmp_path / "nats.conf").read_text())
    for seed in seeds.values():
        assert not any(seed in text for text in texts), "a seed leaked into argv, logs or config"


def _pool_id(procs: dict[int, list[bytes]]) -> str:
    for cmd in procs.values():
        if b"llorch_pool" in cmd:
            return cmd[cmd.index(b"--pool-id") + 1].decode() + ".nk"
    raise AssertionError("no pool process")
