"""Who a job belongs to, and whose jobs a caller may see or act on (docs/security.md#tenancy).

A job belongs to the identity whose inbox its events go to. With identities on, the server lets
each identity receive only under `_INBOX.<its nkey public key or user>.>`, so a request's reply
subject names the identity that can read the answer: the owner of a generate request, the
caller of `api.state`, `api.jobs.get` and `api.cancel`.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from schemas.subjects import DEFAULT_INBOX


def inbox_identity(reply: str) -> str | None:
    """`X` of a reply subject `_INBOX.X.<more>`; None for any other subject (a bare `_INBOX.X`
    is no identity's inbox under the permissions: those allow only `_INBOX.X.>`)."""
    parts = reply.split(".", 2)
    if len(parts) == 3 and parts[0] == DEFAULT_INBOX and parts[1] and parts[2]:
        return parts[1]
    return None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks about or acts on jobs."""

    identity: str | None  # from its reply subject; None: none could be read
    operator: bool = False  # sees and acts on every job

    def owns(self, owner: str | None) -> bool:
        """Whether a job of `owner` is visible to this caller. A caller with no identity owns
        nothing, not even the jobs of no identity (batch jobs, odd reply subjects)."""
        return self.operator or (self.identity is not None and owner == self.identity)


# Every job: an open server (no identities to tell apart) and the orchestrator's own callers
# (the batch runner).
ANYONE = Caller(None, operator=True)


@dataclass(frozen=True, slots=True)
class Tenancy:
    """Whether jobs are kept apart by owner, and which identities are operators."""

    on: bool = False  # off: everybody sees and acts on every job
    operators: frozenset[str] = frozenset()  # public keys or user names

    @classmethod
    def of(cls, own_inbox: str, operators: Iterable[str] = ()) -> "Tenancy":
        """On when the orchestrator's own inbox prefix is an identity's (`_INBOX.<nkey or
        user>`): the deployment then gives each identity its own inbox, as `llorch up` and
        `llorch nats-config` do. Without credentials, with a token, or with a creds file and
        the plain `_INBOX`, identities cannot be told apart: everybody sees every job."""
        return cls(on=own_inbox != DEFAULT_INBOX, operators=frozenset(operators))

    def caller(self, reply: str) -> Caller:
        if not self.on:
            return ANYONE
        identity = inbox_identity(reply)
        return Caller(identity, operator=identity in self.operators)
