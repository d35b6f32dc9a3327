"""The generated config: valid for nats-server, and the repo's nats.conf is its output."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from llorch_orch import natsconf
from llorch_orch.natsserver import find_binary
from schemas import Subjects

REPO_CONF = Path(__file__).resolve().parents[2] / "nats.conf"


def test_repo_config_is_the_generators_output_for_the_example_deployment() -> None:
    text = REPO_CONF.read_text()
    keys = re.findall(r'nkey: "(U[A-Z0-9]{55})"', text)
    example = natsconf.deployment(["gpu1"], ["alice"], ["etl"])
    assert len(keys) == len(example)
    identities = [
        natsconf.Identity(i.name, i.role, i.scope, k) for i, k in zip(example, keys, strict=True)
    ]
    store = Path("/var/lib/llorch/jetstream")
    assert natsconf.render(identities, Subjects(), "127.0.0.1:4222", store) == text


def test_repo_config_is_valid_for_nats_server() -> None:
    checked = subprocess.run([str(find_binary()), "-t", "-c", str(REPO_CONF)],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    assert checked.returncode == 0, checked.stderr


def test_seeds_are_private_and_kept_until_deleted(tmp_path: Path) -> None:
    first = natsconf.ensure_seeds(tmp_path / "creds", natsconf.deployment(["p1"]))
    assert oct((tmp_path / "creds").stat().st_mode & 0o777) == "0o700"
    assert {oct(p.stat().st_mode & 0o777) for p in (tmp_path / "creds").iterdir()} == {"0o600"}
    again = natsconf.ensure_seeds(tmp_path / "creds", natsconf.deployment(["p1"]))
    assert again == first
    natsconf.seed_file(tmp_path / "creds", "pool-p1").unlink()  # rotation: delete, regenerate
    rotated = natsconf.ensure_seeds(tmp_path / "creds", natsconf.deployment(["p1"]))
    changed = [a.name for a, b in zip(first, rotated, strict=True) if a.public_key != b.public_key]
    assert changed == ["pool-p1"]
