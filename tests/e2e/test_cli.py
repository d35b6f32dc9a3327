"""The `llorch` command as users run it: `run`, and `up` with client commands beside it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from llorch_orch import natsconf
from llorch_orch.natsconf import Identity
from llorch_orch.natsserver import free_port

LLORCH = [sys.executable, "-m", "llorch_orch"]


SUMMARY = re.compile(r"^-- (\d+) tokens, finish (stop|length), ", re.MULTILINE)


@pytest.mark.parametrize("attempt", range(3))
def test_the_readme_first_command_answers_the_question(tmp_path: Path, attempt: int) -> None:
    """`llorch run "Why is the sky blue?"` from a fresh data dir, as the quick start runs it:
    the answer is a chat turn (the model's template), streamed, then the summary line."""
    done = subprocess.run(
        [*LLORCH, "run", "Why is the sky blue?", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    summary = SUMMARY.search(done.stderr)
    assert summary is not None, done.stderr
    assert int(summary.group(1)) > 0 and done.stdout.strip()
    assert "Traceback" not in done.stderr and "<|im_end|>" not in done.stdout


def test_run_raw_streams_one_completion_and_stops(tmp_path: Path) -> None:
    done = subprocess.run(
        [*LLORCH, "run", "Hello", "--raw", "--max-tokens", "6", "--seed", "1", "--data-dir",
         str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert "6 tokens, finish length" in done.stderr


def test_up_serves_client_commands_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    up = subprocess.Popen(
        [*LLORCH, "up", "--port", str(port), "--data-dir", str(tmp_path), *_http()],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert up.stderr is not None
        line = up.stderr.readline()  # blocks until the stack is up (or failed)
        assert "llorch is up" in line, line + up.stderr.read()
        # Neither URL nor credentials: the data dir names both (`up` recorded its URL there)
        gen = _llorch(
            "generate", "Hi", "--raw", "--max-tokens", "3", "--job-id", "cli-1", data_dir=tmp_path
        )
        assert gen.returncode == 0 and "3 tokens" in gen.stderr, gen.stderr
        job = _llorch("job", "cli-1", data_dir=tmp_path)
        assert job.returncode == 0, job.stderr
        fields = dict(line.split(None, 1) for line in job.stdout.splitlines())
        assert (fields["state"], fields["attempts"]) == ("finished", "1"), job.stdout
        assert fields["tokens"].endswith(", 3 out"), job.stdout
        state = _llorch("state", "--data-dir", str(tmp_path))
        assert state.returncode == 0 and "smollm2-135m" in state.stdout and "ready" in state.stdout
        models = _llorch("models", data_dir=tmp_path)
        assert models.returncode == 0 and "measured" in models.stdout, models.stdout
        readme = _readme_client(tmp_path / "creds" / "client-cli.nk", port)
        assert readme.returncode == 0, readme.stderr
        end = re.search(r"'type': 'end'.*'tokens_out': (\d+)", readme.stdout)
        assert end is not None and int(end.group(1)) > 0, readme.stdout  # a chat answer
        for failure, says in _expected_failures(tmp_path):
            assert failure.returncode == 1, failure
            lines = failure.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("llorch: "), failure.stderr
            assert says in lines[0], (says, lines[0])
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


def _expected_failures(data_dir: Path) -> list[tuple[subprocess.CompletedProcess[str], str]]:
    """What a user gets wrong against a running stack, and what the one line must say."""
    (stranger,) = natsconf.ensure_seeds(data_dir / "elsewhere", [Identity("me", "client")])
    seed = str(natsconf.seed_file(data_dir / "elsewhere", stranger.name))
    return [
        (_llorch("generate", "Hi", "--model", "nosuch", data_dir=data_dir), "MODEL_NOT_FOUND"),
        (_llorch("generate", "Hi", "--temperature", "9", data_dir=data_dir), "INVALID_PARAMS"),
        (_llorch("generate", "", "--raw", data_dir=data_dir), "INVALID_PARAMS"),
        (_llorch("generate", "Hi", "--max-tokens", "2048", data_dir=data_dir), "CONTEXT_OVERFLOW"),
        (_llorch("cancel", "no-such-job", data_dir=data_dir), "NOT_FOUND"),
        (_llorch("state", "--nkey-seed", seed, data_dir=data_dir), f"credentials (nkey {seed})"),
        (_llorch("state", "--nkey-seed", str(data_dir / "nope.nk"), data_dir=data_dir), "nope.nk"),
    ]


def test_client_command_without_server_says_what_to_do(tmp_path: Path) -> None:
    done = _llorch("state", "--nats-url", f"nats://127.0.0.1:{free_port()}", data_dir=tmp_path)
    assert done.returncode == 1
    assert "is `llorch up` running?" in done.stderr and "Traceback" not in done.stderr


def _readme_client(seed: Path, port: int) -> subprocess.CompletedProcess[str]:
    """The README's raw nats-py client, pointed at this stack's seed and port."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("~/.local/share/llorch/creds/client-cli.nk", str(seed))
    code = code.replace("nats://127.0.0.1:4222", f"nats://127.0.0.1:{port}")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def _llorch(*args: str, data_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`llorch ARGS` as a user runs it: the data dir, when given, only through the env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLORCH_")}
    if data_dir is not None:
        env["LLORCH_DATA_DIR"] = str(data_dir)
    return subprocess.run([*LLORCH, *args], capture_output=True, text=True, timeout=120, env=env)


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


def _http() -> list[str]:
    """`llorch up`'s HTTP edge on a free port (its default, 8000, may be taken)."""
    return ["--http", f"127.0.0.1:{free_port()}"]
