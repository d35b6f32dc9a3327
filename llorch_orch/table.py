"""Plain-text tables for `llorch state`, `llorch job` and `llorch models`."""

import time

from schemas import ClusterState, JobInfo, Leadership, ModelsReply


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    return "\n".join(line.rstrip() for line in lines)


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n >> 20} MiB"


def state_table(state: ClusterState) -> str:
    devices = [
        [
            p.pool_id,
            "up" if p.alive else "LOST",
            str(d.index),
            d.kind,
            d.name,
            _mib(d.total_bytes),
            _mib(d.free_bytes),
        ]
        for p in state.pools
        for d in p.devices
    ]
    workers = [
        [w.worker_id, p.pool_id, str(w.device), w.model, w.state, _mib(w.memory_bytes)]
        for p in state.pools
        for w in p.workers
    ]
    jobs = [
        [
            j.job_id,
            j.model,
            j.priority,
            j.state,
            str(j.position or "-"),
            j.worker_id or "-",
            "; ".join(j.reasons) or "-",
        ]
        for j in state.running + state.queue
    ]
    return "\n\n".join(
        [
            *([_leader(state.leader)] if state.leader else []),
            _table(["POOL", "STATUS", "DEV", "KIND", "NAME", "TOTAL", "FREE"], devices),
            _table(["WORKER", "POOL", "DEV", "MODEL", "STATE", "MEMORY"], workers),
            _table(["JOB", "MODEL", "PRIORITY", "STATE", "POSITION", "WORKER", "WHY"], jobs),
        ]
    )


def _leader(lead: Leadership) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(lead.since))
    return f"leader: {lead.orchestrator} (epoch {lead.epoch}) since {since}"


def job_table(job: JobInfo, now: float) -> str:
    """One job, a field per line; times as seconds before `now` (the caller's clock)."""
    state = job.state if job.position is None else f"{job.state} (position {job.position})"
    if job.code:
        state += f" {job.code}"
    tokens = "-" if job.tokens_out is None else f"{job.tokens_in} in, {job.tokens_out} out"
    rows = [
        ["job", job.job_id],
        ["state", state],
        ["model", f"{job.model} ({job.priority})"],
        ["worker", job.worker_id or "-"],
        ["attempts", str(job.attempts)],
        *(["why", reason] for reason in job.reasons),
        ["submitted", _ago(job.submitted_at, now)],
        ["started", _ago(job.started_at, now)],
        ["ended", _ago(job.ended_at, now)],
        ["ttft", "-" if job.ttft_ms is None else f"{job.ttft_ms:.1f} ms"],
        ["tokens", tokens],
    ]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in rows)


def _ago(at: float | None, now: float) -> str:
    return "-" if at is None else f"{max(0.0, now - at):.1f} s ago"


def models_table(reply: ModelsReply) -> str:
    rows = [
        [
            e.model.name,
            _mib(e.model.size_bytes),
            str(e.n_ctx or "-"),
            str(e.model.n_ctx_train),
            "yes" if e.model.has_chat_template else "no",
            _mib(e.est_bytes),
            "measured" if e.measured else "estimated",
            ",".join(e.pools),
        ]
        for e in reply.models
    ]
    # USABLE_CTX is what admission allows a request (prompt + max_tokens), TRAINED_CTX the
    # GGUF's own figure: they differ when the orchestrator configures a smaller context.
    header = ["MODEL", "FILE", "USABLE_CTX", "TRAINED_CTX", "CHAT", "BUDGET", "SOURCE", "POOLS"]
    return _table(header, rows)
