"""Plain-text tables for `llorch state` and `llorch models`."""

from schemas import ClusterState, ModelsReply


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
        [j.job_id, j.model, j.priority, j.state, str(j.position or "-"), j.worker_id or "-"]
        for j in state.running + state.queue
    ]
    return "\n\n".join(
        [
            _table(["POOL", "STATUS", "DEV", "KIND", "NAME", "TOTAL", "FREE"], devices),
            _table(["WORKER", "POOL", "DEV", "MODEL", "STATE", "MEMORY"], workers),
            _table(["JOB", "MODEL", "PRIORITY", "STATE", "POSITION", "WORKER"], jobs),
        ]
    )


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
