"""The few GGUF metadata facts the orchestrator budgets with, read from the file header only.

A small parser of our own: it walks the key/value section and never touches tensor data,
so it costs milliseconds on any model size (the `gguf` package's reader maps every tensor).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas import ErrorCode, ProtocolError

_MAGIC = b"GGUF"
_F16_BYTES = 2

# GGUF value type id -> struct format of a scalar of that type (little-endian).
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING = 8
_ARRAY = 9


@dataclass(frozen=True, slots=True)
class GgufMeta:
    architecture: str
    n_ctx_train: int  # `<arch>.context_length`
    n_layers: int  # `<arch>.block_count`
    kv_bytes_per_token: int  # f16 K+V bytes per context position, all layers
    has_chat_template: bool  # `tokenizer.chat_template` is set: the model can serve chat


class _Reader:
    """Sequential little-endian reads over a buffer; out-of-range reads raise struct.error."""

    def __init__(self, buf: Any) -> None:
        self.buf = buf
        self.pos = 0

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.scalar("<Q")
        raw = bytes(self.buf[self.pos : self.pos + length])
        if len(raw) != length:
            raise struct.error("string runs past the end of the file")
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, keep: bool) -> Any:
        """Read one value; arrays are skipped (None) unless `keep`, which is only for small ones."""
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.scalar("<I"), self.scalar("<Q")
            if keep:
                return [self.value(etype, keep=False) for _ in range(count)]
            if etype in _SCALARS:  # fixed-size elements: skip in one step
                self.pos += count * struct.calcsize(_SCALARS[etype])
            else:
                for _ in range(count):
                    self.value(etype, keep=False)
            return None
        raise struct.error(f"unknown GGUF value type {vtype}")


def parse_metadata(buf: Any) -> dict[str, Any]:
    """All scalar/string metadata, plus arrays under `*.attention.*` (per-layer head counts)."""
    reader = _Reader(buf)
    if bytes(buf[:4]) != _MAGIC:
        raise struct.error("not a GGUF file (bad magic)")
    reader.pos = 4
    version = reader.scalar("<I")
    if version not in (2, 3):
        raise struct.error(f"unsupported GGUF version {version}")
    reader.scalar("<Q")  # tensor count
    n_kv = reader.scalar("<Q")
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = reader.string()
        vtype = reader.scalar("<I")
        value = reader.value(vtype, keep=".attention." in key)
        if value is not None:
            meta[key] = value
    return meta


def meta_from_kv(meta: dict[str, Any]) -> GgufMeta:
    """Pure: the budgeting facts from a parsed key/value map."""
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise KeyError("general.architecture")
    n_layers = int(meta[f"{arch}.block_count"])
    n_head = meta[f"{arch}.attention.head_count"]
    n_head_kv = meta.get(f"{arch}.attention.head_count_kv", n_head)
    # Some architectures give a head count per layer (a list); a plain int means every layer.
    kv_heads = sum(n_head_kv) if isinstance(n_head_kv, list) else n_layers * int(n_head_kv)
    max_heads = max(n_head) if isinstance(n_head, list) else int(n_head)
    head_dim = int(meta[f"{arch}.embedding_length"]) // max_heads
    k_len = int(meta.get(f"{arch}.attention.key_length", head_dim))
    v_len = int(meta.get(f"{arch}.attention.value_length", head_dim))
    return GgufMeta(
        architecture=arch,
        n_ctx_train=int(meta[f"{arch}.context_length"]),
        n_layers=n_layers,
        kv_bytes_per_token=kv_heads * (k_len + v_len) * _F16_BYTES,
        has_chat_template=bool(meta.get("tokenizer.chat_template")),
    )


def read_gguf_meta(path: Path) -> GgufMeta:
    """Raises ProtocolError(MODEL_NOT_FOUND) for a missing file, INVALID_PARAMS for a bad one."""
    try:
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return meta_from_kv(parse_metadata(buf))
    except FileNotFoundError:
        raise ProtocolError(ErrorCode.MODEL_NOT_FOUND, f"no file at {path}") from None
    except (OSError, struct.error, KeyError, ValueError, TypeError, ZeroDivisionError) as exc:
        raise ProtocolError(
            ErrorCode.INVALID_PARAMS, f"{path} is not a usable GGUF: {exc}"
        ) from None
