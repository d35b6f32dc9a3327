import hashlib
import os
from pathlib import Path

import pytest

from llorch_pool import catalog
from schemas import ErrorCode, ProtocolError
from tests.pool.ggufgen import gguf_bytes, llama_kv, write_gguf


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    return write_gguf(tmp_path / "tiny.gguf")


def test_default_entry_resolves_to_bundled_file(data_dir: Path, model_path: Path) -> None:
    catalog.ensure_default(data_dir)
    record = catalog.resolve(data_dir, catalog.DEFAULT_MODEL)
    assert Path(record.path) == model_path.resolve()
    assert record.size_bytes == model_path.stat().st_size
    assert record.sha256 == hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert record.n_layers == 30


def test_default_entry_cannot_be_repointed(data_dir: Path, gguf: Path, model_path: Path) -> None:
    with pytest.raises(ProtocolError) as err:
        catalog.add_model(data_dir, catalog.DEFAULT_MODEL, gguf)
    assert err.value.code == ErrorCode.INVALID_PARAMS


def test_add_hashes_reads_meta_and_persists(data_dir: Path, gguf: Path) -> None:
    added = catalog.add_model(data_dir, "tiny", gguf)
    assert added.sha256 == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert (added.n_ctx_train, added.n_layers, added.kv_bytes_per_token) == (4096, 4, 1024)
    assert catalog.load(data_dir) == {"tiny": added}
    [info] = catalog.present_models(data_dir)
    assert (info.name, info.sha256, info.size_bytes) == ("tiny", added.sha256, gguf.stat().st_size)


def test_unchanged_stat_is_trusted_without_rehash(data_dir: Path, gguf: Path) -> None:
    added = catalog.add_model(data_dir, "tiny", gguf)
    st = gguf.stat()
    # Same size, same mtime, different bytes: only a re-hash could notice, and none happens.
    gguf.write_bytes(gguf_bytes(llama_kv(**{"general.name": "tinY"})))
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert catalog.resolve(data_dir, "tiny") == added


def test_touched_file_is_rehashed_and_cache_key_updated(data_dir: Path, gguf: Path) -> None:
    added = catalog.add_model(data_dir, "tiny", gguf)
    os.utime(gguf, ns=(added.mtime_ns + 10**9, added.mtime_ns + 10**9))
    verified = catalog.resolve(data_dir, "tiny")
    assert verified.sha256 == added.sha256
    assert verified.mtime_ns == added.mtime_ns + 10**9
    assert catalog.load(data_dir)["tiny"] == verified


def test_changed_file_is_untrusted(data_dir: Path, gguf: Path) -> None:
    catalog.add_model(data_dir, "tiny", gguf)
    write_gguf(gguf, llama_kv(**{"llama.context_length": 8192}))
    with pytest.raises(ProtocolError) as err:
        catalog.resolve(data_dir, "tiny")
    assert err.value.code == ErrorCode.UNTRUSTED_MODEL


def test_missing_file_is_model_not_found(data_dir: Path, gguf: Path) -> None:
    catalog.add_model(data_dir, "tiny", gguf)
    gguf.unlink()
    with pytest.raises(ProtocolError) as err:
        catalog.resolve(data_dir, "tiny")
    assert err.value.code == ErrorCode.MODEL_NOT_FOUND
    assert catalog.present_models(data_dir) == []


def test_unknown_name_is_model_not_found(data_dir: Path) -> None:
    with pytest.raises(ProtocolError) as err:
        catalog.resolve(data_dir, "nope")
    assert err.value.code == ErrorCode.MODEL_NOT_FOUND


def test_add_refuses_bad_name_and_non_gguf(data_dir: Path, tmp_path: Path, gguf: Path) -> None:
    with pytest.raises(ProtocolError) as err:
        catalog.add_model(data_dir, "a.b", gguf)
    assert err.value.code == ErrorCode.INVALID_ID
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    with pytest.raises(ProtocolError) as err:
        catalog.add_model(data_dir, "notes", text)
    assert err.value.code == ErrorCode.INVALID_PARAMS
    assert catalog.load(data_dir) == {}


def test_corrupt_catalog_is_a_coded_error(data_dir: Path) -> None:
    data_dir.mkdir()
    (data_dir / catalog.CATALOG_FILE).write_text("{not json")
    with pytest.raises(ProtocolError) as err:
        catalog.load(data_dir)
    assert err.value.code == ErrorCode.INTERNAL


def test_heartbeat_listing_never_hashes(
    data_dir: Path, gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every heartbeat re-reads the catalog (that is how a new model shows at once): a JSON read
    and a stat per model, never a hash of a model file."""
    catalog.add_model(data_dir, "tiny", gguf)

    def no_hashing(path: Path) -> str:
        raise AssertionError(f"hashed {path}")

    monkeypatch.setattr(catalog, "sha256_file", no_hashing)
    assert [m.name for m in catalog.present_models(data_dir)] == ["tiny"]
