"""JSON encode/decode with coded errors: a bad message never raises anything but ProtocolError."""

from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from schemas.codes import ErrorCode, ProtocolError

T = TypeVar("T")

MAX_MESSAGE_BYTES = 1024 * 1024  # default NATS max_payload

_encoder = msgspec.json.Encoder()


def encode(message: Any) -> bytes:
    return _encoder.encode(message)


def decoder(kind: Any, max_bytes: int = MAX_MESSAGE_BYTES) -> Callable[[bytes], Any]:
    """A decoder for `kind` (a Struct or a union of tagged Structs)."""
    dec = msgspec.json.Decoder(kind)

    def decode(data: bytes) -> Any:
        if len(data) > max_bytes:
            raise ProtocolError(
                ErrorCode.PAYLOAD_TOO_LARGE, f"message is {len(data)} bytes, limit {max_bytes}"
            )
        try:
            return dec.decode(data)
        except msgspec.ValidationError as exc:
            raise ProtocolError(ErrorCode.INVALID_PARAMS, str(exc)) from None
        except msgspec.DecodeError as exc:
            raise ProtocolError(ErrorCode.INVALID_PARAMS, f"malformed JSON: {exc}") from None
        except RecursionError:
            raise ProtocolError(ErrorCode.INVALID_PARAMS, "JSON nested too deeply") from None

    return decode
