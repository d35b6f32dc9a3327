"""Issue 12: the batch runner settles every message, whatever it holds (docs/batch.md, Poison
messages): an error result where a result subject exists, a dead letter where none does; none
is left unacked, and none keeps a healthy job from running."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client

from llorch_orch.batch import store
from llorch_orch.batch.config import BATCH_STREAM, CONSUMER, BatchConfig
from llorch_orch.natsserver import free_port
from schemas import MAX_MESSAGE_BYTES, BatchJob, BatchResult, ErrorCode, Subjects, encode
from tests.telemetry.test_metrics import scrape, value

from .conftest import (
    FAST,
    MODEL,
    PRODUCER,
    ClusterFactory,
    jobs_file,
    stored,
    submit_file,
    wait_settled,
)

TERMINATED = f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{BATCH_STREAM}.{CONSUMER}"
BOUND = 4096  # bytes of a stored poison result, characters of an orchestrator log line, at most


async def test_poison_messages_are_settled_and_a_healthy_job_still_runs(
    make_cluster: ClusterFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("LLORCH_METRICS_PORT", str(port))  # the orchestrator's (the pool's: off)
    cluster = await make_cluster(FAST, pool_args=("--metrics-port", "0"))
    nc, js, subjects = cluster.nc, cluster.nc.jetstream(), cluster.subjects
    terminated = await nc.subscribe(TERMINATED)

    def poison(custom_id: str) -> str:
        return subjects.batch_submit(PRODUCER, "poison", custom_id)

    model = MODEL.encode()
    messages = [  # (subject, body, headers): each published by a raw producer
        # a valid subject token, an invalid batch id: no result subject can be formed
        (f"{subjects.prefix}.batch.submit.{PRODUCER}.{'b' * 65}.nobatch",
         encode(BatchJob(model=MODEL, custom_id="nobatch", prompt="Hi")), None),
        # invalid UTF-8 inside a JSON string, as raw bytes
        (poison("utf8"),
         b'{"custom_id":"utf8","model":"' + model + b'","prompt":"caf\xc3\xa9 \xff\xfe"}', None),
        # a model name of ~1 MiB: the whole message still fits the stream
        (poison("big-model"),
         b'{"custom_id":"big-model","model":"' + b"m" * 1_000_000 + b'","prompt":"Hi"}', None),
        # not JSON: the job is known by its subject
        (poison("not-json"), b"this is not JSON", None),
        # a line its producer rejected, with a 50 kB reason: stored clipped, never echoed whole
        (poison("rejected"), b"", {"Llorch-Error": "e" * 50_000}),
        # a body naming another job than its subject: refused, under the subject's id
        (poison("mismatch"), encode(BatchJob(model=MODEL, custom_id="other", prompt="Hi")), None),
    ]  # fmt: skip
    seqs = [(await js.publish(s, body, headers=h)).seq for s, body, h in messages]
    await submit_file(cluster, jobs_file(tmp_path, 1), "healthy")

    status = await wait_settled(nc, "healthy", 1)
    assert (status.done, status.failed) == (1, 0)
    reasons: dict[int, str] = {}  # every poison message is terminated: never redelivered
    while not set(seqs) <= reasons.keys():
        advisory = json.loads((await terminated.next_msg(timeout=60)).data)
        reasons[advisory["stream_seq"]] = advisory.get("reason", "")
    assert reasons[seqs[0]].startswith("dead letter (invalid_batch_id)")
    results = {r.custom_id: r for r in await stored(nc, "poison")}
    assert sorted(results) == sorted(["utf8", "big-model", "not-json", "rejected", "mismatch"])
    for custom_id, result in results.items():  # the model name is over its bound: refused
        assert result.outcome == "failed" and result.error, result
        code = ErrorCode.INVALID_ID if custom_id == "mismatch" else ErrorCode.INVALID_PARAMS
        assert result.error.code == code, result.error
        assert len(encode(result)) < BOUND
    assert results["rejected"].error and results["rejected"].error.message.startswith("eee")

    consumer = await js.consumer_info(BATCH_STREAM, CONSUMER)
    assert (consumer.num_ack_pending, consumer.num_pending) == (0, 0)
    assert (await js.stream_info(BATCH_STREAM)).state.messages == 0  # the work queue is empty
    samples = await asyncio.to_thread(scrape, f"http://127.0.0.1:{port}/metrics")
    assert value(samples, "llorch_batch_dead_letters_total", reason="invalid_batch_id") == 1
    log = cluster.stack.data_dir / "logs" / "orchestrator.log"
    assert max(map(len, log.read_text().splitlines())) < BOUND


@pytest.mark.parametrize("over", ["payload", "headers"])
async def test_a_result_too_large_to_store_is_stored_as_a_failed_stand_in(
    nc: Client, over: str
) -> None:
    """Over the max payload (nats-py refuses to send it), or under it but over it with the
    headers (the server would close the connection): stored as PAYLOAD_TOO_LARGE instead."""
    js, subjects = nc.jetstream(), Subjects()
    await store.ensure_streams(js, BatchConfig(), subjects)
    empty = BatchResult(batch_id="big", custom_id=over, outcome="ok", finish_reason="length")
    room = MAX_MESSAGE_BYTES - len(encode(empty))
    result = msgspec.structs.replace(empty, text="x" * (room + 1 if over == "payload" else room))
    assert len(encode(result)) == MAX_MESSAGE_BYTES + (over == "payload")

    kept = await store.store(js, subjects, PRODUCER, result)
    assert (kept.outcome, kept.text, kept.finish_reason) == ("failed", "", None)
    assert kept.error and kept.error.code == ErrorCode.PAYLOAD_TOO_LARGE
    assert nc.is_connected
    found = await store.results(js, subjects, PRODUCER, "big")
    assert [r for r in found if r.custom_id == over] == [kept]
