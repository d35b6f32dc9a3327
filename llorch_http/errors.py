"""HTTP errors in the OpenAI shape: `{"error": {"message", "type", "param", "code"}}`.

A coded llorch `Error` maps to a status by whose fault it is (the request's: 4xx; a full
queue: 429; the cluster's: 503; a bug: 500). The `code` is the OpenAI one where OpenAI has
one (`model_not_found`, `context_length_exceeded`), else llorch's code in lower case, so a
client can tell the cases apart without parsing messages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from schemas import Error, ErrorCode

_REQUEST = "invalid_request_error"
_SERVER = "server_error"

_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_PARAMS: 400,
    ErrorCode.INVALID_ID: 400,
    ErrorCode.PAYLOAD_TOO_LARGE: 400,
    ErrorCode.CONTEXT_OVERFLOW: 400,
    ErrorCode.NO_CHAT_TEMPLATE: 400,
    ErrorCode.MODEL_NOT_FOUND: 404,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.QUEUE_FULL: 429,
    ErrorCode.NO_CAPACITY: 503,
    ErrorCode.INSUFFICIENT_VRAM: 503,
    ErrorCode.WORKER_START_FAILED: 503,
    ErrorCode.WORKER_BUSY: 503,
    ErrorCode.WORKER_LOST: 503,
    ErrorCode.POOL_LOST: 503,
    ErrorCode.CANCELLED: 503,
    ErrorCode.DEADLINE_EXCEEDED: 503,
    ErrorCode.UNAVAILABLE: 503,
}  # anything else (INTERNAL, MODEL_LOAD_FAILED, UNTRUSTED_MODEL): 500

_OPENAI_CODE = {
    ErrorCode.MODEL_NOT_FOUND: "model_not_found",
    ErrorCode.CONTEXT_OVERFLOW: "context_length_exceeded",
}
_PARAM = {
    ErrorCode.MODEL_NOT_FOUND: "model",
    ErrorCode.NO_CHAT_TEMPLATE: "messages",
}


@dataclass
class ApiError(Exception):
    """An HTTP error response: status, the OpenAI error object's fields, extra headers.

    Not frozen: an exception's traceback is set as an attribute when it leaves a
    `contextmanager` (the request's span is one), which a frozen dataclass refuses."""

    status: int
    message: str
    code: str
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def type(self) -> str:
        if self.status == 429:
            return "rate_limit_error"
        return _REQUEST if self.status < 500 else _SERVER

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def invalid(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, code, param)


def unsupported(param: str, why: str = "") -> ApiError:
    return ApiError(
        400,
        f"`{param}` is not supported by llorch{': ' + why if why else ''}",
        "unsupported_parameter",
        param,
    )


def from_wire(error: Error) -> ApiError:
    """The HTTP form of a coded llorch error. Retry hints become `Retry-After` (seconds, as
    HTTP says) and `retry-after-ms`; `x-should-retry` tells OpenAI's SDKs whether retrying
    can help (they retry every 429 and 5xx unless told otherwise)."""
    status = _STATUS.get(error.code, 500)
    headers = {"x-should-retry": "true" if error.retriable else "false"}
    if error.retry_after_ms is not None:
        headers["retry-after"] = str(max(1, math.ceil(error.retry_after_ms / 1000)))
        headers["retry-after-ms"] = str(error.retry_after_ms)
    code = _OPENAI_CODE.get(error.code, error.code.lower())
    return ApiError(status, error.message, code, _PARAM.get(error.code), headers)
