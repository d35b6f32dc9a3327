"""The job stream de-duplicates on its subjects (docs/batch.md#de-duplication), and the stream
of an existing deployment is brought to that config in place. A real nats-server."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.errors import APIError

from llorch_orch.batch import store
from llorch_orch.batch.cli import submit
from llorch_orch.batch.config import (
    BATCH_STREAM,
    CONSUMER,
    RESULTS_STREAM,
    BatchConfig,
    batch_stream,
    consumer,
)
from schemas import Subjects

from .conftest import MODEL, PRODUCER, jobs_file

S = Subjects()


async def test_the_previous_versions_job_stream_and_consumer_are_updated_in_place(
    nc: Client,
) -> None:
    js, cfg = nc.jetstream(), BatchConfig()
    ours = batch_stream(cfg, S)
    # the previous version's: one subject per batch, de-duplicated by Nats-Msg-Id
    before = f"{S.prefix}.batch.submit.*.*"
    await js.add_stream(
        dataclasses.replace(
            ours, subjects=[before], max_msgs_per_subject=-1, discard_new_per_subject=False,
            duplicate_window=cfg.duplicate_window_s,
        )
    )  # fmt: skip
    previous = dataclasses.replace(consumer(cfg, S), filter_subject=before)
    await js.add_consumer(BATCH_STREAM, previous)

    await store.ensure_streams(js, cfg, S)  # what the runner does at start
    await js.add_consumer(BATCH_STREAM, consumer(cfg, S))

    config = (await js.stream_info(BATCH_STREAM)).config
    assert config.subjects == [S.batch_submit_all]
    assert (config.max_msgs_per_subject, config.discard_new_per_subject) == (1, True)
    assert config.duplicate_window == ours.duplicate_window
    assert (await js.consumer_info(BATCH_STREAM, CONSUMER)).config.filter_subject == (
        S.batch_submit_all
    )
    for custom_id in ("a", "b", "c"):
        await js.publish(S.batch_submit(PRODUCER, "b1", custom_id), b"{}")
    with pytest.raises(APIError) as refused:  # a second message of job `a`: its duplicate
        await js.publish(S.batch_submit(PRODUCER, "b1", "a"), b"{}")
    assert store.is_duplicate(refused.value)
    assert await store.waiting(js, S, PRODUCER, "b1") == 3
    assert await store.waiting(js, S, PRODUCER, "b2") == 0


async def test_a_full_stream_is_not_a_duplicate(nc: Client) -> None:
    js = nc.jetstream()
    small = dataclasses.replace(batch_stream(BatchConfig(), S), max_msgs=1)
    await js.add_stream(small)
    await js.publish(S.batch_submit(PRODUCER, "b1", "a"), b"{}")
    with pytest.raises(APIError) as refused:
        await js.publish(S.batch_submit(PRODUCER, "b1", "b"), b"{}")
    assert not store.is_duplicate(refused.value)


async def test_a_lone_server_gets_one_replica_and_refuses_more_when_asked(nc: Client) -> None:
    js = nc.jetstream()
    await store.ensure_streams(js, BatchConfig(), S)  # automatic: as many as it can place
    assert (await js.stream_info(BATCH_STREAM)).config.num_replicas == 1
    with pytest.raises(APIError, match="non-clustered"):  # asked: never fewer in silence
        await store.ensure_streams(js, BatchConfig(replicas=2), S)


async def test_a_submit_waits_for_streams_a_beginning_lead_makes(
    nc: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`llorch batch submit` before the leader made the streams (a stack starting, a failover
    on a cluster) says it waits, and publishes once they are there; with none, it fails."""
    js, jobs = nc.jetstream(), jobs_file(tmp_path, 2)
    assert await submit(nc, S, PRODUCER, jobs, "early", MODEL, ready_s=0) == 1
    assert "is the orchestrator running?" in capsys.readouterr().err
    # the submit's probe (a result lookup) reaches us while no stream answers it
    probes = await nc.subscribe(f"$JS.API.DIRECT.GET.{RESULTS_STREAM}.>")
    submitting = asyncio.ensure_future(submit(nc, S, PRODUCER, jobs, "early", MODEL))
    await probes.next_msg(timeout=30)
    await probes.unsubscribe()
    await store.ensure_streams(js, BatchConfig(), S)  # what the lead does at its start
    assert await submitting == 0
    assert "waiting for the LLORCH_BATCH stream" in capsys.readouterr().err
    assert await store.waiting(js, S, PRODUCER, "early") == 2
