"""The worker's command line, as the pool manager spawns it."""

from __future__ import annotations

from pathlib import Path

import pytest

from llorch_worker.cli import parse_args

BASE = [
    "--nats-url",
    "nats://127.0.0.1:4222",
    "--worker-id",
    "w1",
    "--pool-id",
    "p1",
    "--model",
    "smol",
    "--model-path",
    "/m.gguf",
    "--n-ctx",
    "512",
    "--device",
    "0",
    "--device-kind",
    "cpu",
]


def test_required_flags_and_defaults() -> None:
    cfg = parse_args(BASE)
    assert (cfg.worker_id, cfg.pool_id, cfg.model, cfg.model_path) == (
        "w1",
        "p1",
        "smol",
        Path("/m.gguf"),
    )
    assert (cfg.n_ctx, cfg.device, cfg.gpu) == (512, 0, False)
    assert (cfg.prefix, cfg.threads, cfg.progress_interval) == ("llorch.v1", None, 0.25)
    assert cfg.slots == 1


def test_optional_flags() -> None:
    cfg = parse_args(
        [*BASE, "--prefix", "x.v2", "--threads", "2", "--progress-interval", "1", "--slots", "8"]
    )
    assert (cfg.prefix, cfg.threads, cfg.progress_interval, cfg.slots) == ("x.v2", 2, 1.0, 8)


@pytest.mark.parametrize(
    "extra",
    [
        ["--worker-id", "w.1"],
        ["--n-ctx", "0"],
        ["--device", "-1"],
        ["--device-kind", "tpu"],
        ["--slots", "0"],
        ["--slots", "257"],
    ],
)
def test_bad_flags_exit_with_usage_error(
    extra: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args([*BASE, *extra])
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err
