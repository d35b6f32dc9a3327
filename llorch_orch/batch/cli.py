"""`llorch batch submit|status|results|cancel`: any NATS client could do the same."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.client import JetStreamContext
from nats.js.errors import NoStreamResponseError
from opentelemetry import trace

from llorch_common import tracing
from llorch_common.connect import Credentials, permission_refusal
from schemas import (
    BatchCancelReply,
    BatchCancelRequest,
    BatchStatus,
    BatchStatusRequest,
    Error,
    ErrorCode,
    Subjects,
    check_id,
    decoder,
    encode,
    new_id,
)

from .config import DEFAULT_PRODUCER, PRODUCER_PREFIX, SETUP_TRIES
from .lines import LineError, parse_line
from .runner import REJECTED
from .store import has_result, is_duplicate, results

DEFAULT_MODEL = "smollm2-135m"
READY_S = float(SETUP_TRIES)  # as long as a beginning lead tries to make the streams
STREAM_POLL_S = 0.25
PRODUCER_ENV = "LLORCH_PRODUCER"
_NO_ANSWER = Error(code=ErrorCode.UNAVAILABLE, message="no answer", retriable=True)
WATCH_REFRESH_S = 2.0  # --watch also refreshes this often when no job settles
BAR = 30

_status = decoder(BatchStatus | Error)
_cancel = decoder(BatchCancelReply | Error)


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: Callable[..., None]
) -> None:
    batch = sub.add_parser("batch", help="durable batch jobs on JetStream (docs/batch.md)")
    actions = batch.add_subparsers(dest="batch_command", required=True)
    submit = actions.add_parser("submit", help="submit a JSONL file; prints the batch id")
    submit.add_argument("file", type=Path)
    submit.add_argument("--batch", help="batch id (default: a new one)")
    submit.add_argument("--model", default=DEFAULT_MODEL, help="for lines that name none")
    status = actions.add_parser("status", help="progress of a batch")
    status.add_argument("batch_id")
    status.add_argument("--watch", action="store_true", help="live progress bar until done")
    out = actions.add_parser("results", help="stored results as JSONL")
    out.add_argument("batch_id")
    out.add_argument("-o", "--output", type=Path, help="file (default: stdout)")
    cancel = actions.add_parser("cancel", help="cancel every unfinished job of a batch")
    cancel.add_argument("batch_id")
    for p in (submit, status, out, cancel):
        common(p)
        p.add_argument(
            "--producer",
            metavar="NAME",
            help=f"the batch namespace (default ${PRODUCER_ENV}, else NAME of the seed file "
            f"producer-NAME.nk in use, else {DEFAULT_PRODUCER})",
        )


def producer_of(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    """The namespace the command works in: `--producer`, else `$LLORCH_PRODUCER`, else the
    name of the producer identity whose seed it connects with, else the default (that of
    `producer-cli`, the identity `llorch up` makes for this host's CLI)."""
    named = args.producer or env.get(PRODUCER_ENV)
    if named:
        return check_id(named, "producer")
    seed = Credentials.from_args(args, env).nkey_seed_file
    if seed is not None and seed.stem.startswith(PRODUCER_PREFIX):
        return check_id(seed.stem.removeprefix(PRODUCER_PREFIX), "producer")
    return DEFAULT_PRODUCER


async def run(nc: Client, args: argparse.Namespace) -> int:
    subjects, producer = Subjects(args.prefix), producer_of(args, os.environ)
    match args.batch_command:
        case "submit":
            return await submit(nc, subjects, producer, args.file, args.batch, args.model)
        case "status":
            return await _status_cmd(nc, subjects, producer, args.batch_id, args.watch)
        case "results":
            return await _results_cmd(nc, subjects, producer, args.batch_id, args.output)
        case _:
            return await _cancel_cmd(nc, subjects, producer, args.batch_id)


async def submit(
    nc: Client,
    subjects: Subjects,
    producer: str,
    path: Path,
    batch: str | None,
    model: str,
    ready_s: float = READY_S,
) -> int:
    """Publish each line as one job; a malformed line is reported and published as a rejected
    job, so it gets its failed result like any other. A job of the same id that is queued or
    running (the stream refuses it) or has a result (not sent: the runner would ack it unrun)
    is counted as a duplicate. Streams not there yet are waited for up to `ready_s`."""
    batch = batch or new_id("batch")
    js = nc.jetstream()
    new = dupes = bad = 0  # jobs: new + dupes; bad of them are malformed lines
    if not await _streams_ready(js, subjects, producer, batch, ready_s):
        print("llorch: no LLORCH_BATCH stream: is the orchestrator running?", file=sys.stderr)
        return 1
    try:
        for number, text in enumerate(path.read_text().splitlines(), start=1):
            if not text.strip():
                continue
            job = parse_line(text, number, model)
            if isinstance(job, LineError):
                print(job.message, file=sys.stderr)
                bad += 1
            if await has_result(js, subjects, producer, batch, job.custom_id):
                dupes += 1
                continue
            subject = subjects.batch_submit(producer, batch, job.custom_id)
            span = _send_span(subject, producer, batch, job.custom_id)  # the job's trace starts
            headers = tracing.inject(None, trace.set_span_in_context(span))
            if isinstance(job, LineError):
                headers = {**(headers or {}), REJECTED: job.message}
                data = text.encode()[:4096]
            else:
                data = encode(job)
            taken = await _publish(js, subject, data, headers)
            span.end()
            new += taken
            dupes += not taken
    except (NoStreamResponseError, NoRespondersError):  # no job stream, or no results stream
        print("llorch: no LLORCH_BATCH stream: is the orchestrator running?", file=sys.stderr)
        return 1
    print(batch)
    print(submit_summary(new, dupes, bad), file=sys.stderr)
    return 0


async def _streams_ready(
    js: JetStreamContext, subjects: Subjects, producer: str, batch: str, wait_s: float
) -> bool:
    """Whether the batch streams answer within `wait_s`: a leading orchestrator makes them
    as its lead begins, a few seconds into it on a cluster (`llorch up` and a submit at once,
    a failover), so a submit waits for them rather than fail. The probe is a result lookup,
    which a producer may do (its subject is the producer's); the results stream is made
    after the job stream, so both exist once it answers."""
    loop = asyncio.get_running_loop()
    give_up_at, said = loop.time() + wait_s, False
    while True:
        try:
            await has_result(js, subjects, producer, batch, "ready")
            return True
        except (NoStreamResponseError, NoRespondersError, NatsTimeout):
            if loop.time() >= give_up_at:
                return False
            if not said:
                print("llorch: waiting for the LLORCH_BATCH stream", file=sys.stderr)
                said = True
            await asyncio.sleep(STREAM_POLL_S)


async def _publish(
    js: JetStreamContext, subject: str, data: bytes, headers: dict[str, str] | None
) -> bool:
    """Whether the stream took the job: it refuses one of which a message is still queued or
    running. (One that ran since `submit` looked for its result left the work queue, so a copy
    is taken: the runner finds the result and acks it unrun.)"""
    try:
        await js.publish(subject, data, headers=headers)
    except Exception as exc:
        if is_duplicate(exc):
            return False
        raise
    return True


def submit_summary(new: int, dupes: int, bad: int) -> str:
    """Counts jobs: every non-blank line is one job (a malformed one too: it is published as
    a rejected job and gets a failed result), new, or a duplicate of a job of the same id
    queued, running or done."""
    jobs = _count(new + dupes, "job")
    if bad:
        jobs += f" ({bad} of them {'a malformed line' if bad == 1 else 'malformed lines'})"
    return f"{jobs}: {new} new, {_count(dupes, 'duplicate')}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


async def request_status(
    nc: Client, subjects: Subjects, producer: str, batch: str
) -> BatchStatus | Error:
    msg = await nc.request(
        subjects.batch_status(producer), encode(BatchStatusRequest(batch_id=batch)), timeout=10
    )
    reply: BatchStatus | Error = _status(msg.data)
    return reply


def finished(status: BatchStatus) -> bool:
    return status.in_flight == 0 and status.queued == 0


def progress_line(s: BatchStatus) -> str:
    settled = s.done + s.failed
    filled = BAR * settled // s.total if s.total else 0
    bar = "#" * filled + "." * (BAR - filled)
    empty = f" ({s.empty} with empty text: see their note)" if s.empty else ""
    flag = " CANCELLED" if s.cancelled else ""
    return (
        f"[{bar}] {settled}/{s.total} done {s.done}{empty} failed {s.failed} "
        f"running {s.in_flight} queued {s.queued}{flag}"
    )


async def _status_cmd(
    nc: Client, subjects: Subjects, producer: str, batch: str, watch: bool
) -> int:
    """The batch's status; with `watch`, a live line until it is done."""
    if watch:
        status = await _watch(nc, subjects, producer, batch)
    else:
        status = await _status_or_outage(nc, subjects, producer, batch)
    if isinstance(status, Error):
        return _failed(batch, status)
    print(encode(status).decode())
    return 0


async def _watch(nc: Client, subjects: Subjects, producer: str, batch: str) -> BatchStatus | Error:
    """The finished batch's status (or a non-retriable error), after a live line on stderr.
    It outlives an orchestrator that cannot answer for a while (a restart, a failover while
    none leads): the line says so, and the status is asked again."""
    events = await nc.subscribe(subjects.batch_event(producer, batch))
    width = 0  # of the line shown last: a shorter one must blank its rest
    while True:
        status = await _status_or_outage(nc, subjects, producer, batch)
        if isinstance(status, Error) and not status.retriable:
            return status
        if isinstance(status, BatchStatus):
            line = progress_line(status)
        else:
            line = f"waiting for the orchestrator ({status.code}: {status.message})"
        done = isinstance(status, BatchStatus) and finished(status)
        print(f"\r{line.ljust(width)}", end="\n" if done else "", file=sys.stderr, flush=True)
        if done:
            return status
        width = len(line)
        with contextlib.suppress(NatsTimeout):  # a settled job wakes us; else refresh anyway
            await events.next_msg(timeout=WATCH_REFRESH_S)


async def _status_or_outage(
    nc: Client, subjects: Subjects, producer: str, batch: str
) -> BatchStatus | Error:
    """The orchestrator's answer; no answer at all (none subscribed, or none in time) is a
    retriable UNAVAILABLE like the one a stopping orchestrator gives."""
    try:
        return await request_status(nc, subjects, producer, batch)
    except NoRespondersError:
        return _NO_ANSWER
    except NatsTimeout:
        if permission_refusal(nc) is not None:  # not allowed: the CLI's main says so
            raise
        return _NO_ANSWER


async def _results_cmd(
    nc: Client, subjects: Subjects, producer: str, batch: str, output: Path | None
) -> int:
    subjects.batch_submit(producer, batch)  # validates the ids (ProtocolError INVALID_ID)
    found = await results(nc.jetstream(), subjects, producer, batch)
    if not found:  # none yet, or an unknown batch: the orchestrator's status says which
        status = await _status_or_outage(nc, subjects, producer, batch)
        if isinstance(status, Error):
            return _failed(batch, status)
    lines = "".join(encode(r).decode() + "\n" for r in found)
    if output is None:
        sys.stdout.write(lines)
    else:
        await asyncio.to_thread(output.write_text, lines)
        empty = sum(r.outcome == "ok" and not r.text for r in found)
        note = f" ({empty} ok with empty text: see their note)" if empty else ""
        print(f"{len(found)} results written to {output}{note}", file=sys.stderr)
    return 0


async def _cancel_cmd(nc: Client, subjects: Subjects, producer: str, batch: str) -> int:
    message = encode(BatchCancelRequest(batch_id=batch))
    try:
        msg = await nc.request(subjects.batch_cancel(producer), message, timeout=10)
    except NoRespondersError:
        return _failed(batch, _NO_ANSWER)
    reply = _cancel(msg.data)
    if isinstance(reply, Error):
        return _failed(batch, reply)
    print(f"batch {batch} cancelled ({reply.running_cancelled} running jobs stopped)")
    return 0


def _failed(batch: str, error: Error) -> int:
    print(f"llorch: batch {batch}: {error.code}: {error.message}", file=sys.stderr)
    return 1


def _send_span(subject: str, producer: str, batch: str, custom_id: str) -> trace.Span:
    name = tracing.template(subject, producer=producer, batch=batch, custom_id=custom_id)
    attrs = tracing.messaging("send", subject, name)
    return tracing.tracer("llorch.cli").start_span(
        tracing.span_name("send", name), kind=tracing.PRODUCER, attributes=attrs
    )
