"""Issue 12, tenancy of batches: a batch id lives in its producer's namespace, and the server's
permissions keep each producer in its own (docs/batch.md#namespaces). Two producers on a real
nats-server with auth, with a real orchestrator, pool and worker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, PubAck

from llorch_orch import natsconf
from llorch_orch.batch import store
from llorch_orch.batch.cli import request_status
from llorch_orch.batch.cli import submit as cli_submit
from llorch_orch.batch.config import RESULTS_STREAM
from llorch_orch.natsserver import NatsServer
from llorch_orch.stack import Stack
from schemas import (
    BatchCancelReply,
    BatchCancelRequest,
    BatchJob,
    BatchStatus,
    BatchStatusRequest,
    Error,
    ErrorCode,
    Subjects,
    decoder,
    encode,
)
from tests.e2e.conftest import HEARTBEAT_S, Cluster
from tests.security.conftest import Conn

from .conftest import FAST, MODEL, stored, wait_settled

S = Subjects()
BATCH = "nightly"  # both producers use this batch id and the same custom ids
SHORT = "Hi"
LONG = "Write one long sentence about the history of the sea, its ships and their sailors:"
_reply = decoder(BatchStatus | BatchCancelReply | Error)


@dataclass
class Tenants:
    etl: Conn
    ml: Conn


@pytest.fixture
async def tenants(tmp_path: Path) -> AsyncIterator[Tenants]:
    """Producers `etl` and `ml` connected to a deployment with auth that runs batches."""
    config = natsconf.write_deployment(tmp_path, S, ["p1"], ["alice"], ["etl", "ml"])
    server = NatsServer.start(tmp_path / "jetstream", config=config)
    data = tmp_path / "data"
    (data / "logs").mkdir(parents=True)
    (data / "orch.toml").write_text(FAST)
    stack = Stack(data, server.url, S.prefix, creds_dir=tmp_path / "creds")
    conns: list[Conn] = []
    try:
        stack.spawn("orchestrator", ["llorch_orch", "orch", "--config", str(data / "orch.toml"),
                                     *stack.seed_args("orchestrator")])  # fmt: skip
        stack.spawn("pool-p1", ["llorch_pool", "serve", "--pool-id", "p1", "--data-dir",
                                str(data), "--cpu", "--heartbeat-interval", str(HEARTBEAT_S),
                                *stack.seed_args("pool-p1"),
                                *stack.seed_args("worker-p1", "--worker-nkey-seed")])  # fmt: skip
        for identity in ("admin", "producer-etl", "producer-ml"):
            conns.append(await _connect(stack, identity))
        await Cluster(stack, conns[0].nc).wait_for_pools("p1")
        yield Tenants(etl=conns[1], ml=conns[2])
    finally:
        for conn in conns:
            await conn.nc.close()
        stack.stop()
        server.stop()


async def _connect(stack: Stack, identity: str) -> Conn:
    denials: asyncio.Queue[str] = asyncio.Queue()

    async def on_error(exc: Exception) -> None:
        denials.put_nowait(str(exc))

    opts = stack.credentials(identity).connect_options()
    nc = await nats.connect(stack.nats_url, error_cb=on_error, max_reconnect_attempts=0, **opts)
    return Conn(nc, denials)


def job(custom_id: str, prompt: str) -> BatchJob:
    return BatchJob(model=MODEL, custom_id=custom_id, prompt=prompt, max_tokens=4, seed=1)


async def submit(
    nc: Client, producer: str, custom_id: str, prompt: str, headers: dict[str, str] | None = None
) -> PubAck:
    """One job as any producer publishes it: on its own subject in its namespace."""
    subject = S.batch_submit(producer, BATCH, custom_id)
    return await nc.jetstream().publish(subject, encode(job(custom_id, prompt)), headers=headers)


async def test_two_producers_with_the_same_batch_and_custom_ids_each_get_their_own_results(
    tenants: Tenants,
) -> None:
    etl, ml = tenants.etl.nc, tenants.ml.nc
    # ml goes first: etl's jobs of the same ids are still new, never "duplicates" of ml's
    for nc, producer, prompt in ((ml, "ml", LONG), (etl, "etl", SHORT)):
        for custom_id in ("a", "b"):
            assert not (await submit(nc, producer, custom_id, prompt)).duplicate

    for nc, producer in ((etl, "etl"), (ml, "ml")):
        status = await wait_settled(nc, BATCH, 2, producer)
        assert (status.total, status.done, status.failed) == (2, 2, 0), status
    mine = {p: {r.custom_id: r for r in await stored(nc, BATCH, p)} for nc, p in
            ((etl, "etl"), (ml, "ml"))}  # fmt: skip
    assert sorted(mine["etl"]) == sorted(mine["ml"]) == ["a", "b"]
    for custom_id in ("a", "b"):  # each result is of its own producer's prompt
        own, other = mine["etl"][custom_id], mine["ml"][custom_id]
        assert own.outcome == other.outcome == "ok", (own, other)
        assert own.tokens_in < other.tokens_in
        assert own.text != other.text
    assert mine["etl"]["a"].text == mine["etl"]["b"].text  # same prompt and seed: same text


async def test_a_producer_cannot_submit_into_read_watch_or_cancel_another_producers_batch(
    tenants: Tenants,
) -> None:
    etl, ml = tenants.etl, tenants.ml
    await submit(etl.nc, "etl", "a", SHORT)
    await wait_settled(etl.nc, BATCH, 1, "etl")
    [before] = await stored(etl.nc, BATCH, "etl")

    body = encode(job("a", LONG))
    r, theirs = RESULTS_STREAM, S.batch_result("etl", BATCH)
    denied = [  # the server refuses each: the namespace `etl` is not ml's
        S.batch_submit("etl", BATCH, "a"),
        S.batch_status("etl"),
        S.batch_cancel("etl"),
        # every JetStream API subject that could read etl's results or list its batches
        f"$JS.API.CONSUMER.CREATE.{r}.spy.{theirs}",
        f"$JS.API.CONSUMER.CREATE.{r}.spy",  # the filter in the body only
        f"$JS.API.CONSUMER.CREATE.{r}",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{r}.spy",
        f"$JS.API.DIRECT.GET.{r}.{S.batch_result('etl', BATCH, 'a')}",
        f"$JS.API.DIRECT.GET.{r}",  # the subject in the body
        f"$JS.API.STREAM.MSG.GET.{r}",
        f"$JS.API.STREAM.INFO.{r}",
    ]
    for subject in denied:
        await ml.nc.publish(subject, body)
        await ml.denied("Publish", subject)
    await ml.nc.subscribe(S.batch_event("etl", BATCH))
    await ml.denied("Subscription", S.batch_event("etl", BATCH))

    # A create on ml's own filter subject whose body names etl's results: the server checks
    # that the two agree (with one filter or a list of them)
    own = f"$JS.API.CONSUMER.CREATE.{r}.spy.{S.batch_result('ml', BATCH)}"
    for filters in ({"filter_subject": theirs}, {"filter_subjects": [theirs]}):
        config = ConsumerConfig(name="spy", ack_policy=AckPolicy.NONE, **filters)
        request = json.dumps({"stream_name": r, "config": config.as_dict()}).encode()
        reply = json.loads((await ml.nc.request(own, request, timeout=10)).data)
        assert "error" in reply and "config" not in reply, reply

    # In ml's own namespace etl's batch id names nothing
    for subject, ask in ((S.batch_status("ml"), BatchStatusRequest),
                         (S.batch_cancel("ml"), BatchCancelRequest)):  # fmt: skip
        answer = _reply(
            (await ml.nc.request(subject, encode(ask(batch_id=BATCH)), timeout=10)).data
        )
        assert isinstance(answer, Error) and answer.code == ErrorCode.NOT_FOUND, answer

    status = await request_status(etl.nc, S, "etl", BATCH)
    assert isinstance(status, BatchStatus) and not status.cancelled, status
    assert (status.total, status.done) == (1, 1)
    assert await stored(etl.nc, BATCH, "etl") == [before]


async def test_a_job_another_producer_sent_first_with_its_ids_still_runs_as_its_own(
    tenants: Tenants, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 12: one producer cannot make another's job a "duplicate". ml sends first a job
    with every key etl's job has: the same batch and custom id in ml's namespace, carrying the
    Msg-Id a job of etl's had (`etl.nightly.a`, which a stream matches across namespaces);
    etl's own subject, the key the stream de-duplicates on, is refused to ml."""
    etl, ml = tenants.etl, tenants.ml
    forged = {"Nats-Msg-Id": store.msg_id("etl", BATCH, "a")}
    assert not (await submit(ml.nc, "ml", "a", LONG, forged)).duplicate
    await ml.nc.publish(S.batch_submit("etl", BATCH, "a"), encode(job("a", LONG)), headers=forged)
    await ml.denied("Publish", S.batch_submit("etl", BATCH, "a"))

    path = tmp_path / "etl.jsonl"
    path.write_text(encode(job("a", SHORT)).decode() + "\n")
    assert await cli_submit(etl.nc, S, "etl", path, BATCH, MODEL) == 0
    assert "1 job: 1 new, 0 duplicates" in capsys.readouterr().err

    for nc, producer in ((etl.nc, "etl"), (ml.nc, "ml")):
        status = await wait_settled(nc, BATCH, 1, producer)
        assert (status.total, status.done, status.failed) == (1, 1, 0), status
    [own] = await stored(etl.nc, BATCH, "etl")
    [other] = await stored(ml.nc, BATCH, "ml")
    assert own.custom_id == other.custom_id == "a"
    assert own.outcome == other.outcome == "ok", (own, other)
    assert own.tokens_in < other.tokens_in and own.text != other.text  # etl's prompt, not ml's
