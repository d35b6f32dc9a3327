"""The reference docs name every message, error code and config key the code has, and their
JSON examples still decode with the schemas (and are the ones the generator writes)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from functools import reduce
from pathlib import Path
from typing import Any

import pytest

import schemas
from llorch_orch.core.config import Limits, ModelConfig, OrchConfig
from schemas import ErrorCode, ProtocolError, decoder
from schemas.base import Message

DOCS = Path(__file__).resolve().parents[2] / "docs"
PROTOCOL = (DOCS / "protocol.md").read_text()
SCHEDULING = (DOCS / "scheduling.md").read_text()
_JSON_BLOCK = re.compile(r"```json\n(.*?)```", re.DOTALL)


def _message_types() -> list[type[Message]]:
    found: list[type[Message]] = []
    todo: list[type[Message]] = list(Message.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if cls.__module__.startswith("schemas.") and cls.__struct_config__.tag is not None:
            found.append(cls)
    return sorted(found, key=lambda c: c.__name__)


MESSAGES = _message_types()
ALL = reduce(lambda a, b: a | b, MESSAGES)  # type: ignore[arg-type,return-value]
_decode_any = decoder(ALL)


def _tag(cls: type[Message]) -> str:
    return str(cls.__struct_config__.tag)


def _examples() -> list[Any]:
    out = []
    for block in _JSON_BLOCK.findall(PROTOCOL):
        out.append(json.loads(block))
    return out


def test_every_schema_message_is_exported_and_found() -> None:
    names = {c.__name__ for c in MESSAGES}
    assert {"GenerateRequest", "Heartbeat", "Execute", "ClusterState", "BatchJob"} <= names
    for cls in MESSAGES:
        assert getattr(schemas, cls.__name__, None) is cls, f"{cls.__name__} not in schemas"


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.__name__)
def test_message_is_in_protocol_md(cls: type[Message]) -> None:
    assert f"`{cls.__name__}`" in PROTOCOL, f"{cls.__name__} is not described in protocol.md"
    assert f"`{_tag(cls)}`" in PROTOCOL, f"type tag {_tag(cls)!r} not in protocol.md"
    tags = {e.get("type") for e in _examples() if isinstance(e, dict)}
    nested = {
        m["type"] for e in _examples() for m in _walk(e) if isinstance(m, dict) and "type" in m
    }
    assert _tag(cls) in tags | nested, f"no JSON example of {cls.__name__} in protocol.md"


def _walk(value: Any) -> list[Any]:
    out = [value]
    if isinstance(value, dict):
        for v in value.values():
            out += _walk(v)
    elif isinstance(value, list):
        for v in value:
            out += _walk(v)
    return out


@pytest.mark.parametrize("code", list(ErrorCode), ids=str)
def test_error_code_is_in_protocol_md(code: ErrorCode) -> None:
    assert re.search(rf"^\| `{code.value}` \|", PROTOCOL, re.MULTILINE), (
        f"{code} has no row in protocol.md's error table"
    )


def _config_fields() -> list[tuple[str, str]]:
    return [
        (cls.__name__, f.name)
        for cls in (OrchConfig, ModelConfig, Limits)
        for f in dataclasses.fields(cls)
    ]


@pytest.mark.parametrize("owner,field", _config_fields(), ids=lambda v: str(v))
def test_config_key_is_in_scheduling_md(owner: str, field: str) -> None:
    assert re.search(rf"^\| `{field}` \|", SCHEDULING, re.MULTILINE), (
        f"{owner}.{field} has no row in scheduling.md's config tables"
    )


def test_config_defaults_in_scheduling_md_match_code() -> None:
    """The default column of each config row is the code's default."""
    for cls in (OrchConfig, ModelConfig, Limits):
        for f in dataclasses.fields(cls):
            if f.default is dataclasses.MISSING or dataclasses.is_dataclass(f.default):
                continue
            row = re.search(rf"^\| `{f.name}` \| ([^|]+) \|", SCHEDULING, re.MULTILINE)
            assert row is not None
            shown = row.group(1).strip()
            plain = isinstance(f.default, str | bool)
            expected = json.dumps(f.default) if plain else repr(f.default)
            assert shown.startswith(f"`{expected}`"), f"{f.name}: doc {shown}, code {expected}"


def test_json_examples_decode_with_the_schemas() -> None:
    examples = _JSON_BLOCK.findall(PROTOCOL)
    assert len(examples) >= len(MESSAGES)
    for block in examples:
        try:
            message = _decode_any(block.encode())
        except ProtocolError as exc:  # pragma: no cover - the failure message is the point
            pytest.fail(f"example does not decode: {exc.message}\n{block}")
        # decoding then encoding gives the same JSON: no field is misspelled or ignored
        assert json.loads(schemas.encode(message)) == json.loads(block), block


def test_examples_are_generated_from_real_structs() -> None:
    spec = importlib.util.spec_from_file_location("gen", DOCS / "gen_protocol_examples.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    updated, problems = gen.rewrite(PROTOCOL)
    assert not problems
    assert updated == PROTOCOL, "protocol.md examples are stale: run docs/gen_protocol_examples.py"


def test_toml_example_in_scheduling_md_loads(tmp_path: Path) -> None:
    from llorch_orch import settings

    block = re.search(r"```toml\n(.*?)```", SCHEDULING, re.DOTALL)
    assert block is not None
    path = tmp_path / "orch.toml"
    path.write_text(block.group(1))
    cfg = settings.load(path)
    assert cfg.models and cfg.default_model != ModelConfig()
