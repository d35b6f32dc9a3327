"""`llorch nats-config --node`: one config per server of a cluster, from the one generator; and
the list of servers a pool is given, on its workers' command line."""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

import pytest

from llorch_common.local import servers
from llorch_orch import cli, natsconf
from llorch_orch.natsserver import find_binary
from llorch_orch.settings import ConfigError
from llorch_pool import cli as pool_cli
from llorch_pool.supervisor import Launch, PoolSettings, worker_argv
from llorch_worker import cli as worker_cli
from schemas import Subjects

NODES = [
    natsconf.parse_node("a=10.0.0.1:4222:6222"),
    natsconf.parse_node("b=10.0.0.2:4222:6222"),
    natsconf.parse_node("c=10.0.0.3:4300:6300"),
]


def _write(out: Path) -> list[str]:
    paths = natsconf.write_cluster(out, Subjects(), NODES, ["gpu1"], ["alice"], ["etl"])
    assert [p.name for p in paths] == ["nats-a.conf", "nats-b.conf", "nats-c.conf"]
    return [p.read_text() for p in paths]


def _accounts(text: str) -> str:
    return text[text.index("authorization {\n  users") :]


def test_each_node_names_itself_listens_on_its_own_address_and_routes_to_the_others(
    tmp_path: Path,
) -> None:
    texts = _write(tmp_path)
    secret = natsconf.ensure_route_secret(tmp_path / "creds")
    for node, text in zip(NODES, texts, strict=True):
        assert f'server_name: "{node.name}"' in text
        assert f'listen: "{node.host}:{node.client_port}"' in text
        assert f'listen: "{node.host}:{node.cluster_port}"' in text  # the cluster block's
        routes = re.findall(r'"nats-route://route:([0-9a-f]+)@([^"]+)"', text)
        others = [f"{n.host}:{n.cluster_port}" for n in NODES if n != node]
        assert routes == [(secret, where) for where in others]
        assert f'password: "{secret}"' in text
        store = tmp_path.resolve() / "jetstream" / node.name
        assert f'jetstream {{ store_dir: "{store}" }}' in text


def test_every_node_has_the_same_accounts_as_a_single_server_config(tmp_path: Path) -> None:
    texts = _write(tmp_path / "cluster")
    single = natsconf.write_deployment(
        tmp_path / "cluster", Subjects(), ["gpu1"], ["alice"], ["etl"]
    )
    assert {_accounts(t) for t in texts} == {_accounts(single.read_text())}
    assert 'nkey: "U' in texts[0]


def test_store_dir_and_secret_are_kept_and_the_configs_are_private(tmp_path: Path) -> None:
    first = natsconf.write_cluster(tmp_path, Subjects(), NODES, ["p"], store_dir=Path("/srv/js"))
    before = [p.read_text() for p in first]
    again = natsconf.write_cluster(tmp_path, Subjects(), NODES, ["p"], store_dir=Path("/srv/js"))
    assert [p.read_text() for p in again] == before  # seeds and route secret kept
    assert 'store_dir: "/srv/js/b"' in before[1]
    assert {oct(p.stat().st_mode & 0o777) for p in first} == {"0o600"}


def test_generated_configs_are_valid_for_nats_server(tmp_path: Path) -> None:
    for path in natsconf.write_cluster(tmp_path, Subjects(), NODES, ["p"]):
        checked = subprocess.run([str(find_binary()), "-t", "-c", str(path)],
                                 capture_output=True, text=True, timeout=30)  # fmt: skip
        assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize("bad", ["a=host:1", "a:1:2", "a.b=h:1:2", "=h:1:2", "a=h:x:2"])
def test_a_malformed_node_is_refused(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        natsconf.parse_node(bad)


def test_two_nodes_in_one_place_are_refused(tmp_path: Path) -> None:
    twin = natsconf.Node("d", "10.0.0.1", 4222, 7000)
    with pytest.raises(ConfigError, match="ports of its own"):
        natsconf.write_cluster(tmp_path, Subjects(), [*NODES, twin], ["p"])


def test_the_command_writes_one_config_per_node_and_none_without_nodes(tmp_path: Path) -> None:
    args = ["nats-config", "--out", str(tmp_path), "--pool-id", "p"]
    nodes = ["--node", "a=127.0.0.1:4222:6222", "--node", "b=127.0.0.1:4223:6223"]
    with pytest.raises(SystemExit) as done:
        cli.main([*args, *nodes, "--cluster-name", "east"])
    assert done.value.code == 0
    assert sorted(p.name for p in tmp_path.glob("*.conf")) == ["nats-a.conf", "nats-b.conf"]
    assert 'name: "east"' in (tmp_path / "nats-a.conf").read_text()
    with pytest.raises(SystemExit) as done:
        cli.main(args)
    assert done.value.code == 0 and (tmp_path / "nats.conf").is_file()
    assert "cluster" not in (tmp_path / "nats.conf").read_text()


def test_a_pools_list_of_servers_reaches_its_workers_whole() -> None:
    urls = "nats://10.0.0.1:4222,nats://10.0.0.2:4222"
    pool = pool_cli.build_parser().parse_args(["serve", "--nats-url", f"{urls}, "])
    settings = PoolSettings(pool.nats_url, "p1", "x.v1", Path("/d/logs"))
    launch = Launch("w1", "m", "/m.gguf", 512, 0, "cpu")
    worker = worker_cli.parse_args(worker_argv(settings, launch, python="py")[3:])
    assert servers(worker.nats_url) == urls.split(",")
