from pathlib import Path

from llorch_common.local import default_data_dir, sanitise_id
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
