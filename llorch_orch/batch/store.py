"""JetStream access shared by the runner and the CLI: streams, results, counts."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import msgspec
from nats import errors as nats_errors
from nats.js import JetStreamContext
from nats.js import errors as js_errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig
from nats.js.errors import APIError, BadRequestError, NotFoundError

from llorch_common import tracing
from schemas import (
    MAX_MESSAGE_BYTES,
    BatchResult,
    Error,
    ErrorCode,
    Subjects,
    decoder,
    encode,
    new_id,
)
from schemas.codec import wire_size
from schemas.text import clip

from .config import BATCH_STREAM, RESULTS_STREAM, BatchConfig, batch_stream, results_stream

log = logging.getLogger("llorch.batch")

OUTCOME = "Llorch-Outcome"  # header on results: a status scan reads headers only
EMPTY = "Llorch-Empty-Text"  # header on ok results without text (counted by a status scan)
UNKNOWN = (  # the message of NOT_FOUND for a batch the streams hold nothing of (see known())
    "no such batch: no job of it is queued and no result is stored "
    "(never submitted, or its results expired)"
)
ERROR_CHARS = 1000  # of an error message in a result (decoder and core errors may quote input)
# Failures of a JetStream call that pass once the server or its JetStream is back; any other
# failure (the server refused this very message, a client-side size check) would repeat.
_TRANSIENT = (
    OSError,  # nats-py's TimeoutError, asyncio's and socket errors alike
    nats_errors.NoRespondersError,
    nats_errors.ConnectionClosedError,
    nats_errors.ConnectionReconnectingError,
    nats_errors.ConnectionDrainingError,
    nats_errors.StaleConnectionError,
    nats_errors.OutboundBufferLimitError,
    nats_errors.FlushTimeoutError,
    js_errors.ServiceUnavailableError,
    js_errors.NoStreamResponseError,
)
# A scan's fetch answered "service unavailable" is asked again this often, this many times.
FETCH_RETRY_S, FETCH_UNAVAILABLE_TRIES = 0.5, 20
_result = decoder(BatchResult)
_STREAM_EXISTS = 10058  # "stream name already in use with a different configuration"
# Replicas by default: min(3, the servers of the cluster). A client is told no cluster size:
# the account info ($JS.API.INFO) has none, the INFO's connect_urls count client URLs (one per
# interface of a wildcard listen, none with no_advertise, servers without JetStream too) and
# the monitoring endpoint is no client's. The server placing the stream knows its JetStream
# peers: asked for more than it has, a cluster says "no suitable peers for placement" and a
# lone server "replicas > 1 not supported in non-clustered mode"; then one fewer is asked. A
# peer that is down but known still counts (the stream is placed on it and catches up when it
# is back), so an orchestrator started while a server is away does not shrink a stream.
AUTO_REPLICAS = (3, 2, 1)
_TOO_MANY_REPLICAS = {10005, 10074}  # the two refusals above


# How the job stream refuses a second message on a job's subject (max_msgs_per_subject 1,
# discard new per subject): a 503 store error, whose code it shares with other store
# failures (a full stream), so the description tells them apart.
_STORE_FAILED = 10077
_PER_SUBJECT_LIMIT = "maximum messages per subject exceeded"


def msg_id(producer: str, batch_id: str, custom_id: str) -> str:
    """A result's Nats-Msg-Id: the results stream de-duplicates on it across every namespace,
    so it names the producer too. Only the orchestrator publishes results (a job's message
    carries none: see config.SUBMIT_DUPLICATE_WINDOW_S)."""
    return f"{producer}.{batch_id}.{custom_id}"


def is_duplicate(exc: BaseException) -> bool:
    """Whether a refused publish of a job means that a message of that job is still queued or
    running (the job stream holds at most one per job subject)."""
    return (
        isinstance(exc, js_errors.APIError)
        and exc.err_code == _STORE_FAILED
        and exc.description == _PER_SUBJECT_LIMIT
    )


async def ensure_streams(js: JetStreamContext, cfg: BatchConfig, subjects: Subjects) -> None:
    """Create both streams, or bring an existing one to this config (idempotent), with
    `cfg.replicas` copies, or when that is 0 with as many as the cluster places up to 3."""
    for config in (batch_stream(cfg, subjects), results_stream(cfg, subjects)):

        async def put(n: int, config: StreamConfig = config) -> None:
            await _put(js, dataclasses.replace(config, num_replicas=n))

        await with_replicas(cfg.replicas, put)


async def with_replicas(replicas: int, put: Callable[[int], Awaitable[None]]) -> int:
    """`put(n)` (a stream or bucket made or updated with n replicas) with `replicas`, or when
    that is 0 with 3, then fewer while the cluster has too few servers (AUTO_REPLICAS); the
    number it took."""
    tries = (replicas,) if replicas else AUTO_REPLICAS
    for n in tries[:-1]:
        try:
            await put(n)
            return n
        except APIError as exc:
            if exc.err_code not in _TOO_MANY_REPLICAS:
                raise
    await put(tries[-1])
    return tries[-1]


async def _put(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError as exc:
        if exc.err_code != _STREAM_EXISTS:
            raise
        await js.update_stream(config)  # the editable fields (replicas too) follow ours


async def has_result(
    js: JetStreamContext, subjects: Subjects, producer: str, batch: str, custom_id: str
) -> bool:
    subject = subjects.batch_result(producer, batch, custom_id)
    try:
        await js.get_last_msg(RESULTS_STREAM, subject, direct=True)
    except NotFoundError:
        return False
    return True


async def is_cancelled(js: JetStreamContext, subjects: Subjects, producer: str, batch: str) -> bool:
    try:
        await js.get_last_msg(
            RESULTS_STREAM, subjects.batch_cancelled(producer, batch), direct=True
        )
    except NotFoundError:
        return False
    return True


async def store(
    js: JetStreamContext,
    subjects: Subjects,
    producer: str,
    result: BatchResult,
    job_headers: Mapping[str, str] | None = None,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> BatchResult:
    """Publish and await the PubAck: only then is the result durable (and the job ackable).
    The Nats-Msg-Id makes a second store after a crash-before-ack a no-op. The result carries
    the trace context of its job's message, so the job's trace runs from publish to result.

    Returns the result as stored: one whose message (headers included) would exceed
    `max_bytes` is stored as a failed stand-in saying so. Never publish it as is: the stream
    refuses it, and over the server's max_payload the server closes the connection."""
    subject = subjects.batch_result(producer, result.batch_id, result.custom_id)
    result = bounded(result)
    ids = {"Nats-Msg-Id": msg_id(producer, result.batch_id, result.custom_id)}
    trace = tracing.inject(ids, tracing.extract(job_headers)) or ids
    data, headers = _message(result, trace)
    size = wire_size(data, headers)
    if size > max_bytes:
        message = (
            f"the result is {size} bytes (text of {len(result.text)} characters), over the "
            f"{max_bytes} bytes a stored result may have: run the job with a lower max_tokens"
        )
        result = stand_in(result, Error(code=ErrorCode.PAYLOAD_TOO_LARGE, message=message))
        data, headers = _message(result, trace)
    await js.publish(subject, data, headers=headers)
    return result


def _message(result: BatchResult, trace: Mapping[str, str]) -> tuple[bytes, dict[str, str]]:
    """(payload, headers) of a result: its outcome is in the headers for headers-only scans."""
    headers = {**trace, OUTCOME: result.outcome}
    if result.outcome == "ok" and not result.text:
        headers[EMPTY] = "1"
    return encode(result), headers


def bounded(result: BatchResult) -> BatchResult:
    """The result with its error message clipped: error messages may quote client input."""
    error = result.error
    if error is None or len(error.message) <= ERROR_CHARS:
        return result
    return msgspec.structs.replace(
        result, error=msgspec.structs.replace(error, message=clip(error.message, ERROR_CHARS))
    )


def stand_in(result: BatchResult, error: Error) -> BatchResult:
    """A failed result in place of one that cannot be stored: no text, why in `error`, the
    rest (model, worker, tokens, timings) kept."""
    return msgspec.structs.replace(
        result, outcome="failed", text="", finish_reason=None, note=None, error=error
    )


def transient(exc: BaseException) -> bool:
    """Whether a failed JetStream call may succeed when tried again (the server was away)."""
    return isinstance(exc, _TRANSIENT)


async def waiting(js: JetStreamContext, subjects: Subjects, producer: str, batch: str) -> int:
    """Messages of the batch still in the work-queue stream (queued or in flight): one per
    job subject, so the number of the batch's subjects. The server lists at most 100,000
    subjects per answer but says how many matched (`total`, which nats-py's stream_info
    drops: hence its raw API request, which raises the server's error like stream_info)."""
    request = json.dumps({"subjects_filter": subjects.batch_submit(producer, batch)})
    info = await js._api_request(f"{js._prefix}.STREAM.INFO.{BATCH_STREAM}", request.encode())
    return int(info.get("total", 0))


async def result_count(js: JetStreamContext, subjects: Subjects, producer: str, batch: str) -> int:
    """Results of the batch in the results stream (one per settled job)."""
    subject = subjects.batch_result(producer, batch)
    info = await js.stream_info(RESULTS_STREAM, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


async def known(js: JetStreamContext, subjects: Subjects, producer: str, batch: str) -> bool:
    """Whether the streams hold anything of the batch: a job still in the work queue (queued
    or running: a running job is acked only after its result is stored), a result, or its
    cancel marker. A batch whose results all expired is unknown again."""
    if await waiting(js, subjects, producer, batch):
        return True
    if await result_count(js, subjects, producer, batch):
        return True
    return await is_cancelled(js, subjects, producer, batch)


async def scan(
    js: JetStreamContext, subjects: Subjects, producer: str, batch: str, headers_only: bool = False
) -> AsyncIterator[tuple[str, bytes, dict[str, str]]]:
    """(subject, data, headers) of every stored result of a batch, through an ephemeral
    consumer that the server deletes 30 s after the scan.

    The consumer is named, so it is created on `$JS.API.CONSUMER.CREATE.<stream>.<name>.
    <filter>`: the subject carries the filter, which a producer may only set to its own
    namespace (no stream info needed either: the create reply says how many results wait)."""
    config = ConsumerConfig(
        name=new_id("scan"),
        filter_subject=subjects.batch_result(producer, batch),
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.NONE,
        headers_only=headers_only,
        inactive_threshold=30.0,
    )
    left = (await js.add_consumer(RESULTS_STREAM, config)).num_pending or 0
    if left == 0:
        return
    sub = await js.pull_subscribe_bind(config.name, stream=RESULTS_STREAM)
    unavailable = 0
    try:
        while left > 0:
            try:
                msgs = await sub.fetch(min(left, 256), timeout=10)
            except js_errors.ServiceUnavailableError:
                # no consumer leader yet (a cluster electing, after a server was lost)
                unavailable += 1
                if unavailable > FETCH_UNAVAILABLE_TRIES:
                    raise
                await asyncio.sleep(FETCH_RETRY_S)
                continue
            for msg in msgs:
                left = msg.metadata.num_pending
                yield msg.subject, msg.data, dict(msg.headers or {})
    finally:
        await sub.unsubscribe()


async def results(
    js: JetStreamContext, subjects: Subjects, producer: str, batch: str
) -> list[BatchResult]:
    return [_result(data) async for _, data, _ in scan(js, subjects, producer, batch)]


async def outcomes(
    js: JetStreamContext, subjects: Subjects, producer: str, batch: str
) -> tuple[int, int, int]:
    """(done, failed, empty) of a batch, reading result headers only; `empty` counts the
    done ones without text."""
    done = failed = empty = 0
    async for _, _, headers in scan(js, subjects, producer, batch, headers_only=True):
        if headers.get(OUTCOME) == "ok":
            done += 1
            empty += EMPTY in headers
        else:
            failed += 1
    return done, failed, empty
