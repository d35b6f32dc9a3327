"""Write the JSON examples of docs/protocol.md by encoding real `schemas` Structs.

Every example sits between `<!-- example NAME -->` and `<!-- /example -->` in protocol.md.

    python3 docs/gen_protocol_examples.py          # rewrite the examples in place
    python3 docs/gen_protocol_examples.py --check  # exit 1 if protocol.md is stale

tests/docs/test_docs_match_code.py runs the check, so a schema change that alters an
example fails the tests until this script is run again.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import msgspec

from llorch_worker.texthash import text_hash  # pure: the hash a worker reports
from schemas import (
    Ack,
    BatchCancelReply,
    BatchCancelRequest,
    BatchEvent,
    BatchJob,
    BatchResult,
    BatchStatus,
    BatchStatusRequest,
    CancelReply,
    CancelRequest,
    CatalogEntry,
    ChatMessage,
    ClusterState,
    Device,
    End,
    Error,
    ErrorCode,
    Execute,
    GenerateRequest,
    Heartbeat,
    JobGetRequest,
    JobInfo,
    JobStatus,
    Leadership,
    ModelInfo,
    ModelsReply,
    ModelsRequest,
    PoolView,
    Queued,
    SnapshotRequest,
    SpawnRequest,
    Started,
    StateRequest,
    StopRequest,
    Token,
    WorkerCancel,
    WorkerFailed,
    WorkerInfo,
    WorkerLoad,
    WorkerReady,
    encode,
)

PROTOCOL = Path(__file__).with_name("protocol.md")
COMPACT_MAX = 96  # examples up to this many characters stay on one line
GiB = 1024**3
MiB = 1024**2

MODEL = "smollm2-135m"
INBOX = "_INBOX.mUq5c0kq2Yc1uXVFmQ3n1C"
JOB = "job-3f9a1c2be4d0"
WORKER = "w-8c21d0f4a9b7"

_model = ModelInfo(
    name=MODEL,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size_bytes=98362432,
    n_ctx_train=8192,
    n_layers=30,
    kv_bytes_per_token=23040,
    has_chat_template=True,
)
_gpu = Device(
    index=0,
    uuid="GPU-5a3c8e1f-0d2b-4c6a-9e7f-1b2c3d4e5f60",
    name="NVIDIA H100 80GB HBM3",
    kind="gpu",
    total_bytes=85520809984,
    free_bytes=84331560960,
    used_bytes=1189249024,
)
_cpu = Device(
    index=0,
    uuid="cpu-laptop",
    name="AMD Ryzen 7 7840U",
    kind="cpu",
    total_bytes=32 * GiB,
    free_bytes=21 * GiB,
    used_bytes=11 * GiB,
)
_worker = WorkerInfo(
    worker_id=WORKER,
    model=MODEL,
    device=0,
    pid=41237,
    state="ready",
    memory_bytes=905969664,
    slots=8,
    slots_busy=3,
)
_exited = WorkerInfo(
    worker_id="w-0b7e55aa1c3d",
    model=MODEL,
    device=0,
    pid=40110,
    state="exited",
    memory_bytes=905969664,
    exit_code=0,
    message="exited with code 0",
)
_leadership = Leadership(epoch=14, orchestrator="orch-b", since=1764355029.1)
_queued_info = JobInfo(
    job_id="job-77d0e1a2b3c4",
    state="queued",
    model=MODEL,
    priority="interactive",
    position=1,
    reasons=["1/1 workers of smollm2-135m busy"],
    submitted_at=1764345600.412,
)
_running_info = JobInfo(
    job_id=JOB,
    state="running",
    model=MODEL,
    priority="interactive",
    worker_id=WORKER,
    attempts=1,
    submitted_at=1764345599.87,
    started_at=1764345599.871,
)
EXECUTE = Execute(
    job_id=JOB,
    model=MODEL,
    prompt="The capital of France is",
    max_tokens=32,
    temperature=0.0,
    top_p=0.95,
    top_k=40,
    seed=42,
    stream=INBOX,
    stop=["\n"],
    seq=2,
)

# (name, message): the name is the marker in protocol.md; order is the order of generation.
EXAMPLES: list[tuple[str, msgspec.Struct]] = [
    # client API
    (
        "generate",
        GenerateRequest(
            model=MODEL,
            prompt="The capital of France is",
            max_tokens=32,
            temperature=0.0,
            seed=42,
            stop=["\n"],
        ),
    ),
    (
        "generate-chat",
        GenerateRequest(
            model=MODEL,
            messages=[
                ChatMessage(role="system", content="Answer in one sentence."),
                ChatMessage(role="user", content="Why is the sky blue?"),
            ],
            max_tokens=64,
            seed=42,
        ),
    ),
    (
        "generate-full",
        GenerateRequest(
            model=MODEL,
            prompt="Write a haiku about GPUs:",
            max_tokens=64,
            temperature=0.7,
            top_p=0.9,
            top_k=50,
            seed=7,
            stop=["\n\n"],
            priority="batch",
            deadline_ms=30000,
            pool="gpu-host-1",
            device=1,
            job_id="my-job-0001",
        ),
    ),
    ("queued", Queued(seq=0, job_id=JOB, position=2)),
    ("queued-update", Queued(seq=1, job_id=JOB, position=1)),
    ("started", Started(seq=2, job_id=JOB, worker_id=WORKER, model=MODEL, seed=42)),
    ("token", Token(seq=3, text=" Paris")),
    ("token-2", Token(seq=4, text=".")),
    (
        "end",
        End(
            seq=5,
            job_id=JOB,
            finish_reason="stop",
            tokens_in=6,
            tokens_out=2,
            ttft_ms=11.4,
            total_ms=19.8,
        ),
    ),
    (
        "error-stream",
        Error(
            code=ErrorCode.WORKER_LOST,
            message="worker lost mid-job: pool gpu-host-1 lost",
            retriable=True,
            seq=5,
            job_id=JOB,
        ),
    ),
    (
        "error-queue-full",
        Error(
            code=ErrorCode.QUEUE_FULL,
            message="queue holds 1024 jobs (capacity 1024)",
            retriable=True,
            retry_after_ms=2400,
            seq=0,
            job_id=JOB,
        ),
    ),
    (
        "error-admission",
        Error(
            code=ErrorCode.MODEL_NOT_FOUND,
            message="model 'llama-70b' is not in the catalog (known: smollm2-135m)",
            seq=0,
            job_id=JOB,
        ),
    ),
    (
        "error-reply",
        Error(code=ErrorCode.NOT_FOUND, message="no job job-000000000000"),
    ),
    ("cancel", CancelRequest(job_id=JOB)),
    ("cancel-reply", CancelReply(job_id=JOB, outcome="cancelled")),
    ("job-get", JobGetRequest(job_id=JOB)),
    ("job-info", _queued_info),
    (
        "job-info-failed",
        JobInfo(
            job_id=JOB,
            state="failed",
            model=MODEL,
            priority="interactive",
            worker_id=WORKER,
            code=ErrorCode.WORKER_LOST,
            attempts=2,
            submitted_at=1764345590.102,
            started_at=1764345590.104,
            ended_at=1764345597.532,
        ),
    ),
    ("state-request", StateRequest()),
    (
        "state",
        ClusterState(
            pools=[
                PoolView(
                    pool_id="gpu-host-1",
                    alive=True,
                    last_seen_ms_ago=412.7,
                    devices=[_gpu],
                    workers=[
                        WorkerInfo(
                            worker_id=WORKER,
                            model=MODEL,
                            device=0,
                            pid=None,
                            state="busy",
                            memory_bytes=905969664,
                        )
                    ],
                )
            ],
            queue=[_queued_info],
            running=[_running_info],
            recent=[
                JobInfo(
                    job_id="job-0a1b2c3d4e5f",
                    state="finished",
                    model=MODEL,
                    priority="interactive",
                    worker_id=WORKER,
                    attempts=1,
                    submitted_at=1764345598.2,
                    started_at=1764345598.201,
                    ended_at=1764345598.655,
                    ttft_ms=6.3,
                    tokens_in=12,
                    tokens_out=32,
                )
            ],
            leader=_leadership,
        ),
    ),
    (
        "pool-view",
        PoolView(
            pool_id="laptop", alive=False, last_seen_ms_ago=9120.0, devices=[_cpu], workers=[]
        ),
    ),
    ("models-request", ModelsRequest()),
    (
        "models",
        ModelsReply(
            models=[
                CatalogEntry(
                    model=_model,
                    pools=["gpu-host-1"],
                    est_bytes=905969664,
                    measured=True,
                    n_ctx=2048,
                )
            ]
        ),
    ),
    (
        "catalog-entry",
        CatalogEntry(
            model=_model, pools=["laptop"], est_bytes=313320512, measured=False, n_ctx=2048
        ),
    ),
    # control plane
    (
        "heartbeat",
        Heartbeat(
            pool_id="gpu-host-1",
            ts=1767225600.125,
            seq=118,
            interval_s=2.0,
            devices=[_gpu],
            workers=[_worker, _exited],
            models=[_model],
        ),
    ),
    ("device", _cpu),
    ("worker-info", _worker),
    ("model-info", _model),
    ("leadership", _leadership),
    ("snapshot-request", SnapshotRequest()),
    ("spawn", SpawnRequest(worker_id=WORKER, model=MODEL, device=0, n_ctx=2048, slots=8)),
    ("stop", StopRequest(worker_id=WORKER, drain=False)),
    ("ack", Ack(detail="41237")),
    (
        "error-spawn",
        Error(
            code=ErrorCode.INSUFFICIENT_VRAM,
            message="device 0 has 52428800 bytes free, the model needs 475849792 (98362432 of "
            "weights, KV cache for 8 x 2048 positions)",
        ),
    ),
    (
        "ready",
        WorkerReady(
            worker_id=WORKER,
            pool_id="gpu-host-1",
            model=MODEL,
            device=0,
            pid=41237,
            memory_bytes=905969664,
            n_ctx=2048,
            layers_offloaded=31,
            layers_total=31,
            load_ms=812.5,
            slots=8,
        ),
    ),
    ("worker-load", WorkerLoad(worker_id=WORKER, pool_id="gpu-host-1", slots_busy=3)),
    (
        "worker-failed",
        WorkerFailed(
            worker_id=WORKER,
            pool_id="gpu-host-1",
            code=ErrorCode.INSUFFICIENT_VRAM,
            message="only 30/31 layers were placed on the GPU",
        ),
    ),
    ("execute", EXECUTE),
    (
        "execute-chat",
        msgspec.structs.replace(
            EXECUTE,
            prompt=None,
            messages=[ChatMessage(role="user", content="What is the capital of France?")],
            stop=[],
        ),
    ),
    (
        "execute-retry",
        msgspec.structs.replace(EXECUTE, resume_after=3, resume_hash=text_hash(" Paris")),
    ),
    (
        "execute-busy",
        Error(code=ErrorCode.WORKER_BUSY, message="all 8 slots busy", retriable=True),
    ),
    ("worker-abandon", WorkerCancel(job_id=JOB, abandon=True)),
    ("worker-cancel-ack", Ack(detail="cancelling")),
    (
        "status-started",
        JobStatus(job_id=JOB, worker_id=WORKER, state="started", seq=2, hash=text_hash()),
    ),
    (
        "status-progress",
        JobStatus(
            job_id=JOB,
            worker_id=WORKER,
            state="progress",
            seq=3,
            tokens_out=1,
            hash=text_hash(" Paris"),
        ),
    ),
    (
        "status-finished",
        JobStatus(
            job_id=JOB,
            worker_id=WORKER,
            state="finished",
            seq=5,
            tokens_in=6,
            tokens_out=2,
            hash=text_hash(" Paris", "."),
        ),
    ),
    (
        "status-failed",
        JobStatus(
            job_id=JOB,
            worker_id=WORKER,
            state="failed",
            seq=4,
            tokens_in=6,
            tokens_out=1,
            code=ErrorCode.CANCELLED,
        ),
    ),
    # batch
    (
        "batch-job",
        BatchJob(
            custom_id="row-000017",
            model=MODEL,
            prompt="Summarise: NATS is a messaging system.",
            max_tokens=64,
            temperature=0.0,
            seed=1,
        ),
    ),
    (
        "batch-result",
        BatchResult(
            batch_id="nightly-2026-01-01",
            custom_id="row-000017",
            outcome="ok",
            text=" NATS moves messages between programs.",
            finish_reason="stop",
            tokens_in=12,
            tokens_out=8,
            ttft_ms=10.9,
            total_ms=31.2,
            queue_ms=140.0,
            worker_id=WORKER,
            model=MODEL,
            seed=1,
            completed_at=1767225633.5,
        ),
    ),
    (
        "batch-result-failed",
        BatchResult(
            batch_id="nightly-2026-01-01",
            custom_id="row-000018",
            outcome="failed",
            attempts=3,
            error=Error(
                code=ErrorCode.CONTEXT_OVERFLOW,
                message="max_tokens 4000 leaves no room for the prompt in context 2048",
            ),
            completed_at=1767225634.0,
        ),
    ),
    ("batch-status-request", BatchStatusRequest(batch_id="nightly-2026-01-01")),
    (
        "batch-status",
        BatchStatus(
            batch_id="nightly-2026-01-01", total=1000, done=640, failed=2, in_flight=64, queued=294
        ),
    ),
    ("batch-cancel", BatchCancelRequest(batch_id="nightly-2026-01-01")),
    ("batch-cancel-reply", BatchCancelReply(batch_id="nightly-2026-01-01", running_cancelled=3)),
    (
        "batch-event",
        BatchEvent(batch_id="nightly-2026-01-01", custom_id="row-000017", outcome="ok"),
    ),
]

_BLOCK = re.compile(r"(<!-- example (?P<name>[a-z0-9-]+) -->\n)(.*?)(<!-- /example -->)", re.DOTALL)


def render(message: msgspec.Struct) -> str:
    compact = encode(message)
    if len(compact) <= COMPACT_MAX:
        text = compact.decode()
    else:
        text = msgspec.json.format(compact, indent=2).decode()
    return f"```json\n{text}\n```\n"


def rewrite(markdown: str) -> tuple[str, list[str]]:
    """The markdown with every example block regenerated, and the names it lacks or misspells."""
    examples = dict(EXAMPLES)
    seen: set[str] = set()
    problems: list[str] = []

    def fill(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in examples:
            problems.append(f"unknown example {name!r}")
            return match[0]
        seen.add(name)
        return match[1] + render(examples[name]) + match[4]

    out = _BLOCK.sub(fill, markdown)
    problems += [f"example {n!r} has no block in protocol.md" for n in examples if n not in seen]
    return out, problems


def main(argv: list[str]) -> int:
    current = PROTOCOL.read_text()
    updated, problems = rewrite(current)
    for problem in problems:
        print(f"gen_protocol_examples: {problem}", file=sys.stderr)
    if "--check" in argv:
        if updated != current:
            print("docs/protocol.md examples are stale: run docs/gen_protocol_examples.py")
            return 1
        return 1 if problems else 0
    if updated != current:
        PROTOCOL.write_text(updated)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
