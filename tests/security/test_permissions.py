"""The permission matrix on a real nats-server running the generated config: every role can do
what it needs, and the server refuses each thing outside its role."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.subscription import Subscription

from llorch_orch import natsconf
from llorch_orch.batch.config import RESULTS_STREAM
from schemas import Subjects
from schemas.subjects import DEFAULT_INBOX
from tests.security.conftest import WAIT_S, ConnectAs, Secured

S = Subjects()


@dataclass(frozen=True)
class Case:
    identity: str
    pub_ok: tuple[str, ...]
    pub_denied: tuple[str, ...]
    sub_ok: tuple[str, ...]
    sub_denied: tuple[str, ...]


def inbox(secured: Secured, identity: str) -> str:
    return secured.credentials(identity).inbox


def cases(secured: Secured) -> list[Case]:
    alice, bob = inbox(secured, "client-alice"), inbox(secured, "client-bob")
    return [
        Case("orchestrator",
             (S.spawn("p1"), S.stop("p2"), S.execute("w1"), S.worker_cancel("w1"),
              S.snapshot_request, f"{alice}.r1"),
             (S.heartbeat("p1"), S.generate, S.ready("w1"), S.job_status("j1")),
             (S.heartbeat_all, S.generate, S.ready_all, S.job_status_all),
             (S.spawn("p1"), S.execute("w1"), f"{alice}.>")),
        Case("pool-p1",
             (S.heartbeat("p1"),),
             (S.heartbeat("p2"), S.spawn("p2"), S.execute("w1"), S.generate, S.ready("w1"),
              S.job_status("j1"), f"{alice}.r1"),
             (S.spawn("p1"), S.stop("p1"), S.snapshot_request, S.ready("w1")),
             (S.spawn("p2"), S.heartbeat_all, S.generate, f"{alice}.>", S.execute("w1"))),
        Case("worker-p1",
             (S.ready("w1"), S.job_status("j1"), f"{alice}.r1"),
             (S.heartbeat("p1"), S.spawn("p1"), S.stop("p1"), S.execute("w2"), S.generate),
             (S.execute("w1"), S.worker_cancel("w1")),
             (S.spawn("p1"), S.stop("p1"), S.heartbeat_all, S.generate, f"{alice}.>")),
        Case("client-alice",
             (S.generate, S.state, S.cancel),
             (S.heartbeat("p1"), S.spawn("p1"), S.stop("p1"), S.execute("w1"), S.ready("w1"),
              S.job_status("j1"), S.batch_submit("etl", "b1", "c1"), f"{bob}.r1",
              "$JS.API.INFO"),
             (f"{alice}.r1",),
             (f"{bob}.>", f"{DEFAULT_INBOX}.>", S.generate, S.heartbeat_all, S.execute("w1"))),
        Case("producer-etl",  # its own namespace `etl` only
             (S.batch_submit("etl", "b1", "c1"), S.batch_status("etl"), S.batch_cancel("etl")),
             (S.generate, S.heartbeat("p1"), S.batch_result("etl", "b1", "c1"), f"{alice}.r1",
              S.batch_submit("ml", "b1", "c1"), S.batch_status("ml"), S.batch_cancel("ml"),
              f"$JS.API.STREAM.INFO.{RESULTS_STREAM}"),
             (S.batch_event("etl", "b1"),),
             (f"{alice}.>", S.generate, S.batch_result("etl", "b1"), S.batch_event("ml", "b1"),
              f"{S.prefix}.batch.event.>")),
    ]  # fmt: skip


IDENTITIES = ["orchestrator", "pool-p1", "worker-p1", "client-alice", "producer-etl"]


@pytest.mark.parametrize("identity", IDENTITIES)
async def test_role_permissions(secured: Secured, connect_as: ConnectAs, identity: str) -> None:
    case = next(c for c in cases(secured) if c.identity == identity)
    admin = await connect_as("admin")
    me = await connect_as(identity)
    seen = await admin.nc.subscribe(">")
    await admin.nc.flush()

    # Denied publishes are reported, and none of them ever reaches the admin's `>`: the
    # allowed publishes after them arrive, and nothing denied arrives before or among them.
    for subject in case.pub_denied:
        await me.nc.publish(subject, b"x")
        await me.denied("Publish", subject)
    for subject in case.pub_ok:
        before = await _deliver(me.nc, seen, subject)
        assert not set(before) & set(case.pub_denied), before

    for subject in case.sub_denied:
        await me.nc.subscribe(subject)
        await me.denied("Subscription", subject)
    for subject in case.sub_ok:
        sub = await me.nc.subscribe(subject)
        await me.nc.flush()
        await _deliver(admin.nc, sub, subject)


async def _deliver(publisher: Client, sub: Subscription, subject: str) -> list[str]:
    """Publish on `subject` until a message on it reaches `sub`; the subjects `sub` got first.

    Published again every half second: now and then (about 1 run in 10 here) the server
    delivered nothing to a subscription made on another connection although that
    connection's flush had returned. Repeats of earlier probes are skipped by subject.
    """
    others: list[str] = []
    for _ in range(int(WAIT_S / 0.5)):
        await publisher.publish(subject, b"probe")
        try:
            while (msg := await sub.next_msg(timeout=0.5)).subject != subject:
                others.append(msg.subject)
            return others
        except nats.errors.TimeoutError:
            continue
    raise AssertionError(f"nothing arrived on {subject}")


async def test_client_cannot_read_another_clients_inbox(
    secured: Secured, connect_as: ConnectAs
) -> None:
    alice, admin = await connect_as("client-alice"), await connect_as("admin")
    bob_inbox = inbox(secured, "client-bob")
    spy = await alice.nc.subscribe(f"{bob_inbox}.>")
    await alice.denied("Subscription", f"{bob_inbox}.>")
    own = await alice.nc.subscribe(f"{alice.nc.new_inbox()}")
    await alice.nc.flush()
    await admin.nc.publish(f"{bob_inbox}.reply", b"secret")
    await _deliver(admin.nc, own, own.subject)  # after bob's, from the same publisher
    assert spy.pending_msgs == 0


async def test_clients_use_their_own_inbox_prefix(secured: Secured, connect_as: ConnectAs) -> None:
    """Requests work for a client only because its replies come under its own prefix."""
    alice, admin = await connect_as("client-alice"), await connect_as("admin")
    assert alice.nc.new_inbox().startswith(inbox(secured, "client-alice") + ".")

    async def echo(msg: nats.aio.msg.Msg) -> None:
        await msg.respond(msg.data)

    await admin.nc.subscribe(S.state, cb=echo)
    await admin.nc.flush()
    for _ in range(int(WAIT_S / 0.5)):  # the subscription may not be visible at once (above)
        with contextlib.suppress(nats.errors.NoRespondersError):
            reply = await alice.nc.request(S.state, b"ping", timeout=WAIT_S)
            break
        await asyncio.sleep(0.5)
    assert reply.data == b"ping"


async def refusal(url: str, **opts: object) -> str:
    """The error of a connection attempt the server refuses (the client is closed after)."""
    nc = Client()
    try:
        await nc.connect(url, allow_reconnect=False, max_reconnect_attempts=0, **opts)
    except Exception as exc:
        return repr(exc)
    finally:
        await nc.close()
    raise AssertionError("the server accepted the connection")


async def test_connection_without_credentials_is_refused(secured: Secured) -> None:
    assert "Authorization" in await refusal(secured.server.url)


async def test_unknown_nkey_is_refused(secured: Secured, tmp_path: Path) -> None:
    [stranger] = natsconf.ensure_seeds(tmp_path / "other", [natsconf.Identity("x", "admin")])
    seed = natsconf.seed_file(tmp_path / "other", stranger.name)
    assert "Authorization" in await refusal(secured.server.url, nkeys_seed=str(seed))
