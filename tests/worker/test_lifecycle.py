"""Process lifecycle: a failed load reports and exits 3; SIGTERM drains, SIGINT (its pool
stopping) ends the running job now, SIGHUP (its pool died) abandons it silently; all exit 0."""

from __future__ import annotations

import signal
from pathlib import Path

import nats
import pytest

from llorch_orch.natsserver import NatsServer
from schemas import End, Error, ErrorCode, WorkerFailed, WorkerReady
from tests.worker.conftest import (
    LONG_TOKENS,
    WAIT,
    Stream,
    decode_status,
    spawn_worker,
    spawn_worker_async,
    start_long_job,
    stop_worker,
)


def test_a_file_that_is_not_a_model_reports_load_failed_and_exits_3(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    bogus = tmp_path / "not-a-model.gguf"
    bogus.write_bytes(b"GGUF but not really" * 100)
    worker = spawn_worker(nats_server.url, "w-bad", bogus)
    assert isinstance(worker.announced, WorkerFailed)
    assert worker.announced.code == ErrorCode.MODEL_LOAD_FAILED
    assert (worker.announced.worker_id, worker.announced.pool_id) == ("w-bad", "pool-1")
    assert worker.proc.wait(timeout=WAIT) == 3


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_an_idle_worker_exits_0_on_signal(
    sig: signal.Signals, nats_server: NatsServer, model_path: Path
) -> None:
    worker = spawn_worker(nats_server.url, "w-idle", model_path)
    assert isinstance(worker.announced, WorkerReady)
    worker.proc.send_signal(sig)
    assert worker.proc.wait(timeout=WAIT) == 0


async def test_sigterm_finishes_the_running_job_refuses_new_ones_and_exits_0(
    nats_server: NatsServer, model_path: Path
) -> None:
    worker = await spawn_worker_async(nats_server.url, "w-drain", model_path)
    nc = await nats.connect(nats_server.url)
    try:
        async with Stream(nc, "job-drain") as stream:
            # long: still running when the late execute arrives (a short job could have ended
            # and the worker exited, leaving the late execute without a responder)
            run = await start_long_job(stream, "w-drain")
            worker.proc.send_signal(signal.SIGTERM)
            async with Stream(nc, "job-late") as late:
                refused = await late.execute("w-drain")
            assert isinstance(refused, Error) and refused.code == ErrorCode.WORKER_BUSY
            await stream.finish(run)
        assert [type(e) for e in run.events if isinstance(e, End | Error)] == [End]
        assert run.terminal.finish_reason == "length" and run.terminal.tokens_out == LONG_TOKENS
        assert run.statuses[-1].state == "finished"
        assert worker.proc.wait(timeout=WAIT) == 0
    finally:
        await nc.close()
        stop_worker(worker)


async def test_sigint_ends_the_running_job_with_a_retriable_worker_lost_and_exits_0(
    nats_server: NatsServer, model_path: Path
) -> None:
    worker = await spawn_worker_async(nats_server.url, "w-stop", model_path)
    nc = await nats.connect(nats_server.url)
    try:
        async with Stream(nc, "job-stop") as stream:
            run = await start_long_job(stream, "w-stop")
            worker.proc.send_signal(signal.SIGINT)
            await stream.finish(run)  # up to the terminal event; asserts nothing follows it
        assert [type(e) for e in run.events if isinstance(e, End | Error)] == [Error]
        assert run.terminal.code == ErrorCode.WORKER_LOST and run.terminal.retriable
        final = run.statuses[-1]
        assert (final.state, final.code, final.seq) == (
            "failed",
            ErrorCode.WORKER_LOST,
            run.terminal.seq,
        )
        assert final.tokens_out < LONG_TOKENS
        assert worker.proc.wait(timeout=WAIT) == 0
    finally:
        await nc.close()
        stop_worker(worker)


async def test_sighup_abandons_the_running_job_silently_and_exits_0(
    nats_server: NatsServer, model_path: Path
) -> None:
    """Its pool died: the orchestrator retries the job elsewhere, so not one more event."""
    worker = await spawn_worker_async(nats_server.url, "w-hup", model_path)
    nc = await nats.connect(nats_server.url)
    try:
        async with Stream(nc, "job-hup") as stream:
            run = await start_long_job(stream, "w-hup")
            worker.proc.send_signal(signal.SIGHUP)
            final = None
            while final is None or final.state != "abandoned":
                final = decode_status((await stream.status.next_msg(timeout=WAIT)).data)
                assert final.state in ("started", "progress", "abandoned"), final
            assert final.code == ErrorCode.POOL_LOST
            # the status follows every event it published, on one connection: all queued here
            while stream.events.pending_msgs:
                await stream.next_event(run)
            assert run.events[-1].seq == final.seq
            assert not any(isinstance(e, End | Error) for e in run.events)
            assert final.tokens_out < LONG_TOKENS
        assert worker.proc.wait(timeout=WAIT) == 0
    finally:
        await nc.close()
        stop_worker(worker)
