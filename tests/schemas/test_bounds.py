"""Issue 12: every client-facing field is bounded at decode time, with a code and a short
message, and the helpers that keep client strings out of subjects and log lines."""

from __future__ import annotations

import pytest
from msgspec import inspect

from schemas import CancelRequest, ErrorCode, Execute, GenerateRequest, ProtocolError, decoder
from schemas.api import sampling_temperature
from schemas.subjects import is_publish_subject
from schemas.text import clip

_generate = decoder(GenerateRequest)
_cancel = decoder(CancelRequest)


def refused(data: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        _generate(data)
    return info.value


@pytest.mark.parametrize(
    ("field", "code", "at"),
    [
        ('"deadline_ms":' + "9" * 401, ErrorCode.INVALID_PARAMS, "deadline_ms"),
        ('"deadline_ms":86400001', ErrorCode.INVALID_PARAMS, "deadline_ms"),
        ('"max_tokens":1000001', ErrorCode.INVALID_PARAMS, "max_tokens"),
        ('"top_k":1000001', ErrorCode.INVALID_PARAMS, "top_k"),
        ('"device":1024', ErrorCode.INVALID_PARAMS, "device"),
        ('"model":"' + "m" * 129 + '"', ErrorCode.INVALID_PARAMS, "model"),
        ('"stop":["' + "s" * 65 + '"]', ErrorCode.INVALID_PARAMS, "stop[0]"),
        ('"stop":' + '["s"' + ',"s"' * 64 + "]", ErrorCode.INVALID_PARAMS, "stop"),
        ('"job_id":"ok\\n"', ErrorCode.INVALID_ID, "job_id"),  # `$` let a trailing newline through
        ('"job_id":"' + "j" * 65 + '"', ErrorCode.INVALID_ID, "job_id"),
        ('"pool":"a.b"', ErrorCode.INVALID_ID, "pool"),
        ('"priority":"' + "p" * 100_000 + '"', ErrorCode.INVALID_PARAMS, "priority"),
    ],
)
def test_out_of_bounds_fields_are_coded_and_short(field: str, code: ErrorCode, at: str) -> None:
    error = refused(f'{{"model":"m","prompt":"hi",{field}}}'.encode())
    assert error.code == code and len(error.message) < 500, error
    assert error.message.endswith(f"`$.{at}`"), error.message  # names the field it refuses


def test_a_chat_role_is_never_echoed_whole() -> None:
    body = '{"model":"m","messages":[{"role":"' + "r" * 100_000 + '","content":"hi"}]}'
    error = refused(body.encode())
    assert error.code == ErrorCode.INVALID_PARAMS and len(error.message) < 500
    assert error.message.endswith("`$.messages[0].role`"), error.message


def test_invalid_utf8_inside_a_string_is_coded() -> None:
    error = refused(b'{"model":"m","prompt":"\xff\xfe"}')
    assert (error.code, error.message) == (ErrorCode.INVALID_PARAMS, "invalid UTF-8 in a string")


def test_cancel_with_a_huge_id_is_invalid_id() -> None:
    with pytest.raises(ProtocolError) as info:
        _cancel(b'{"job_id":"' + b"j" * 1_000_000 + b'"}')
    assert info.value.code == ErrorCode.INVALID_ID and len(info.value.message) < 500
    assert info.value.message.endswith("`$.job_id`"), info.value.message


@pytest.mark.parametrize(
    ("subject", "ok"),
    [("_INBOX.abc.1", True), ("_INBOX.x.*", False), ("_INBOX.>", False), ("a..b", False),
     ("", False), ("a b", False), ("a\n", False), ("a" * 257, False), ("_INBOX.é", True)],
)  # fmt: skip
def test_publish_subjects(subject: str, ok: bool) -> None:
    assert is_publish_subject(subject) is ok


def test_clip_bounds_and_escapes() -> None:
    assert clip("a\nb") == "a\\nb"
    assert clip("x" * 1000) == "x" * 80 + "…"
    assert "\n" not in clip("\n" * 1000) and len(clip("\n" * 1000)) <= 2 * 80 + 1


def test_tiny_temperatures_are_greedy() -> None:
    assert sampling_temperature(1e-40) == 0.0 == sampling_temperature(0.0)
    assert sampling_temperature(0.7) == 0.7


def test_execute_carries_the_requests_bounds() -> None:
    """The worker's decoder refuses what the orchestrator's would: Execute's sampling fields
    have GenerateRequest's bounded types (schemas.api's aliases), not hand-written checks."""

    def fields(kind: type) -> dict[str, object]:
        info = inspect.type_info(kind)
        assert isinstance(info, inspect.StructType)
        return {f.name: f.type for f in info.fields}

    request, execute = fields(GenerateRequest), fields(Execute)
    shared = ("model", "messages", "max_tokens", "temperature", "top_p", "top_k", "stop")
    for name in shared:
        assert execute[name] == request[name], name
    assert request["seed"] == inspect.UnionType((execute["seed"], inspect.NoneType()))
