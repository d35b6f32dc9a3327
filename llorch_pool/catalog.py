"""The model catalog of one host: `<data-dir>/models.json`, name -> file, sha256, GGUF facts.

The sha256 recorded at `models add` is the trust anchor. It is cached with the file's
(path, size, mtime_ns): a spawn re-hashes only a file whose size or mtime changed, and a
changed file whose digest differs is refused (UNTRUSTED_MODEL).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import msgspec

from llorch_pool.gguf_meta import read_gguf_meta
from llorch_pool.paths import bundled_model_path
from schemas import ErrorCode, ModelInfo, ProtocolError, check_id

DEFAULT_MODEL = "smollm2-135m"
CATALOG_FILE = "models.json"
_CHUNK = 1 << 20


class ModelRecord(msgspec.Struct, frozen=True, kw_only=True):
    path: str  # absolute
    sha256: str  # hex digest trusted at add time
    size_bytes: int
    mtime_ns: int  # mtime when sha256 was last verified: with path and size, the hash cache key
    n_ctx_train: int
    n_layers: int
    kv_bytes_per_token: int
    # None in catalogs written before chat: ensure_default reads it from the GGUF header.
    has_chat_template: bool | None = None


class _CatalogFile(msgspec.Struct):
    models: dict[str, ModelRecord] = {}


def model_info(name: str, record: ModelRecord) -> ModelInfo:
    return ModelInfo(
        name=name,
        sha256=record.sha256,
        size_bytes=record.size_bytes,
        n_ctx_train=record.n_ctx_train,
        n_layers=record.n_layers,
        kv_bytes_per_token=record.kv_bytes_per_token,
        has_chat_template=bool(record.has_chat_template),
    )


def is_cached(record: ModelRecord, path: str, st: os.stat_result) -> bool:
    """Pure: the recorded digest still stands for this file without reading it."""
    return (record.path, record.size_bytes, record.mtime_ns) == (path, st.st_size, st.st_mtime_ns)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def load(data_dir: Path) -> dict[str, ModelRecord]:
    try:
        raw = (data_dir / CATALOG_FILE).read_bytes()
    except FileNotFoundError:
        return {}
    try:
        return msgspec.json.decode(raw, type=_CatalogFile).models
    except msgspec.MsgspecError as exc:
        raise ProtocolError(
            ErrorCode.INTERNAL, f"catalog {data_dir / CATALOG_FILE}: {exc}"
        ) from None


def save(data_dir: Path, models: dict[str, ModelRecord]) -> None:
    """Write-then-rename, so a reader (a serving pool) never sees half a file."""
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f".{CATALOG_FILE}.{os.getpid()}.tmp"
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(_CatalogFile(models=models))))
    tmp.replace(data_dir / CATALOG_FILE)


def _stat(path: Path) -> os.stat_result:
    try:
        st = path.stat()
    except OSError:
        raise ProtocolError(ErrorCode.MODEL_NOT_FOUND, f"model file {path} is missing") from None
    if not path.is_file():
        raise ProtocolError(ErrorCode.MODEL_NOT_FOUND, f"model path {path} is not a file")
    return st


def make_record(path: Path) -> ModelRecord:
    """Hash and read the GGUF facts of `path` (the slow part of `models add`)."""
    path = path.resolve()
    st = _stat(path)
    meta = read_gguf_meta(path)
    return ModelRecord(
        path=str(path),
        sha256=sha256_file(path),
        size_bytes=st.st_size,
        mtime_ns=st.st_mtime_ns,
        n_ctx_train=meta.n_ctx_train,
        n_layers=meta.n_layers,
        kv_bytes_per_token=meta.kv_bytes_per_token,
        has_chat_template=meta.has_chat_template,
    )


def _check_name(name: str, resolved: Path) -> None:
    check_id(name, "model name")
    bundled = bundled_model_path()
    if name == DEFAULT_MODEL and bundled is not None and resolved != bundled.resolve():
        raise ProtocolError(
            ErrorCode.INVALID_PARAMS, f"{DEFAULT_MODEL} is the bundled model at {bundled}"
        )


def check_new_entry(name: str, path: Path) -> None:
    """What `add_model` would refuse, found without hashing (milliseconds): checked before a
    file is copied anywhere."""
    resolved = path.resolve()
    _check_name(name, resolved)
    _stat(resolved)
    read_gguf_meta(resolved)


def add_model(data_dir: Path, name: str, path: Path) -> ModelRecord:
    """Register the file at `path` where it lies (`model_files.add` decides where that is)."""
    resolved = path.resolve()
    _check_name(name, resolved)
    record = make_record(resolved)
    models = load(data_dir)
    models[name] = record
    save(data_dir, models)
    return record


def ensure_default(data_dir: Path) -> None:
    """Register the bundled model (hashing it once) when it is absent or moved, and fill in
    facts that older catalogs lack."""
    bundled = bundled_model_path()
    if bundled is not None:
        current = load(data_dir).get(DEFAULT_MODEL)
        if current is None or current.path != str(bundled.resolve()):
            add_model(data_dir, DEFAULT_MODEL, bundled)
    _fill_chat_template(data_dir)


def _fill_chat_template(data_dir: Path) -> None:
    """Records written before chat existed: read the flag from the header (milliseconds)."""
    models = load(data_dir)
    stale = {n: r for n, r in models.items() if r.has_chat_template is None}
    for name, record in stale.items():
        try:
            flag = read_gguf_meta(Path(record.path)).has_chat_template
        except ProtocolError:
            continue  # a missing or broken file is reported when it is used
        models[name] = msgspec.structs.replace(record, has_chat_template=flag)
    if stale:
        save(data_dir, models)


def resolve(data_dir: Path, name: str) -> ModelRecord:
    """The record of a model whose file is present and still matches its trusted sha256."""
    record = load(data_dir).get(name)
    if record is None:
        raise ProtocolError(ErrorCode.MODEL_NOT_FOUND, f"model {name[:80]!r} is not in the catalog")
    path = Path(record.path)
    st = _stat(path)
    if is_cached(record, record.path, st):
        return record
    digest = sha256_file(path)
    if digest != record.sha256:
        raise ProtocolError(
            ErrorCode.UNTRUSTED_MODEL,
            f"{path} changed: sha256 {digest[:12]}… is not the catalog's {record.sha256[:12]}…",
        )
    verified = msgspec.structs.replace(record, size_bytes=st.st_size, mtime_ns=st.st_mtime_ns)
    models = load(data_dir)
    models[name] = verified
    save(data_dir, models)
    return verified


def present_models(data_dir: Path) -> list[ModelInfo]:
    """Models whose file is there with its recorded size (a stat each, no hashing)."""
    found = []
    for name, record in sorted(load(data_dir).items()):
        try:
            size = Path(record.path).stat().st_size
        except OSError:
            continue
        if size == record.size_bytes:
            found.append(model_info(name, record))
    return found
