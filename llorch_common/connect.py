"""How a component finds its NATS credentials and turns them into `nats.connect` options.

Part of the bus contract: the orchestrator, pool managers, workers and the CLI all take
credentials the same standard NATS ways. Secrets never go on a command line (argv is visible
in `ps`): flags name FILES, and only env vars may carry secret values.

| what                 | flag              | env var                    |
|----------------------|-------------------|----------------------------|
| `.creds` file (JWT)  | `--creds FILE`    | `LLORCH_NATS_CREDS`        |
| nkey seed file       | `--nkey-seed FILE`| `LLORCH_NATS_NKEY_SEED`    |
| user name            | `--user NAME`     | `LLORCH_NATS_USER`         |
| password (value)     | -                 | `LLORCH_NATS_PASSWORD`     |
| token (value)        | -                 | `LLORCH_NATS_TOKEN`        |
| TLS CA / cert / key  | `--tls-ca/--tls-cert/--tls-key FILE` | `LLORCH_NATS_TLS_CA/_CERT/_KEY` |
| inbox prefix         | `--inbox-prefix`  | `LLORCH_NATS_INBOX_PREFIX` |

Every identity listens for replies only under its own inbox prefix (the server's permissions
say so): `_INBOX.<user>` for a user, `_INBOX.<nkey public key>` for an nkey, else `_INBOX`
unless `--inbox-prefix` says otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.codes import ErrorCode, ProtocolError
from schemas.ids import check_id
from schemas.subjects import DEFAULT_INBOX

if TYPE_CHECKING:  # a type only: the worker's modules may not import nats before llama_cpp
    from nats.aio.client import Client

ENV_PREFIX = "LLORCH_NATS_"
WORKER_ENV_PREFIX = "LLORCH_WORKER_NATS_"  # a pool's credentials for the workers it spawns
DRAIN_TIMEOUT_S = 3  # a stopping component drains in-flight messages this long at most

# field name -> (flag suffix or None for env-only secrets, env suffix)
_SOURCES: dict[str, tuple[str | None, str]] = {
    "creds_file": ("creds", "CREDS"),
    "nkey_seed_file": ("nkey-seed", "NKEY_SEED"),
    "user": ("user", "USER"),
    "password": (None, "PASSWORD"),
    "token": (None, "TOKEN"),
    "tls_ca": ("tls-ca", "TLS_CA"),
    "tls_cert": ("tls-cert", "TLS_CERT"),
    "tls_key": ("tls-key", "TLS_KEY"),
    "inbox_prefix": ("inbox-prefix", "INBOX_PREFIX"),
}
_PATHS = {"creds_file", "nkey_seed_file", "tls_ca", "tls_cert", "tls_key"}
_IDENTITY = ("creds_file", "nkey_seed_file", "user", "password", "token", "inbox_prefix")


def fingerprint(secret: str | bytes) -> str:
    """What logs may show of a secret: the first 8 hex of its sha256."""
    data = secret.encode() if isinstance(secret, str) else secret
    return hashlib.sha256(data).hexdigest()[:8]


def nkey_public(seed_file: Path) -> str:
    """The public key (`U…`) of the nkey seed in `seed_file`."""
    import nkeys  # only identities with nkeys need it

    seed = _read_seed(seed_file)
    try:
        return str(nkeys.from_seed(seed).public_key.decode())
    except Exception:
        raise ProtocolError(ErrorCode.INVALID_PARAMS, f"{seed_file}: not an nkey seed") from None


def _read_seed(seed_file: Path) -> bytes:
    try:
        return seed_file.read_bytes().strip()
    except OSError as exc:
        raise ProtocolError(ErrorCode.INVALID_PARAMS, f"cannot read {seed_file}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Credentials:
    """One identity on the bus. `repr` never shows the password or the token."""

    creds_file: Path | None = None
    nkey_seed_file: Path | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    inbox_prefix: str | None = None  # explicit; else derived, see `inbox`

    @classmethod
    def from_env(cls, env: Mapping[str, str], prefix: str = ENV_PREFIX) -> Credentials:
        values: dict[str, Any] = {}
        for name, (_, suffix) in _SOURCES.items():
            if raw := env.get(prefix + suffix):
                values[name] = Path(raw) if name in _PATHS else raw
        return cls(**values)

    @classmethod
    def from_args(
        cls, ns: argparse.Namespace, env: Mapping[str, str], who: str = ""
    ) -> Credentials:
        """Flags added by `add_arguments(parser, who)` over the env vars of the same role."""
        base = cls.from_env(env, WORKER_ENV_PREFIX if who else ENV_PREFIX)
        values = {f.name: getattr(base, f.name) for f in fields(cls)}
        for name in _SOURCES:
            flag_value = getattr(ns, _dest(name, who), None)
            if flag_value is not None:
                values[name] = flag_value
        return cls(**values)

    @property
    def empty(self) -> bool:
        return all(getattr(self, name) is None for name in _IDENTITY)

    @property
    def inbox(self) -> str:
        """The prefix this identity's replies come to (its permissions allow only this one)."""
        if self.inbox_prefix:
            return self.inbox_prefix
        if self.user:
            return f"{DEFAULT_INBOX}.{check_id(self.user, 'user')}"
        if self.nkey_seed_file:
            return f"{DEFAULT_INBOX}.{nkey_public(self.nkey_seed_file)}"
        return DEFAULT_INBOX

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for `nats.connect`."""
        opts: dict[str, Any] = {"inbox_prefix": self.inbox}
        if self.creds_file:
            opts["user_credentials"] = str(self.creds_file)
        if self.nkey_seed_file:
            opts["nkeys_seed"] = str(self.nkey_seed_file)  # nats-py reads it at connect
        if self.user:
            opts["user"] = self.user
            opts["password"] = self.password or ""
        if self.token:
            opts["token"] = self.token
        if self.tls_ca or self.tls_cert:
            opts["tls"] = self.tls_context()
        return opts

    def tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.tls_ca) if self.tls_ca else None)
        if self.tls_cert:
            ctx.load_cert_chain(str(self.tls_cert), str(self.tls_key) if self.tls_key else None)
        return ctx

    def to_env(self, prefix: str = ENV_PREFIX) -> dict[str, str]:
        """The env vars that hand this identity to a child process (never its argv)."""
        env = {}
        for name, (_, suffix) in _SOURCES.items():
            value = getattr(self, name)
            if value is not None:
                env[prefix + suffix] = str(value)
        return env

    def describe(self) -> str:
        """A log-safe summary: names and file paths, secrets only as fingerprints."""
        parts = []
        if self.creds_file:
            parts.append(f"creds {self.creds_file}")
        if self.nkey_seed_file:
            parts.append(f"nkey {self.nkey_seed_file}")
        if self.user:
            secret = f" password#{fingerprint(self.password)}" if self.password else ""
            parts.append(f"user {self.user}{secret}")
        if self.token:
            parts.append(f"token#{fingerprint(self.token)}")
        if self.tls_ca or self.tls_cert:
            parts.append("tls")
        return ", ".join(parts) or "no credentials"


def permission_refusal(nc: Client) -> Exception | None:
    """The server's refusal of a publish (a permissions violation), if it was the connection's
    last error: such a request is never answered, so its timeout means "not allowed"."""
    error = nc.last_error
    if isinstance(error, Exception) and "permissions violation" in str(error).lower():
        return error
    return None


def without_credentials(env: Mapping[str, str]) -> dict[str, str]:
    """`env` minus every llorch NATS credential variable (so a child inherits none)."""
    return {k: v for k, v in env.items() if not k.startswith((ENV_PREFIX, WORKER_ENV_PREFIX))}


def _dest(name: str, who: str) -> str:
    return f"{who}_nats_{name}" if who else f"nats_{name}"


def add_arguments(parser: argparse.ArgumentParser, who: str = "") -> None:
    """The credential flags; `who="worker"` adds `--worker-creds`… (identity only: TLS is shared,
    secrets come from `LLORCH_WORKER_NATS_PASSWORD`/`_TOKEN`)."""
    env = WORKER_ENV_PREFIX if who else ENV_PREFIX
    for name, (flag, suffix) in _SOURCES.items():
        if flag is None or (who and name not in _IDENTITY):
            continue
        kind = Path if name in _PATHS else str
        parser.add_argument(
            f"--{who}-{flag}" if who else f"--{flag}",
            dest=_dest(name, who),
            type=kind,
            default=None,
            metavar="FILE" if kind is Path else None,
            help=f"default ${env}{suffix}",
        )
