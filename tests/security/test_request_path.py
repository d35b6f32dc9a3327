"""Issue 12: the orchestrator's whole request path (decode -> admission -> reply) under
generated hostile requests, over a real nats-server: a reply for every one, a serving
orchestrator afterwards, and no job record left behind."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from llorch_common import client
from llorch_orch.core import Core, OrchConfig
from llorch_orch.service import OrchestratorService
from schemas import (
    ClusterState,
    Device,
    Error,
    ErrorCode,
    GenerateRequest,
    Heartbeat,
    ModelInfo,
    Subjects,
    decoder,
    encode,
)

S = Subjects()
PER_SUBJECT = 10_000
WINDOW = 256  # requests in flight at once
MODEL = "m"
_error = decoder(Error)

NASTY: list[object] = [
    None, True, -1, 0, 1, 7, 2**31, 2**32, 2**63, 10**400, -(10**400), 1e308, -0.0, 1e-40,
    0.5, 5.0001, "", "a", "m", "a.b", "*", ">", "x\n", "é", "\u2028", "\x00", "ok_id-1",
    "x" * 65, "y" * 2000, [], ["a"], [""], ["s" * 100], [{"role": "user", "content": "hi"}],
    [{"role": "r" * 300, "content": 1}], {"a": 1}, [[[[[]]]]], "interactive", "batch",
]  # fmt: skip
FIELDS = ["model", "prompt", "messages", "max_tokens", "temperature", "top_p", "top_k",
          "seed", "stop", "priority", "deadline_ms", "pool", "device", "job_id", "type",
          "junk"]  # fmt: skip


def generate_body(rng: random.Random) -> bytes:
    """A valid-looking request with a few fields made hostile, sometimes broken as bytes."""
    body: dict[str, object] = {"model": MODEL, "prompt": "hello", "max_tokens": 8}
    for _ in range(rng.randint(1, 3)):
        name = rng.choice(FIELDS)
        if rng.random() < 0.2:
            body.pop(name, None)
        else:
            body[name] = rng.choice(NASTY)
    data = json.dumps(body, ensure_ascii=rng.random() < 0.5).encode()
    return mangle(rng, data)


def id_body(rng: random.Random) -> bytes:
    return mangle(rng, json.dumps({"job_id": rng.choice(NASTY)}).encode())


def mangle(rng: random.Random, data: bytes) -> bytes:
    roll = rng.random()
    if roll < 0.05:
        return data[: rng.randrange(len(data) + 1)]
    if roll < 0.1:
        at = rng.randrange(len(data) + 1)
        return data[:at] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\\ud800"]) + data[at:]
    if roll < 0.12:
        return rng.randbytes(rng.randrange(64))
    return data


@pytest.fixture
async def orchestrator(nc: Client) -> AsyncIterator[OrchestratorService]:
    """An orchestrator that knows one pool holding MODEL on a device too small for it: every
    request that passes the other checks is refused NO_CAPACITY, so each gets one reply."""
    service = OrchestratorService(nc, Core(OrchConfig()))
    await service.start()
    device = Device(index=0, uuid="u", name="gpu", kind="gpu", total_bytes=1, free_bytes=0,
                    used_bytes=1)  # fmt: skip
    model = ModelInfo(name=MODEL, sha256="0" * 64, size_bytes=1 << 30, n_ctx_train=2048,
                      n_layers=1, kv_bytes_per_token=1)  # fmt: skip
    beat = Heartbeat(pool_id="p1", ts=time.time(), seq=1, interval_s=60.0, devices=[device],
                     workers=[], models=[model])  # fmt: skip
    await nc.publish(S.heartbeat("p1"), encode(beat))
    for _ in range(200):  # asked, not slept on: the heartbeat is handled before the reply
        state = await client.state(nc)
        if isinstance(state, ClusterState) and state.pools:
            break
    yield service
    await service.stop()


async def fuzz_generate(nc: Client, bodies: list[bytes]) -> dict[int, Error]:
    """Each body on api.generate with its own reply subject; the first reply of each."""
    replies: dict[int, Error] = {}
    done = asyncio.Event()
    gate = asyncio.Semaphore(WINDOW)

    async def on_reply(msg: Msg) -> None:
        index = int(msg.subject.rsplit(".", 1)[1])
        if index not in replies:
            replies[index] = _error(msg.data)
            gate.release()
        if len(replies) == len(bodies):
            done.set()

    sub = await nc.subscribe("_INBOX.fuzz.>", cb=on_reply)
    for index, body in enumerate(bodies):
        await gate.acquire()
        await nc.publish(S.generate, body, reply=f"_INBOX.fuzz.{index}")
    async with asyncio.timeout(120):  # a hang guard, not a threshold: every reply comes
        await done.wait()
    await sub.unsubscribe()
    return replies


async def fuzz_requests(nc: Client, subject: str, bodies: list[bytes]) -> list[bytes]:
    gate = asyncio.Semaphore(WINDOW)

    async def one(body: bytes) -> bytes:
        async with gate:
            return (await nc.request(subject, body, timeout=30)).data

    return await asyncio.gather(*(one(body) for body in bodies))


async def test_every_generated_request_gets_a_coded_reply(
    nc: Client, orchestrator: OrchestratorService
) -> None:
    rng = random.Random(12)
    bodies = [generate_body(rng) for _ in range(PER_SUBJECT)]
    replies = await fuzz_generate(nc, bodies)
    assert len(replies) == PER_SUBJECT
    codes = {e.code for e in replies.values()}
    assert codes <= set(ErrorCode) and ErrorCode.NO_CAPACITY in codes, codes
    assert max(len(e.message) for e in replies.values()) < 1000

    makers: dict[str, Callable[[random.Random], bytes]] = {
        S.cancel: id_body, S.jobs_get: id_body, S.state: id_body, S.models: id_body,
    }  # fmt: skip
    for subject, make in makers.items():
        answers = await fuzz_requests(nc, subject, [make(rng) for _ in range(PER_SUBJECT)])
        assert len(answers) == PER_SUBJECT and all(answers), subject  # never an empty "500"
        assert max(map(len, answers)) < 4096, subject

    # still serving, and no job or job record left behind by tens of thousands of refusals
    assert isinstance(await client.state(nc), ClusterState)
    good = GenerateRequest(model=MODEL, prompt="hi")
    events = [e async for e in client.stream(nc, good, ready_s=0)]
    assert isinstance(events[-1], Error) and events[-1].code == ErrorCode.NO_CAPACITY
    assert not orchestrator.core.jobs and not orchestrator.telemetry._jobs


async def test_a_failing_admission_still_answers_and_drops_the_record(
    nc: Client, orchestrator: OrchestratorService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A core that raises (as a deadline of 10**400 ms did before the decoder bounded it) once
    left the client without a reply and the job's record in memory forever."""

    def broken(event: object) -> list[object]:
        raise OverflowError("int too large to convert to float")

    monkeypatch.setattr(orchestrator.core, "handle", broken)
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await orchestrator.submit(GenerateRequest(model=MODEL, prompt="hi", job_id="boom"), inbox)
    error = _error((await sub.next_msg(timeout=30)).data)
    assert error.code == ErrorCode.INTERNAL and error.job_id == "boom"
    assert not orchestrator.telemetry._jobs


async def test_an_oversized_message_is_never_sent(
    nc: Client, orchestrator: OrchestratorService
) -> None:
    """The server closes a connection that publishes over its max payload, for good."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    huge = Error(code=ErrorCode.MODEL_NOT_FOUND, message="m" * nc.max_payload, seq=0, job_id="j")
    await orchestrator._publish(inbox, huge, headers=headers)
    error = _error((await sub.next_msg(timeout=30)).data)
    assert error.code == ErrorCode.INTERNAL and (error.seq, error.job_id) == (0, "j")
    assert orchestrator.nc.is_connected and isinstance(await client.state(nc), ClusterState)
