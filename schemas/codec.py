"""JSON encode/decode with coded errors: a bad message never raises anything but ProtocolError."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from schemas.codes import ErrorCode, ProtocolError
from schemas.ids import ID_PATTERN
from schemas.text import clip

if TYPE_CHECKING:  # typing only: no runtime dependency
    from typing_extensions import TypeForm

T = TypeVar("T")

MAX_MESSAGE_BYTES = 1024 * 1024  # default NATS max_payload

_encoder = msgspec.json.Encoder()
_ID_FAILED = f"matching regex {ID_PATTERN!r}"  # how msgspec says an `Id` field failed


def encode(message: Any) -> bytes:
    return _encoder.encode(message)


def wire_size(data: bytes, headers: Mapping[str, str] | None) -> int:
    """What the server counts against its max payload: the body and the header block (a
    `NATS/1.0` line, one `key: value` line per header, an empty line); nats-py checks only the
    body."""
    if not headers:
        return len(data)
    block = sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())
    return len(data) + len(b"NATS/1.0\r\n\r\n") + block


def decoder(kind: TypeForm[T], max_bytes: int = MAX_MESSAGE_BYTES) -> Callable[[bytes], T]:
    """A decoder for `kind` (a Struct or a union of tagged Structs, `decoder(Ack | Error)`);
    the type checker reads `kind` as a type form, so the decode function returns that type."""
    dec: msgspec.json.Decoder[T] = msgspec.json.Decoder(kind)

    def decode(data: bytes) -> T:
        if len(data) > max_bytes:
            raise ProtocolError(
                ErrorCode.PAYLOAD_TOO_LARGE, f"message is {len(data)} bytes, limit {max_bytes}"
            )
        try:
            return dec.decode(data)
        except msgspec.ValidationError as exc:
            raise _invalid(str(exc)) from None
        except msgspec.DecodeError as exc:
            raise ProtocolError(ErrorCode.INVALID_PARAMS, f"malformed JSON: {exc}") from None
        except RecursionError:
            raise ProtocolError(ErrorCode.INVALID_PARAMS, "JSON nested too deeply") from None
        except UnicodeDecodeError:  # msgspec lets invalid UTF-8 inside a string escape as is
            raise ProtocolError(ErrorCode.INVALID_PARAMS, "invalid UTF-8 in a string") from None

    return decode


def _invalid(message: str) -> ProtocolError:
    """A ValidationError as a coded error: INVALID_ID when a field typed `Id` failed its
    pattern. msgspec quotes a bad enum value whole (`Invalid enum value '<1 MiB>' - at
    `$.role``), so the text before the path is clipped; the path itself is the schema's."""
    code = ErrorCode.INVALID_ID if _ID_FAILED in message else ErrorCode.INVALID_PARAMS
    what, at, path = message.rpartition(" - at `")
    if not at:
        return ProtocolError(code, clip(message, 200))
    return ProtocolError(code, f"{clip(what, 200)}{at}{clip(path, 200)}")
