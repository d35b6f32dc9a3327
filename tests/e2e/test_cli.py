"""The `llorch` command as users run it: `run`, and `up` with client commands beside it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from llorch_orch.natsserver import free_port

LLORCH = [sys.executable, "-m", "llorch_orch"]


def test_run_streams_one_generation_and_stops(tmp_path: Path) -> None:
    done = subprocess.run(
        [*LLORCH, "run", "Hello", "--max-tokens", "6", "--seed", "1", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert "6 tokens, finish length" in done.stderr


def test_up_serves_client_commands_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    up = subprocess.Popen(
        [*LLORCH, "up", "--port", str(port), "--data-dir", str(tmp_path)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert up.stderr is not None
        line = up.stderr.readline()  # blocks until the stack is up (or failed)
        assert "llorch is up" in line, line + up.stderr.read()
        # The client's seed from this data dir (auth is on); --nkey-seed FILE would do too.
        url = ["--nats-url", f"nats://127.0.0.1:{port}", "--nkey-seed",
               str(tmp_path / "creds" / "client-cli.nk")]  # fmt: skip
        gen = _llorch("generate", "Hi", "--max-tokens", "3", *url)
        assert gen.returncode == 0 and "3 tokens" in gen.stderr, gen.stderr
        state = _llorch("state", *url)
        assert state.returncode == 0 and "smollm2-135m" in state.stdout and "ready" in state.stdout
        models = _llorch("models", *url)
        assert models.returncode == 0 and "measured" in models.stdout, models.stdout
        readme = _readme_client(tmp_path / "creds" / "client-cli.nk", port)
        assert readme.returncode == 0 and "'type': 'end'" in readme.stdout, readme.stderr
        pids = _worker_pids(tmp_path)
        assert pids
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
        for pid in pids:
            assert not _alive(pid), f"worker {pid} outlived llorch up"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        if up.stderr is not None:
            up.stderr.close()


def test_client_command_without_server_says_what_to_do() -> None:
    done = _llorch("state", "--nats-url", f"nats://127.0.0.1:{free_port()}")
    assert done.returncode == 1
    assert "is `llorch up` running?" in done.stderr


def _readme_client(seed: Path, port: int) -> subprocess.CompletedProcess[str]:
    """The README's raw nats-py client, pointed at this stack's seed and port."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("~/.local/share/llorch/creds/client-cli.nk", str(seed))
    code = code.replace("nats://127.0.0.1:4222", f"nats://127.0.0.1:{port}")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def _llorch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LLORCH, *args], capture_output=True, text=True, timeout=60)


def _worker_pids(data_dir: Path) -> list[int]:
    """Pids of the workers whose parent is the pool serving this data dir."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"llorch_worker" in cmd and _parent_is_pool_of(int(proc.name), data_dir):
            pids.append(int(proc.name))
    return pids


def _parent_is_pool_of(pid: int, data_dir: Path) -> bool:
    try:
        ppid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        parent = (Path("/proc") / str(ppid) / "cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return False
    return b"llorch_pool" in parent and str(data_dir).encode() in parent


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = (Path("/proc") / str(pid) / "stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
