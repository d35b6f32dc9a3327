"""The orchestrator's TOML config and flags."""

from pathlib import Path

import pytest

from llorch_orch.settings import ConfigError, load


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "orch.toml"
    path.write_text(text)
    return path


def test_model_table_overrides_default_model_key_by_key(tmp_path: Path) -> None:
    cfg = load(
        write(tmp_path, '[default_model]\nkeep_alive_s = 5\n[models."x"]\nmax_workers = 3\n')
    )
    assert cfg.model("x").max_workers == 3 and cfg.model("x").keep_alive_s == 5
    assert cfg.model("other").keep_alive_s == 5 and cfg.model("other").max_workers == 0


def test_flags_override_the_file(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "queue_capacity = 7\n"), {"queue_capacity": 9, "max_workers": 2})
    assert cfg.queue_capacity == 9 and cfg.default_model.max_workers == 2


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("queue_capacty = 3\n", "queue_capacty"),
        ("[limits]\nmax_tokenz = 3\n", "limits.max_tokenz"),
        ('[models."m"]\nkeepalive = 3\n', "models.m.keepalive"),
    ],
)
def test_misspelt_keys_are_errors(tmp_path: Path, text: str, where: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown config key {where}"):
        load(write(tmp_path, text))


def test_wrong_types_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid config"):
        load(write(tmp_path, 'queue_capacity = "many"\n'))
