"""Ids travel inside subjects, so they must never hold a token separator or wildcard."""

import re
import secrets

from schemas.codes import ErrorCode, ProtocolError

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_ID = re.compile(ID_PATTERN)


def is_valid_id(value: str) -> bool:
    return bool(_ID.match(value))


def check_id(value: str, what: str) -> str:
    if not is_valid_id(value):
        raise ProtocolError(
            ErrorCode.INVALID_ID, f"{what} {value[:80]!r} must match [A-Za-z0-9_-]{{1,64}}"
        )
    return value


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"
