"""Batch knobs (the `[batch]` table of the orchestrator's TOML) and the JetStream configs they
make. Defaults and sizing advice: docs/batch.md."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from schemas import MAX_MESSAGE_BYTES, Subjects

from ..settings import ConfigError

BATCH_STREAM = "LLORCH_BATCH"
RESULTS_STREAM = "LLORCH_RESULTS"
CONSUMER = "llorch-orch"
# A batch producer's identity is `producer-<namespace>`; its namespace is the token after the
# subject's verb in every batch subject, and its permissions allow only that token.
PRODUCER_PREFIX = "producer-"
# The namespace when nothing names one: that of `producer-cli`, the identity `llorch up` makes
# for this host's CLI, so the CLI needs no flag there or on an open server.
DEFAULT_PRODUCER = "cli"
DAY_S = 86_400.0
# A lead that begins while a lost server's streams elect (4-9 s) finds no JetStream quorum: its
# setup is tried again, a second apart, this many times; `llorch batch submit` waits as long
# for the streams.
SETUP_TRIES = 30
# Messages nak'ed with a delay (a retry waiting for its backoff) stay pending in JetStream
# without being in flight here: max_ack_pending leaves room for this many of them, so jobs
# that keep failing cannot stop deliveries to the runner (it gates its own pulls).
RETRY_PENDING = 1000
# The job stream de-duplicates on its subjects, which permissions bind to their producer, not
# on Nats-Msg-Id, which any producer may set to another's id (the stream matches it across
# every namespace). Its Msg-Id window is therefore the server's minimum, so that an id a
# producer sets anyway cannot make another's job a "duplicate" for longer than that.
SUBMIT_DUPLICATE_WINDOW_S = 0.1
GiB = 1024**3
MAX_REPLICAS = 5  # JetStream's


class BatchConfigError(ConfigError):
    pass


@dataclass(frozen=True, slots=True)
class BatchConfig:
    enabled: bool = True  # run the batch runner inside the orchestrator
    max_attempts: int = 3  # deliveries of a job that may fail before its failure is stored
    backoff_s: tuple[float, ...] = (2.0, 10.0, 30.0)  # nak delay after failure n (last repeats)
    max_deliver: int = 10  # JetStream's cap; a job delivered this often is failed unrun (poison)
    ack_wait_s: float = 30.0  # redelivery after this long without ack/in_progress (owner died)
    core_batch_queue: int = 1  # batch jobs waiting in the core's queue at most (pull gate)
    max_in_flight: int = 64  # jobs pulled and not yet stored, at most
    lost_grace_s: float = 10.0  # core forgot the job and no terminal event for this long: retry
    duplicate_window_s: float = 120.0  # Nats-Msg-Id dedup window of the results stream
    submit_max_msgs: int = 1_000_000  # waiting jobs, all batches (publish refused beyond)
    submit_max_bytes: int = 1 * GiB
    results_max_age_s: float = 7 * DAY_S  # results expire after this (0 = never)
    results_max_bytes: int = 4 * GiB  # oldest results dropped beyond this
    replicas: int = 0  # servers holding each stream; 0: min(3, the NATS cluster's; see store)

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts < self.max_deliver:
            raise BatchConfigError("batch: need 1 <= max_attempts < max_deliver")
        if self.ack_wait_s < 3 or not self.backoff_s or self.core_batch_queue < 1:
            raise BatchConfigError("batch: ack_wait_s >= 3, backoff_s non-empty, queue >= 1")
        if not 0 <= self.replicas <= MAX_REPLICAS:
            raise BatchConfigError(f"batch: replicas from 0 (automatic) to {MAX_REPLICAS}")

    def backoff(self, failures: int) -> float:
        """Delay before the redelivery that follows the `failures`-th failed attempt."""
        return self.backoff_s[min(failures, len(self.backoff_s)) - 1]

    @property
    def keepalive_s(self) -> float:
        """in_progress() period: a third of ack_wait survives two lost keepalives."""
        return self.ack_wait_s / 3


def load(path: Path | None, replicas: int | None = None) -> BatchConfig:
    """The [batch] table of `path`; `replicas`, when given (a flag), wins over its key."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text()).get("batch", {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise BatchConfigError(f"cannot read config {path}: {exc}") from None
    unknown = set(raw) - {f.name for f in dataclasses.fields(BatchConfig)}
    if unknown:  # a misspelt key is an error, not a silent default
        raise BatchConfigError(f"unknown config key(s) batch.{', batch.'.join(sorted(unknown))}")
    if replicas is not None:
        raw["replicas"] = replicas
    try:
        return msgspec.convert(raw, BatchConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise BatchConfigError(f"invalid [batch] config: {exc}") from None


def batch_stream(cfg: BatchConfig, subjects: Subjects) -> StreamConfig:
    return StreamConfig(
        name=BATCH_STREAM,
        description="llorch batch jobs (work queue: a job leaves once its result is stored)",
        subjects=[subjects.batch_submit_all],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,  # full: producers get an error, no accepted job is dropped
        # one message per job subject: a second copy of a queued or running job is refused
        # (the producer's duplicate); once the job is acked, a copy is taken again
        max_msgs_per_subject=1,
        discard_new_per_subject=True,
        max_msgs=cfg.submit_max_msgs,
        max_bytes=cfg.submit_max_bytes,
        max_msg_size=MAX_MESSAGE_BYTES,
        duplicate_window=SUBMIT_DUPLICATE_WINDOW_S,
    )


def results_stream(cfg: BatchConfig, subjects: Subjects) -> StreamConfig:
    p = subjects.prefix
    return StreamConfig(
        name=RESULTS_STREAM,
        description="llorch batch results, one per job, and batch cancel markers",
        subjects=[f"{p}.batch.result.*.*.*", f"{p}.batch.cancelled.*.*"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_msgs_per_subject=1,  # one result per job, whatever happens
        max_age=cfg.results_max_age_s,
        max_bytes=cfg.results_max_bytes,
        max_msg_size=MAX_MESSAGE_BYTES,
        duplicate_window=cfg.duplicate_window_s,
        allow_direct=True,  # result lookups by subject are answered without the stream leader
    )


def consumer(cfg: BatchConfig, subjects: Subjects) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=CONSUMER,
        description="the orchestrator's batch runner",
        filter_subject=subjects.batch_submit_all,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=cfg.ack_wait_s,
        max_deliver=cfg.max_deliver,
        max_ack_pending=cfg.max_in_flight + RETRY_PENDING,
        max_waiting=16,
    )
