"""API keys: where they come from and whether a request carries one.

Keys are compared in constant time, and never logged or echoed: a refusal says only that the
key is missing or wrong, and the start-up line gives their count.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping
from pathlib import Path

KEYS_ENV = "LLORCH_HTTP_API_KEYS"  # keys separated by commas or whitespace


class KeySetupError(ValueError):
    """A key source that cannot be used (an unreadable file, none while one is required)."""


def load(file: Path | None, env: Mapping[str, str]) -> frozenset[str]:
    """The keys of `file` (one per line; blank lines and `#` comments skipped) and of
    $LLORCH_HTTP_API_KEYS together."""
    keys = set(env.get(KEYS_ENV, "").replace(",", " ").split())
    if file is not None:
        try:
            text = file.read_text()
        except OSError as exc:
            raise KeySetupError(f"cannot read the API key file {file}: {exc.strerror}") from None
        keys |= {line.strip() for line in text.splitlines() if line.strip()[:1] not in ("", "#")}
    return frozenset(keys)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere


def check_binding(host: str, keys: frozenset[str], insecure_no_auth: bool) -> None:
    """Anyone who can reach a non-loopback address could spend the cluster's GPUs: keys are
    required there unless the operator says otherwise."""
    if not keys and not insecure_no_auth and not is_loopback(host):
        raise KeySetupError(
            f"refusing to serve on {host} without API keys: pass --api-key-file FILE (or set "
            f"${KEYS_ENV}), or --insecure-no-auth to serve anyone who can reach it"
        )


def authorized(header: str | None, keys: frozenset[str]) -> bool:
    """Whether an `Authorization: Bearer KEY` header names one of `keys` (any request, when
    there are none). Every key is compared, so the time taken says nothing about which."""
    if not keys:
        return True
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    given_bytes = given.strip().encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(given_bytes, key.encode())
    return found
