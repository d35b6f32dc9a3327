"""After `models add`: make a running stack see the model now, and wait until it can be used.

A pool lists its catalog afresh in every heartbeat (one small JSON read and a stat per model,
no hashing) and beats at once on a snapshot request. So: ask for a snapshot, wait for a
heartbeat that lists the model with its new digest, then ask the orchestrator, which reads the
same heartbeats; should the question overtake its update, the next heartbeat settles it.

Publishing `pools.snapshot` and reading heartbeats is not a client's right (docs/security.md):
on the stack's own host the CLI uses the admin identity `llorch up` made (see `credentials`).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.aio.client import Client
from nats.errors import NoRespondersError, NoServersError
from nats.errors import TimeoutError as NatsTimeout

from llorch_common.connect import Credentials
from llorch_common.local import read_stack_record, seed_file, servers
from schemas import (
    Error,
    Heartbeat,
    ModelsReply,
    ModelsRequest,
    ProtocolError,
    SnapshotRequest,
    Subjects,
    decoder,
    encode,
)

WAIT_S = 30.0  # a pool answers a snapshot in milliseconds: this bounds a pool that is missing
ASK_TIMEOUT_S = 5.0  # one api.models round trip
_heartbeat = decoder(Heartbeat)
_models = decoder(ModelsReply | Error)


@dataclass(frozen=True, slots=True)
class Served:
    pools: list[str]  # the pools the orchestrator lists the model on


@dataclass(frozen=True, slots=True)
class NoStack:
    reason: str  # nothing listens at the URL


@dataclass(frozen=True, slots=True)
class NotListed:
    reason: str  # NATS refused us, or no pool and orchestrator listed the model in time


Outcome = Served | NoStack | NotListed


def endpoint(data_dir: Path, url: str | None, given: Credentials) -> tuple[str, Credentials] | None:
    """Where to announce, and as whom: `url` if given, else the URL of the `llorch up` of this
    data dir (None when there is neither: no stack to tell). Credentials: `given` if any, else
    the admin seed `llorch up` made, else none."""
    record = read_stack_record(data_dir)
    if url is None:
        if record is None:
            return None
        url = record.nats_url
    creds_dir = Path(record.creds_dir) if record and record.creds_dir else data_dir / "creds"
    admin = seed_file(creds_dir, "admin")
    creds = Credentials(nkey_seed_file=admin) if given.empty and admin.is_file() else given
    return url, creds


async def announce(
    url: str, subjects: Subjects, creds: Credentials, name: str, sha256: str
) -> Outcome:
    """Served once the orchestrator lists `name` with this digest."""
    errors: list[Exception] = []  # permission violations arrive here, not as exceptions

    async def note(exc: Exception) -> None:
        errors.append(exc)

    try:
        # one attempt: nats-py keeps trying forever with max_reconnect_attempts=0
        nc = await nats.connect(
            servers(url),
            connect_timeout=2,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.2,
            error_cb=note,
            **creds.connect_options(),
        )
    except NoServersError:  # nothing listens there (a refusal of us raises nats.errors.Error)
        return NoStack(f"no NATS server at {url}")
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        return NotListed(
            f"NATS at {url} refused us as {creds.describe()} ({exc!r}): pass an identity that "
            "may read heartbeats (--nkey-seed <data-dir of the stack>/creds/admin.nk)"
        )
    try:
        async with asyncio.timeout(WAIT_S):
            return Served(await _wait_listed(nc, subjects, name, sha256))
    except TimeoutError:
        seen = f" (NATS said: {'; '.join(map(str, errors))})" if errors else ""
        return NotListed(
            f"no pool and orchestrator on {url} listed {name} within {WAIT_S:.0f}s{seen}: "
            "is a pool serving this data dir?"
        )
    except nats.errors.Error as exc:  # e.g. the server went away while we waited
        return NotListed(f"lost NATS at {url} while waiting for {name}: {exc}")
    finally:
        await nc.close()


async def _wait_listed(nc: Client, subjects: Subjects, name: str, sha256: str) -> list[str]:
    beats = await nc.subscribe(subjects.heartbeat_all)  # before the request: no beat missed
    await nc.publish(subjects.snapshot_request, encode(SnapshotRequest()))
    try:
        while True:
            msg = await beats.next_msg(timeout=None)
            if _beat_lists(msg.data, name, sha256):
                pools = await _orchestrator_pools(nc, subjects, name, sha256)
                if pools:
                    return pools
    finally:
        await beats.unsubscribe()


def _beat_lists(data: bytes, name: str, sha256: str) -> bool:
    try:
        beat: Heartbeat = _heartbeat(data)
    except ProtocolError:
        return False  # not ours to judge: the orchestrator logs bad heartbeats
    return any(m.name == name and m.sha256 == sha256 for m in beat.models)


async def _orchestrator_pools(nc: Client, subjects: Subjects, name: str, sha256: str) -> list[str]:
    """The pools the orchestrator lists the model on; none while it is not (yet) there."""
    with contextlib.suppress(NoRespondersError, NatsTimeout):
        msg = await nc.request(subjects.models, encode(ModelsRequest()), timeout=ASK_TIMEOUT_S)
        reply = _models(msg.data)
        if isinstance(reply, ModelsReply):
            for entry in reply.models:
                if (entry.model.name, entry.model.sha256) == (name, sha256):
                    return entry.pools
    return []
