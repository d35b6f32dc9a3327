"""`python -m llorch_pool` as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from llorch_orch.natsserver import free_port
from llorch_pool import catalog
from tests.pool.conftest import REPO
from tests.pool.ggufgen import write_gguf


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llorch_pool", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_models_add_then_list(tmp_path: Path, model_path: Path) -> None:
    data = tmp_path / "data"
    gguf = write_gguf(tmp_path / "tiny.gguf")
    added = run("models", "add", "tiny", str(gguf), "--data-dir", str(data))
    assert added.returncode == 0, added.stderr
    record = catalog.load(data)["tiny"]
    assert record.sha256[:16] in added.stdout
    assert f"linked {gguf} as {record.path}" in added.stdout
    assert "no `llorch up` runs on" in added.stdout  # and nothing to wait for
    listed = run("models", "list", "--data-dir", str(data))
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    assert set(rows) == {"tiny", catalog.DEFAULT_MODEL}
    assert str(model_path.resolve()) in rows[catalog.DEFAULT_MODEL]
    Path(record.path).unlink()
    assert "file missing" in run("models", "list", "--data-dir", str(data)).stdout


def test_data_dir_from_environment(tmp_path: Path) -> None:
    env = {**os.environ, "LLORCH_DATA_DIR": str(tmp_path / "envdata")}
    added = run("models", "add", "tiny", str(write_gguf(tmp_path / "t.gguf")), env=env)
    assert added.returncode == 0, added.stderr
    assert "tiny" in catalog.load(tmp_path / "envdata")


def test_add_with_no_server_at_the_url_says_when_it_will_be_served(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    gguf = write_gguf(tmp_path / "t.gguf")
    added = run("models", "add", "t", str(gguf), "--data-dir", str(tmp_path), "--nats-url", url)
    assert added.returncode == 0, added.stderr
    assert f"not served yet: no NATS server at {url}" in added.stdout
    assert "will be served when `llorch up` starts" in added.stdout


def test_errors_exit_2_with_their_code(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    missing = run("models", "add", "m", str(tmp_path / "absent.gguf"), "--data-dir", data)
    assert (missing.returncode, "MODEL_NOT_FOUND" in missing.stderr) == (2, True)
    bad_id = run("serve", "--pool-id", "a.b", "--data-dir", data)
    assert (bad_id.returncode, "INVALID_ID" in bad_id.stderr) == (2, True)


def test_device_memory_limit_is_a_positive_byte_count() -> None:
    from llorch_pool.cli import build_parser

    args = build_parser().parse_args(["serve", "--device-memory-limit", str(12 * 2**30)])
    assert args.device_memory_limit == 12 * 2**30
    assert build_parser().parse_args(["serve"]).device_memory_limit is None
    refused = run("serve", "--device-memory-limit", "0")
    assert refused.returncode == 2 and "must be >= 1" in refused.stderr
