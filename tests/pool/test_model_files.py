"""`models add` placing: in place, hard link or copy, and what it refuses before any copy."""

from __future__ import annotations

import errno
from pathlib import Path

import msgspec
import pytest

from llorch_common.connect import Credentials
from llorch_pool import announce, catalog, model_files
from llorch_pool.cli import progress_line
from schemas import ErrorCode, ProtocolError
from tests.pool.ggufgen import gguf_bytes, llama_kv, write_gguf


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def _gguf(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_gguf(path)


def _no_link(_source: Path, _target: Path) -> None:
    raise OSError(errno.EXDEV, "Invalid cross-device link")


def _add(data_dir: Path, path: Path, **kw: object) -> model_files.Added:
    kw.setdefault("in_place", False)
    kw.setdefault("progress", lambda _done: None)
    return model_files.add(data_dir, "tiny", path, **kw)  # type: ignore[arg-type]


def test_file_elsewhere_is_hard_linked_into_the_data_dir(data_dir: Path, tmp_path: Path) -> None:
    source = _gguf(tmp_path / "elsewhere" / "x.gguf")
    added = _add(data_dir, source)
    target = (data_dir / "models" / "tiny.gguf").resolve()
    assert (added.how, added.allowed, added.source) == ("linked", True, source.resolve())
    assert added.record.path == str(target)
    assert target.stat().st_ino == source.stat().st_ino  # the same file: no copy
    assert catalog.load(data_dir)["tiny"] == added.record


def test_without_a_link_the_file_is_copied_with_progress(data_dir: Path, tmp_path: Path) -> None:
    source = write_gguf(tmp_path / "x.gguf")
    seen: list[int] = []
    added = _add(data_dir, source, progress=seen.append, link=_no_link)
    target = Path(added.record.path)
    assert added.how == "copied"
    assert target.read_bytes() == source.read_bytes()
    assert target.stat().st_ino != source.stat().st_ino
    assert seen[-1] == source.stat().st_size
    assert [p.name for p in target.parent.iterdir()] == ["tiny.gguf"]  # no temporary left


def test_file_in_an_allowed_dir_is_registered_in_place(data_dir: Path) -> None:
    inside = _gguf(data_dir / "models" / "sub" / "m.gguf")
    added = _add(data_dir, inside)
    assert (added.how, added.allowed, added.record.path) == ("in place", True, str(inside))


def test_in_place_keeps_a_file_outside_and_says_it_is_not_allowed(
    data_dir: Path, tmp_path: Path
) -> None:
    source = _gguf(tmp_path / "big" / "m.gguf")
    added = _add(data_dir, source, in_place=True)
    assert (added.how, added.allowed, added.record.path) == ("in place", False, str(source))
    assert not (data_dir / "models").exists()


def test_re_adding_replaces_the_placed_file(data_dir: Path, tmp_path: Path) -> None:
    first = _add(data_dir, write_gguf(tmp_path / "a.gguf"))
    newer = tmp_path / "b.gguf"
    newer.write_bytes(gguf_bytes(llama_kv(**{"llama.context_length": 64})))
    second = _add(data_dir, newer)
    assert second.record.path == first.record.path
    assert second.record.sha256 != first.record.sha256
    assert catalog.resolve(data_dir, "tiny") == second.record


@pytest.mark.parametrize(
    ("name", "content", "code"),
    [
        ("tiny", b"not a gguf", ErrorCode.INVALID_PARAMS),
        ("bad.name", None, ErrorCode.INVALID_ID),
        (catalog.DEFAULT_MODEL, None, ErrorCode.INVALID_PARAMS),
    ],
)
def test_refusals_come_before_any_copy(
    data_dir: Path, tmp_path: Path, name: str, content: bytes | None, code: ErrorCode
) -> None:
    source = write_gguf(tmp_path / "x.gguf")
    if content is not None:
        source.write_bytes(content)
    with pytest.raises(ProtocolError) as err:
        model_files.add(data_dir, name, source, False, lambda _d: None, link=_no_link)
    assert err.value.code == code
    assert not (data_dir / "models").exists()


def test_missing_file_is_model_not_found(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ProtocolError) as err:
        _add(data_dir, tmp_path / "absent.gguf")
    assert err.value.code == ErrorCode.MODEL_NOT_FOUND


def test_progress_line() -> None:
    assert progress_line(2**29, 2**31) == "\rcopying: 0.50 GiB of 2.00 GiB (25%)"


def test_endpoint_prefers_the_given_url_then_the_running_stack(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    none = Credentials()
    assert announce.endpoint(data_dir, None, none) is None  # no stack: nothing to tell
    assert announce.endpoint(data_dir, "nats://h:1", none) == ("nats://h:1", none)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "admin.nk").write_text("SU...")
    data_dir.mkdir()
    record = {"nats_url": "nats://127.0.0.1:4999", "creds_dir": str(creds), "pid": 1}
    (data_dir / "stack.json").write_bytes(msgspec.json.encode(record))
    admin = Credentials(nkey_seed_file=creds / "admin.nk")
    assert announce.endpoint(data_dir, None, none) == ("nats://127.0.0.1:4999", admin)
    mine = Credentials(user="me")
    assert announce.endpoint(data_dir, "nats://h:1", mine) == ("nats://h:1", mine)
