"""One real worker process on the bundled model; the tests play orchestrator and client."""

from __future__ import annotations

import json
from pathlib import Path

from nats.aio.client import Client

from schemas import (
    Ack,
    End,
    Error,
    ErrorCode,
    JobStatus,
    Started,
    Token,
    WorkerCancel,
    WorkerReady,
    decoder,
    encode,
)
from tests.worker.conftest import (
    LONG_JOB,
    LONG_TOKENS,
    N_CTX,
    SUBJECTS,
    WAIT,
    JobRun,
    Stream,
    WorkerProc,
    decode_reply,
    decode_status,
    generate,
    make_execute,
    start_long_job,
)

_abandon_reply = decoder(JobStatus | Ack | Error)


def test_ready_reports_a_measured_cpu_footprint(worker: WorkerProc, model_path: Path) -> None:
    ready = worker.announced
    assert isinstance(ready, WorkerReady)
    assert (ready.worker_id, ready.pool_id, ready.pid, ready.n_ctx) == (
        "w-mod",
        "pool-1",
        worker.proc.pid,
        N_CTX,
    )
    # RSS holds at least the weights it touched and far less than a model would justify.
    assert model_path.stat().st_size // 4 < ready.memory_bytes < 4 * 2**30
    assert ready.layers_offloaded == 0
    assert ready.layers_total == 31  # SmolLM2-135M: 30 blocks + the output layer
    assert ready.load_ms > 0


async def test_a_job_streams_started_tokens_and_one_end(worker: WorkerProc, client: Client):
    run = await generate(client, worker.worker_id, "job-stream", max_tokens=8, seq=3)
    started, *tokens, end = run.events
    assert started == Started(
        seq=3, job_id="job-stream", worker_id="w-mod", model="smollm2", seed=42
    )
    assert tokens and all(isinstance(t, Token) and t.text for t in tokens)
    assert isinstance(end, End)
    assert [e.seq for e in run.events] == list(range(3, 3 + len(run.events)))
    assert end.finish_reason == "length"
    assert end.tokens_out == 8
    assert end.tokens_in > 0
    assert 0 < end.ttft_ms <= end.total_ms
    states = [s.state for s in run.statuses]
    assert states[0] == "started" and states[-1] == "finished"
    assert set(states[1:-1]) <= {"progress"}
    assert run.statuses[-1].seq == end.seq
    assert run.statuses[-1].tokens_out == 8


async def test_progress_statuses_carry_rising_seqs(worker: WorkerProc, client: Client):
    run = await generate(client, worker.worker_id, "job-progress", max_tokens=48)
    progress = [s.seq for s in run.statuses if s.state == "progress"]
    assert progress, "a job of many tokens reports progress at --progress-interval 0.05"
    assert progress == sorted(set(progress))
    assert progress[-1] < run.terminal.seq


async def test_same_seed_gives_same_text_greedy_and_sampled(worker: WorkerProc, client: Client):
    for temperature in (0.0, 0.9):
        runs = [
            await generate(
                client, worker.worker_id, f"job-det-{i}", max_tokens=24, seed=1234,
                temperature=temperature, prompt="Once upon a time",
            )
            for i in range(2)
        ]  # fmt: skip
        assert runs[0].text and runs[0].text == runs[1].text, temperature


async def test_stop_sequence_is_honoured_and_never_emitted(worker: WorkerProc, client: Client):
    free = await generate(client, worker.worker_id, "job-free", max_tokens=24)
    stop = free.text[len(free.text) // 2 :][:3]
    assert stop.strip(), free.text
    run = await generate(client, worker.worker_id, "job-stop", max_tokens=24, stop=[stop])
    assert stop not in run.text
    assert run.text == free.text[: free.text.index(stop)]
    assert isinstance(run.terminal, End) and run.terminal.finish_reason == "stop"


async def test_busy_while_a_job_runs_then_cancel(worker: WorkerProc, client: Client):
    async with Stream(client, "job-long") as stream:
        run = await start_long_job(stream, worker.worker_id)
        async with Stream(client, "job-second") as second:
            busy = await second.execute(worker.worker_id)
        assert isinstance(busy, Error)
        assert busy.code == ErrorCode.WORKER_BUSY and busy.retriable
        cancel = await client.request(
            SUBJECTS.worker_cancel(worker.worker_id), b'{"job_id":"job-long"}', timeout=WAIT
        )
        assert decode_reply(cancel.data) == Ack(detail="cancelling")
        await stream.finish(run)  # up to the terminal event; asserts nothing follows it
    assert [type(e) for e in run.events if isinstance(e, End | Error)] == [Error]
    assert isinstance(run.terminal, Error) and run.terminal.code == ErrorCode.CANCELLED
    assert run.terminal.job_id == "job-long" and not run.terminal.retriable
    assert run.terminal.seq == run.events[-2].seq + 1
    final = run.statuses[-1]
    assert (final.state, final.code) == ("failed", ErrorCode.CANCELLED)
    assert [s.state for s in run.statuses].count("failed") == 1
    # interrupted: fewer tokens made than asked (a token event may carry several)
    tokens = len([e for e in run.events if isinstance(e, Token)])
    assert 1 <= tokens <= final.tokens_out < LONG_TOKENS
    again = await client.request(
        SUBJECTS.worker_cancel(worker.worker_id), b'{"job_id":"job-long"}', timeout=WAIT
    )
    assert decode_reply(again.data) == Ack(detail="not running")
    # and the worker is free again
    after = await generate(client, worker.worker_id, "job-after-cancel", max_tokens=2)
    assert isinstance(after.terminal, End) and after.terminal.tokens_out == 2


async def test_resume_after_suppresses_events_the_client_has(worker: WorkerProc, client: Client):
    full = await generate(client, worker.worker_id, "job-full", max_tokens=12, seq=1)
    resumed = await generate(
        client, worker.worker_id, "job-full", max_tokens=12, seq=1, resume_after=4
    )
    assert [e.seq for e in resumed.events] == [e.seq for e in full.events if e.seq > 4]
    assert resumed.events[:-1] == [e for e in full.events if e.seq > 4][:-1]
    assert resumed.text == "".join(
        e.text for e in full.events if isinstance(e, Token) and e.seq > 4
    )


async def test_client_gone_cancels_the_job(worker: WorkerProc, client: Client):
    gone = client.new_inbox()  # nobody subscribes: the client vanished before the job began
    status = await client.subscribe(SUBJECTS.job_status("job-gone"))
    execute = encode_execute("job-gone", gone, **LONG_JOB)
    reply = await client.request(SUBJECTS.execute(worker.worker_id), execute, timeout=WAIT)
    assert isinstance(decode_reply(reply.data), Ack)
    final = None
    while final is None or final.state not in ("finished", "failed"):
        final = decode_status((await status.next_msg(timeout=WAIT)).data)
    assert final.state == "failed" and final.code == ErrorCode.CANCELLED
    assert final.tokens_out < LONG_TOKENS
    # and the worker is free again
    run = await generate(client, worker.worker_id, "job-after-gone", max_tokens=2)
    assert isinstance(run.terminal, End) and run.terminal.tokens_out == 2


async def test_context_overflow_is_refused_before_the_job_starts(
    worker: WorkerProc, client: Client
):
    """Found by tokenizing, before the answer: the execute's refusal is the only word on it (the
    orchestrator fails the job with its code and keeps the worker)."""
    async with Stream(client, "job-overflow") as stream:
        refused = await stream.execute(worker.worker_id, max_tokens=N_CTX)
    assert isinstance(refused, Error) and refused.code == ErrorCode.CONTEXT_OVERFLOW
    assert f"exceed n_ctx {N_CTX}" in refused.message
    run = await generate(client, worker.worker_id, "job-after-overflow", max_tokens=2)
    assert isinstance(run.terminal, End)


async def test_abandon_stops_the_stream_silently_and_answers_where_it_stopped(
    worker: WorkerProc, client: Client
):
    cancel = SUBJECTS.worker_cancel(worker.worker_id)
    abandon = encode(WorkerCancel(job_id="job-abandon", abandon=True))
    async with Stream(client, "job-abandon") as stream:
        run = await start_long_job(stream, worker.worker_id)
        final = _abandon_reply((await client.request(cancel, abandon, timeout=WAIT)).data)
        assert isinstance(final, JobStatus), final
        assert (final.state, final.code) == ("abandoned", ErrorCode.WORKER_LOST)
        # all it published came before its answer, on one connection: queued here by now
        while stream.events.pending_msgs:
            await stream.next_event(run)
        assert run.events[-1].seq == final.seq
        assert not any(isinstance(e, End | Error) for e in run.events)
        tokens = len([e for e in run.events if isinstance(e, Token)])
        assert 1 <= tokens <= final.tokens_out < LONG_TOKENS
    again = _abandon_reply((await client.request(cancel, abandon, timeout=WAIT)).data)
    assert again == final  # asked again: how it ended, nothing restarted
    run = await generate(client, worker.worker_id, "job-after-abandon", max_tokens=2)
    assert isinstance(run.terminal, End) and run.terminal.tokens_out == 2


async def test_bad_payloads_get_coded_errors_and_the_worker_keeps_serving(
    worker: WorkerProc, client: Client
):
    execute, cancel = SUBJECTS.execute(worker.worker_id), SUBJECTS.worker_cancel(worker.worker_id)
    cases = [
        (execute, b"{not json", ErrorCode.INVALID_PARAMS),
        (execute, b'{"type":"execute","job_id":"x"}', ErrorCode.INVALID_PARAMS),
        (execute, encode_execute("bad.id", "_INBOX.x"), ErrorCode.INVALID_ID),
        (execute, encode_execute("j", "_INBOX.x", max_tokens=0), ErrorCode.INVALID_PARAMS),
        (execute, encode_execute("j", "_INBOX.>"), ErrorCode.INVALID_PARAMS),
        (cancel, b"[]", ErrorCode.INVALID_PARAMS),
        (cancel, b'{"job_id":"a*"}', ErrorCode.INVALID_ID),
    ]
    for subject, data, code in cases:
        reply = decode_reply((await client.request(subject, data, timeout=WAIT)).data)
        assert isinstance(reply, Error) and reply.code == code, (data, reply)
    run = await generate(client, worker.worker_id, "job-after-bad", max_tokens=2)
    assert isinstance(run.terminal, End)


async def test_trace_headers_ride_on_every_event(worker: WorkerProc, client: Client):
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with Stream(client, "job-trace") as stream:
        run = JobRun(
            await stream.execute(worker.worker_id, {"traceparent": traceparent}, max_tokens=3)
        )
        await stream.finish(run)
    assert [h and h.get("traceparent") for h in run.headers] == [traceparent] * len(run.events)


async def test_discoverable_as_a_micro_service(worker: WorkerProc, client: Client):
    msg = await client.request("$SRV.INFO.llorch-worker", b"", timeout=WAIT)
    info = json.loads(msg.data)
    assert info["metadata"] == {"worker_id": "w-mod", "model": "smollm2", "pool": "pool-1"}
    subjects = {e["subject"] for e in info["endpoints"]}
    assert subjects == {SUBJECTS.execute("w-mod"), SUBJECTS.worker_cancel("w-mod")}


def encode_execute(job_id: str, stream: str, **params: object) -> bytes:
    return encode(make_execute(job_id, stream, **params))
