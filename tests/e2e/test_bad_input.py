"""Issue 12, hostile input against real processes: the orchestrator stays up and keeps serving,
no worker is touched by a request it cannot serve, and neither replies nor log lines grow with
what a client sends."""

from __future__ import annotations

import json

from nats.aio.client import Client

from schemas import End, Error, ErrorCode, Event, Started, Subjects, decoder

from .conftest import MODEL, Cluster, ClusterFactory, terminal, text_of, worker_pid

S = Subjects()
TRACEPARENT = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
FORGED = "1999-01-01 00:00:00,000 llorch.audit WARNING forged"  # a log line, if ever written
MAX_REPLY = 1024  # bytes: what an error reply may be, whatever the request held
_error = decoder(Error)


async def generate_raw(
    nc: Client, body: bytes, headers: dict[str, str] | None = None
) -> tuple[Error, int]:
    """The one reply (an error) to a raw generate body, and its size."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(S.generate, body, reply=inbox, headers=headers)
    msg = await sub.next_msg(timeout=30)
    await sub.unsubscribe()
    return _error(msg.data), len(msg.data)


def request(**fields: object) -> bytes:
    return json.dumps({"model": MODEL, "prompt": "Hello", "max_tokens": 4, **fields}).encode()


async def served(cluster: Cluster, **fields: object) -> list[Event]:
    fields = {"prompt": "The capital of France is", "temperature": 0.0, **fields}
    events = await cluster.run(**fields)
    assert isinstance(terminal(events), End), events
    return events


def worker_of(events: list[Event]) -> str:
    return next(e.worker_id for e in events if isinstance(e, Started))


async def test_hostile_requests_leave_the_orchestrator_serving(
    make_cluster: ClusterFactory,
) -> None:
    cluster = await make_cluster()
    nc = cluster.nc
    worker = worker_of(await served(cluster))
    pid = await worker_pid(cluster, worker)

    # ~1 MiB model name + traceparent: once echoed whole, over the max payload, which cost the
    # orchestrator its connection for good
    for length, code in (
        (1_000_000, ErrorCode.INVALID_PARAMS),  # a model name over 128
        (1024 * 1024 - 200, ErrorCode.PAYLOAD_TOO_LARGE),
    ):  # no room left
        body = json.dumps({"model": "m" * length, "prompt": "x"}).encode()
        error, size = await generate_raw(nc, body, TRACEPARENT)
        assert error.code == code and size < MAX_REPLY, error
    assert worker_of(await served(cluster)) == worker

    # a wildcard reply subject: dropped before admission; no execute reaches any worker
    executes = await nc.subscribe(f"{S.prefix}.worker.*.execute")
    wild = await nc.subscribe("_INBOX.hostile.>")
    await nc.publish(S.generate, request(job_id="wild"), reply="_INBOX.hostile.*")
    after = await served(cluster)
    assert worker_of(after) == worker
    seen = json.loads((await executes.next_msg(timeout=5)).data)["job_id"]
    started = next(e for e in after if isinstance(e, Started))
    assert seen == started.job_id  # the served job's execute came first: none for "wild"
    assert await worker_pid(cluster, worker) == pid
    assert wild.pending_msgs == 0

    # numbers that decoded and overflowed later, ids and strings of every size: coded, small
    hostile = [
        (request(deadline_ms=10**400), ErrorCode.INVALID_PARAMS),
        (request(job_id="j" * 100_000), ErrorCode.INVALID_ID),
        (request(job_id=f"ok\n{FORGED}"), ErrorCode.INVALID_ID),
        (request(pool="p\n" * 1000), ErrorCode.INVALID_ID),
        (request(stop=["s" * 100_000]), ErrorCode.INVALID_PARAMS),
        (request(priority="p" * 100_000), ErrorCode.INVALID_PARAMS),
        (request(prompt=None, messages=[{"role": "r" * 100_000, "content": "hi"}]),
         ErrorCode.INVALID_PARAMS),
        (request(model="x" * 128), ErrorCode.MODEL_NOT_FOUND),
        (b'{"model":"' + MODEL.encode() + b'","prompt":"\xff\xfe"}', ErrorCode.INVALID_PARAMS),
    ]  # fmt: skip
    for body, code in hostile:
        error, size = await generate_raw(nc, body, TRACEPARENT)
        assert error.code == code and size < MAX_REPLY, (body[:100], error)
    for subject in (S.cancel, S.jobs_get):
        for job_id in ("j" * (1024 * 1024 - 100), "job\nforged"):
            reply = await nc.request(subject, json.dumps({"job_id": job_id}).encode(), timeout=30)
            assert _error(reply.data).code == ErrorCode.INVALID_ID and len(reply.data) < MAX_REPLY

    # a temperature so small it once divided the logits into infinities: greedy, like 0
    greedy = text_of(await served(cluster, max_tokens=16))
    assert text_of(await served(cluster, max_tokens=16, temperature=1e-40)) == greedy

    # every line above went to the log before the last job was served (one lock, in order)
    log = (cluster.stack.data_dir / "logs" / "orchestrator.log").read_text()
    lines = log.splitlines()
    assert not [line for line in lines if line.startswith("1999-")]
    assert max(len(line) for line in lines) < 1000
    assert any("bad reply subject '_INBOX.hostile.*'" in line for line in lines)
