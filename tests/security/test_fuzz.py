"""Every decoder the services use, fed random bytes and random JSON: a value or a coded
ProtocolError, never another exception."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from llorch_common import client
from llorch_orch import service
from llorch_pool import service as pool_service
from llorch_worker import inbound
from schemas import ErrorCode, ProtocolError

DECODERS: dict[str, Callable[[bytes], Any]] = {
    "orch.generate": service._generate,
    "orch.cancel": service._cancel,
    "orch.job_get": service._job_get,
    "orch.heartbeat": service._heartbeat,
    "orch.ready": service._ready,
    "orch.status": service._status,
    "orch.reply": service._reply,
    "pool.spawn": pool_service._decode_spawn,
    "pool.stop": pool_service._decode_stop,
    "pool.ready": pool_service._decode_ready,
    "worker.execute": lambda data: inbound.parse_execute(data, "m"),
    "worker.cancel": inbound.parse_cancel,
    "client.event": client._event,
    "client.state": client._state,
    "client.models": client._models,
    "client.cancel": client._cancel,
    "client.job": client._job,
}
TAGS = ["generate", "cancel", "job_get", "heartbeat", "ready", "worker_failed", "job_status",
        "ack", "error", "spawn", "stop", "execute", "queued", "started", "token", "end",
        "state", "models", "job", "cancel_reply", "device", "worker", "model"]  # fmt: skip
FIELDS = ["model", "prompt", "max_tokens", "job_id", "pool_id", "worker_id", "ts", "seq",
          "devices", "workers", "models", "stream", "stop", "seed", "code", "state", "n_ctx",
          "device", "temperature", "top_p", "top_k", "deadline_ms", "pool", "queue"]  # fmt: skip

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
messages = st.builds(
    lambda tag, fields: {"type": tag, **fields},
    st.sampled_from(TAGS),
    st.dictionaries(st.sampled_from(FIELDS), values, max_size=8),
)


def check(decode: Callable[[bytes], Any], data: bytes) -> None:
    try:
        decode(data)
    except ProtocolError as exc:
        assert exc.code in set(ErrorCode) and exc.message


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(DECODERS)), st.binary(max_size=200))
def test_random_bytes(name: str, data: bytes) -> None:
    check(DECODERS[name], data)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(sorted(DECODERS)), messages | values)
def test_random_json_shapes(name: str, message: object) -> None:
    check(DECODERS[name], json.dumps(message).encode())


def test_bombs_are_rejected_cheaply() -> None:
    """Depth and size bombs: a coded error, decided before or without building the value."""
    deep = b"[" * 100_000 + b"]" * 100_000
    deep_object = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    huge = b'{"type":"generate","model":"m","prompt":"' + b"a" * (10 << 20) + b'"}'
    for decode in DECODERS.values():
        for data, code in ((deep, None), (deep_object, None), (huge, "PAYLOAD_TOO_LARGE")):
            try:
                decode(data)
            except ProtocolError as exc:
                assert code is None or exc.code == code
            else:
                raise AssertionError("a bomb decoded")
