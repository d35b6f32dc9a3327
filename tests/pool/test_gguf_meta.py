from pathlib import Path

import pytest

from llorch_pool.gguf_meta import meta_from_kv, read_gguf_meta
from schemas import ErrorCode, ProtocolError
from tests.pool.ggufgen import llama_kv, write_gguf


def test_bundled_smollm2_facts(model_path: Path) -> None:
    meta = read_gguf_meta(model_path)
    # SmolLM2-135M: 30 layers, 9 heads of 64 dims (576 wide), 3 KV heads, 8192 context.
    assert meta.architecture == "llama"
    assert meta.n_layers == 30
    assert meta.n_ctx_train == 8192
    assert meta.kv_bytes_per_token == 2 * 30 * 3 * 64 * 2


def test_written_file_is_parsed_past_string_arrays(tmp_path: Path) -> None:
    meta = read_gguf_meta(write_gguf(tmp_path / "m.gguf"))
    assert (meta.n_ctx_train, meta.n_layers) == (4096, 4)
    assert meta.kv_bytes_per_token == 2 * 4 * 2 * (256 // 8) * 2


def test_kv_heads_default_to_heads() -> None:
    kv = llama_kv()
    del kv["llama.attention.head_count_kv"]
    assert meta_from_kv(kv).kv_bytes_per_token == 2 * 4 * 8 * 32 * 2


def test_per_layer_kv_heads_and_explicit_key_value_lengths() -> None:
    kv = llama_kv(
        **{
            "llama.attention.head_count_kv": [1, 2, 2, 4],
            "llama.attention.key_length": 48,
            "llama.attention.value_length": 16,
        }
    )
    assert meta_from_kv(kv).kv_bytes_per_token == (1 + 2 + 2 + 4) * (48 + 16) * 2


def test_other_architecture_prefix_is_followed() -> None:
    kv = {k.replace("llama.", "qwen2."): v for k, v in llama_kv().items()}
    kv["general.architecture"] = "qwen2"
    assert meta_from_kv(kv).n_layers == 4


def test_missing_file_is_model_not_found(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError) as err:
        read_gguf_meta(tmp_path / "absent.gguf")
    assert err.value.code == ErrorCode.MODEL_NOT_FOUND


@pytest.mark.parametrize(
    "content",
    [
        b"",  # empty
        b"GGML" + b"\0" * 64,  # wrong magic
        b"GGUF\x03\0\0\0" + b"\0" * 8 + b"\xff" * 8,  # kv count far past the end
    ],
)
def test_bad_file_is_invalid_params(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ProtocolError) as err:
        read_gguf_meta(path)
    assert err.value.code == ErrorCode.INVALID_PARAMS


def test_missing_required_key_is_invalid_params(tmp_path: Path) -> None:
    kv = llama_kv()
    del kv["llama.block_count"]
    with pytest.raises(ProtocolError) as err:
        read_gguf_meta(write_gguf(tmp_path / "m.gguf", kv))
    assert err.value.code == ErrorCode.INVALID_PARAMS
