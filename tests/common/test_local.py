import argparse
from pathlib import Path

import pytest

from llorch_common.local import add_nats_url_argument, default_data_dir, sanitise_id, servers
from schemas import is_valid_id


def test_data_dir_precedence() -> None:
    assert default_data_dir({"LLORCH_DATA_DIR": "/a", "XDG_DATA_HOME": "/x"}) == Path("/a")
    assert default_data_dir({"XDG_DATA_HOME": "/x"}) == Path("/x/llorch")
    assert default_data_dir({}) == Path.home() / ".local/share/llorch"


def test_sanitise_id() -> None:
    assert sanitise_id("gpu-box.example.com") == "gpu-box-example-com"
    assert sanitise_id("") == "pool"
    long = sanitise_id("é*>" * 40)
    assert is_valid_id(long) and len(long) == 64


def test_servers_split_a_comma_list_as_nats_clients_do() -> None:
    assert servers("nats://a:4222") == ["nats://a:4222"]
    assert servers(" nats://a:4222 , nats://b:4223,,") == ["nats://a:4222", "nats://b:4223"]
    with pytest.raises(argparse.ArgumentTypeError, match="no NATS server URL"):
        servers(" , ")


def test_nats_url_flag_keeps_the_list_one_string_and_refuses_an_empty_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser()
    add_nats_url_argument(parser)
    args = parser.parse_args(["--nats-url", "nats://a:1, nats://b:2"])
    assert args.nats_url == "nats://a:1,nats://b:2"  # travels on as one argument
    with pytest.raises(SystemExit):
        parser.parse_args(["--nats-url", ","])
    assert "argument --nats-url: no NATS server URL in ','" in capsys.readouterr().err
