"""Ids travel inside subjects, so they must never hold a token separator or wildcard."""

import re
import secrets
from typing import Annotated

from msgspec import Meta

from schemas.codes import ErrorCode, ProtocolError
from schemas.text import clip

# `\Z`, not `$`: `$` also matches before a trailing newline, which would let "id\n" through
# (and into log lines); msgspec applies the pattern with `re.search`, so it is anchored here.
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}\Z"
_ID = re.compile(ID_PATTERN)

# A wire field that is an id: a value outside the pattern is refused at decode time with
# INVALID_ID (schemas.codec tells the pattern's failures apart from other ones).
Id = Annotated[str, Meta(pattern=ID_PATTERN)]


def is_valid_id(value: str) -> bool:
    return bool(_ID.match(value))


def check_id(value: str, what: str) -> str:
    if not is_valid_id(value):
        raise ProtocolError(
            ErrorCode.INVALID_ID, f"{what} {clip(value)!r} must match [A-Za-z0-9_-]{{1,64}}"
        )
    return value


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"
