"""A worker with slots: concurrent jobs decoded together in one context, each still exactly the
job it would be alone (real nats-server, the bundled model, the worker as a subprocess)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from llorch_orch.natsserver import NatsServer
from llorch_worker.texthash import text_hash
from schemas import (
    Ack,
    End,
    Error,
    ErrorCode,
    Token,
    WorkerLoad,
    WorkerReady,
    decoder,
)
from tests.worker.conftest import (
    LONG_TOKENS,
    SUBJECTS,
    WAIT,
    JobRun,
    Stream,
    WorkerProc,
    decode_reply,
    generate,
    spawn_worker,
    start_long_job,
    stop_worker,
)

SLOTS = 8
PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "The best way to learn",
    "Water boils at",
    "My favourite colour is",
    "In 1492,",
    "Three facts about the moon:",
]
MAX_TOKENS = 16
decode_load = decoder(WorkerLoad)


@pytest.fixture(scope="module")
def slotted(module_server: NatsServer, model_path: Path) -> Iterator[WorkerProc]:
    w = spawn_worker(module_server.url, "w-slots", model_path, "--slots", str(SLOTS))
    assert isinstance(w.announced, WorkerReady), w.announced
    yield w
    stop_worker(w)
    assert w.proc.returncode == 0


def check_stream(run: JobRun, max_tokens: int) -> None:
    """One Started, tokens, exactly one End; seqs without a gap; the right counts."""
    seqs = [e.seq for e in run.events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert [type(e) for e in run.events if isinstance(e, End | Error)] == [End]
    end = run.terminal
    assert isinstance(end, End)
    assert end.tokens_out == max_tokens if end.finish_reason == "length" else end.tokens_out > 0
    final = run.statuses[-1]
    assert (final.state, final.seq, final.tokens_out) == ("finished", end.seq, end.tokens_out)
    assert final.hash == text_hash(run.text)


def test_ready_says_how_many_slots(slotted: WorkerProc) -> None:
    assert isinstance(slotted.announced, WorkerReady)
    assert slotted.announced.slots == SLOTS


async def test_concurrent_streams_each_equal_the_job_run_alone(
    slotted: WorkerProc, client: Client
) -> None:
    wid = slotted.worker_id
    alone = [
        await generate(client, wid, f"alone-{i}", prompt=p, max_tokens=MAX_TOKENS)
        for i, p in enumerate(PROMPTS)
    ]
    loads = await client.subscribe(SUBJECTS.ready(wid))
    together = await asyncio.gather(
        *(
            generate(client, wid, f"together-{i}", prompt=p, max_tokens=MAX_TOKENS)
            for i, p in enumerate(PROMPTS)
        )
    )
    for a, t in zip(alone, together, strict=True):
        check_stream(t, MAX_TOKENS)
        assert t.text == a.text  # greedy: batching changes no number on this build
    busy: list[int] = []  # loads until all slots are free again after the jobs took some
    while not busy or busy[-1] != 0 or max(busy) == 0:  # (a periodic `0` may come first)
        busy.append(decode_load((await loads.next_msg(timeout=WAIT)).data).slots_busy)
    await loads.unsubscribe()
    assert max(busy) > 1, busy  # they ran together, and the last word is: all slots free


async def test_sampled_streams_keep_their_seeds_in_a_batch(
    slotted: WorkerProc, client: Client
) -> None:
    wid, params = slotted.worker_id, {"temperature": 0.9, "max_tokens": MAX_TOKENS}
    alone = [
        await generate(client, wid, f"s-alone-{i}", prompt=p, seed=i, **params)
        for i, p in enumerate(PROMPTS[:4])
    ]
    together = await asyncio.gather(
        *(
            generate(client, wid, f"s-together-{i}", prompt=p, seed=i, **params)
            for i, p in enumerate(PROMPTS[:4])
        )
    )
    assert [t.text for t in together] == [a.text for a in alone]


async def test_greedy_and_sampled_streams_in_one_batch_each_equal_the_job_run_alone(
    slotted: WorkerProc, client: Client
) -> None:
    """Greedy tokens are picked for all of a step's greedy outputs at once (one argmax over
    the logits rows), sampled ones by their own chains: interleaved in one batch, each row
    must still go to its own sequence."""
    wid = slotted.worker_id
    mixed = [
        {"prompt": p, "max_tokens": MAX_TOKENS, "seed": i, "temperature": 0.9 if i % 2 else 0.0}
        for i, p in enumerate(PROMPTS)
    ]
    alone = [await generate(client, wid, f"m-alone-{i}", **f) for i, f in enumerate(mixed)]
    together = await asyncio.gather(
        *(generate(client, wid, f"m-together-{i}", **f) for i, f in enumerate(mixed))
    )
    for run in together:
        check_stream(run, MAX_TOKENS)
    assert [t.text for t in together] == [a.text for a in alone]


async def test_cancel_of_one_stream_leaves_the_others_untouched(
    slotted: WorkerProc, client: Client
) -> None:
    wid = slotted.worker_id
    alone = [
        await generate(client, wid, f"c-alone-{i}", prompt=p, max_tokens=24)
        for i, p in enumerate(PROMPTS[:3])
    ]
    async with Stream(client, "c-long") as stream:
        long = await start_long_job(stream, wid)
        others = [
            asyncio.create_task(generate(client, wid, f"c-{i}", prompt=p, max_tokens=24))
            for i, p in enumerate(PROMPTS[:3])
        ]
        await asyncio.sleep(0.2)  # the others are running beside it
        cancel = await client.request(
            SUBJECTS.worker_cancel(wid), b'{"job_id":"c-long"}', timeout=WAIT
        )
        assert decode_reply(cancel.data) == Ack(detail="cancelling")
        await stream.finish(long)
    assert isinstance(long.terminal, Error) and long.terminal.code == ErrorCode.CANCELLED
    assert long.statuses[-1].tokens_out < LONG_TOKENS
    for a, task in zip(alone, others, strict=True):
        run = await task
        check_stream(run, 24)
        assert run.text == a.text


async def test_an_execute_beyond_the_slots_is_busy(slotted: WorkerProc, client: Client) -> None:
    wid = slotted.worker_id
    streams = [Stream(client, f"b-{i}") for i in range(SLOTS)]
    runs = []
    for stream in streams:
        await stream.__aenter__()
        runs.append(await start_long_job(stream, wid))
    try:
        async with Stream(client, "b-extra") as extra:
            busy = await extra.execute(wid, max_tokens=2)
        assert isinstance(busy, Error) and busy.code == ErrorCode.WORKER_BUSY and busy.retriable
        assert f"all {SLOTS} slots busy" in busy.message
    finally:
        for stream, run in zip(streams, runs, strict=True):
            await client.request(
                SUBJECTS.worker_cancel(wid),
                f'{{"job_id":"{stream.job_id}"}}'.encode(),
                timeout=WAIT,
            )
            await stream.finish(run)
            await stream.__aexit__()
    assert all(isinstance(r.terminal, Error) for r in runs)
    after = await generate(client, wid, "b-after", max_tokens=2)  # a slot is free again
    assert isinstance(after.terminal, End)


async def test_a_retry_continues_only_when_its_text_matches_the_clients(
    slotted: WorkerProc, client: Client
) -> None:
    wid = slotted.worker_id
    full = await generate(client, wid, "r-job", max_tokens=12, seq=1)
    held = [e for e in full.events if e.seq <= 4]  # the client had seqs 1..4
    holds = text_hash(*(e.text for e in held if isinstance(e, Token)))
    same = await generate(
        client, wid, "r-job", max_tokens=12, seq=1, resume_after=4, resume_hash=holds
    )
    assert [e.seq for e in same.events] == [e.seq for e in full.events if e.seq > 4]
    assert same.statuses[-1].hash == full.statuses[-1].hash == text_hash(full.text)
    wrong = await generate(
        client, wid, "r-job", max_tokens=12, seq=1, resume_after=4, resume_hash="0" * 16
    )
    assert len(wrong.events) == 1  # nothing but the terminal event
    error = wrong.terminal
    assert isinstance(error, Error)
    assert (error.code, error.retriable, error.seq) == (ErrorCode.WORKER_LOST, True, 5)
    assert "differs from what the client already has" in error.message
    final = wrong.statuses[-1]
    assert (final.state, final.code, final.seq, final.hash) == (
        "failed",
        ErrorCode.WORKER_LOST,
        5,
        "0" * 16,
    )
