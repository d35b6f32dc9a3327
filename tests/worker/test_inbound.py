"""Execute/cancel payloads: anything malformed is a ProtocolError with a stable code."""

from __future__ import annotations

import msgspec
import pytest

from llorch_worker.inbound import parse_cancel, parse_execute
from schemas import ErrorCode, ProtocolError, encode
from tests.worker.conftest import MODEL, make_execute

GOOD = make_execute("job-1", "_INBOX.abc.def", temperature=0.5, top_p=0.9, seed=7)


def test_a_good_execute_decodes() -> None:
    assert parse_execute(encode(GOOD), MODEL) == GOOD


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"job_id": "a.b"}, ErrorCode.INVALID_ID),
        ({"job_id": "a*"}, ErrorCode.INVALID_ID),
        ({"job_id": ">"}, ErrorCode.INVALID_ID),
        ({"model": "other"}, ErrorCode.INVALID_PARAMS),
        ({"stream": "_INBOX.*"}, ErrorCode.INVALID_PARAMS),
        ({"stream": "a..b"}, ErrorCode.INVALID_PARAMS),
        ({"stream": ""}, ErrorCode.INVALID_PARAMS),
        ({"max_tokens": 0}, ErrorCode.INVALID_PARAMS),
        ({"temperature": -0.1}, ErrorCode.INVALID_PARAMS),
        ({"top_p": 0.0}, ErrorCode.INVALID_PARAMS),
        ({"top_k": -1}, ErrorCode.INVALID_PARAMS),
        ({"seed": 2**32}, ErrorCode.INVALID_PARAMS),
        ({"seq": -1}, ErrorCode.INVALID_PARAMS),
    ],
)
def test_bad_fields_are_rejected_with_a_code(change: dict[str, object], code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_execute(encode(msgspec.structs.replace(GOOD, **change)), MODEL)
    assert info.value.code == code


@pytest.mark.parametrize(
    "data", [b"", b"{", b"[]", b'{"type":"execute"}', b'{"type":"cancel","job_id":"x"}']
)
def test_malformed_execute_is_invalid_params(data: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_execute(data, MODEL)
    assert info.value.code == ErrorCode.INVALID_PARAMS


def test_cancel_takes_a_bare_job_id_and_checks_it() -> None:
    assert parse_cancel(b'{"job_id":"job-1"}').job_id == "job-1"
    with pytest.raises(ProtocolError) as info:
        parse_cancel(b'{"job_id":"job.1"}')
    assert info.value.code == ErrorCode.INVALID_ID
    with pytest.raises(ProtocolError) as info:
        parse_cancel(b'{"job_id":3}')
    assert info.value.code == ErrorCode.INVALID_PARAMS
