"""Writes small GGUF files (header and metadata only) for tests of our own parser and catalog."""

from __future__ import annotations

import struct
from pathlib import Path

GgufValue = int | float | str | list[int] | list[str]

_U32, _F32, _STRING, _ARRAY = 4, 6, 8, 9


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _value(value: GgufValue) -> bytes:
    if isinstance(value, str):
        return struct.pack("<I", _STRING) + _string(value)
    if isinstance(value, float):
        return struct.pack("<If", _F32, value)
    if isinstance(value, int):
        return struct.pack("<II", _U32, value)
    if value and isinstance(value[0], str):
        items = b"".join(_string(str(v)) for v in value)
        return struct.pack("<IIQ", _ARRAY, _STRING, len(value)) + items
    items = b"".join(struct.pack("<I", v) for v in value)
    return struct.pack("<IIQ", _ARRAY, _U32, len(value)) + items


def gguf_bytes(kv: dict[str, GgufValue], version: int = 3) -> bytes:
    body = b"".join(_string(key) + _value(value) for key, value in kv.items())
    return b"GGUF" + struct.pack("<IQQ", version, 0, len(kv)) + body


def llama_kv(**overrides: GgufValue) -> dict[str, GgufValue]:
    """Metadata shaped like a llama.cpp conversion: arch keys, then a tokenizer array."""
    kv: dict[str, GgufValue] = {
        "general.architecture": "llama",
        "general.name": "tiny",
        "llama.context_length": 4096,
        "llama.block_count": 4,
        "llama.embedding_length": 256,
        "llama.attention.head_count": 8,
        "llama.attention.head_count_kv": 2,
        "llama.rope.freq_base": 10000.0,
        "tokenizer.ggml.tokens": ["<s>", "</s>", "hello", "world"],
        "tokenizer.ggml.token_type": [1, 1, 1, 1],
    }
    kv.update(overrides)
    return kv


def write_gguf(path: Path, kv: dict[str, GgufValue] | None = None) -> Path:
    path.write_bytes(gguf_bytes(kv if kv is not None else llama_kv()))
    return path
