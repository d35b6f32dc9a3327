"""Random event sequences against the core, checking its invariants after every step.

A small simulator plays the pools and workers: it remembers what the core asked (spawns,
stops, executes) so the random events it feeds back are plausible (ready for a spawned
worker, status for an executed job, heartbeats listing the pool's workers), with random
losses, refusals, skewed clocks, strangers and cancels mixed in.
"""

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llorch_orch.core import (
    CancelOnWorker,
    Command,
    Core,
    Emit,
    ModelConfig,
    OrchConfig,
    SendExecute,
    Spawn,
    Stop,
)
from llorch_orch.core import events as ev
from schemas import Error, Heartbeat, JobStatus, Queued, WorkerFailed
from schemas.codes import ErrorCode

from .factory import T0, GiB, MiB, cancel, cpu, gpu, model, ready, request, winfo

POOLS = {
    "p1": [gpu(0, total=8 * GiB), gpu(1, total=4 * GiB)],
    "p2": [cpu(total=6 * GiB)],
}
MODELS = {
    "p1": [model("a", 1 * GiB), model("b", 3 * GiB), model("c", 100 * MiB)],
    "p2": [model("a", 1 * GiB), model("c", 100 * MiB)],
}
MODEL_NAMES = ["a", "a", "b", "c", "zz"]  # zz: not in any catalog


@dataclass
class SimWorker:
    pool: str
    model: str
    device: int
    state: str = "starting"  # starting | ready | gone
    slots: int = 1
    jobs: set[str] = field(default_factory=set)  # jobs the simulated worker is running


@dataclass
class Sim:
    core: Core
    now: float = T0
    n_jobs: int = 0
    workers: dict[str, SimWorker] = field(default_factory=dict)
    runs: list[tuple[str, str]] = field(default_factory=list)  # (job, worker) executes seen
    submitted: list[str] = field(default_factory=list)
    submit_order: dict[str, int] = field(default_factory=dict)
    terminal: dict[str, int] = field(default_factory=dict)  # orchestrator Errors per job
    worker_ended: set[str] = field(default_factory=set)  # finished/failed status accepted
    dispatched: set[str] = field(default_factory=set)  # jobs whose stream the worker numbers
    last_seq: dict[str, int] = field(default_factory=dict)  # orchestrator's seq per job
    hb_seq: int = 0


# ---- actions ---------------------------------------------------------------------------
submit_st = st.tuples(
    st.just("submit"),
    st.sampled_from(MODEL_NAMES),
    st.sampled_from(["interactive", "batch"]),
    st.sampled_from([None, None, None, "p1", "p2", "p1/1", "dev0"]),
    st.sampled_from([None, None, 500, 5000]),
)
hb_st = st.tuples(
    st.just("hb"),
    st.sampled_from(list(POOLS)),
    st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2),  # free fraction per device
    st.sampled_from(["all", "all", "all", "drop", "exit", "stranger", "skew"]),
)
pick_st = st.integers(0, 50)
ready_st = st.tuples(st.just("ready"), pick_st, st.sampled_from([200 * MiB, 1 * GiB, 2 * GiB]))
finish_st = st.tuples(st.just("status"), pick_st, st.sampled_from(["started", "finished"]))
action_st = st.one_of(
    submit_st,
    submit_st,
    submit_st,
    ready_st,
    ready_st,
    ready_st,
    finish_st,
    finish_st,
    hb_st,
    hb_st,
    st.tuples(st.just("failed"), pick_st),
    st.tuples(st.just("spawn_refused"), pick_st),
    st.tuples(
        st.just("status"), pick_st, st.sampled_from(["started", "progress", "finished", "failed"])
    ),
    st.tuples(st.just("accept"), pick_st),
    st.tuples(
        st.just("refuse"), pick_st, st.sampled_from([ErrorCode.WORKER_BUSY, ErrorCode.INTERNAL])
    ),
    st.tuples(st.just("cancel"), pick_st),
    st.tuples(st.just("tick"), st.sampled_from([0.0, 0.5, 1.0, 2.0, 7.0, 40.0])),
)
config_st = st.builds(
    OrchConfig,
    queue_capacity=st.integers(1, 6),
    queue_policy=st.sampled_from(["reject", "drop-oldest-batch"]),
    placement=st.sampled_from(["best-fit", "spread"]),
    spawn_timeout_s=st.sampled_from([5.0, 60.0]),
    stall_timeout_s=st.sampled_from([10.0, 100.0]),
    execute_ack_timeout_s=st.sampled_from([1.0, 50.0]),
    queued_update_top=st.integers(1, 4),
    pool_lost_after=st.sampled_from([3, 50]),
    default_model=st.builds(
        ModelConfig,
        max_workers=st.integers(0, 3),
        slots=st.integers(1, 3),
        keep_alive_s=st.sampled_from([0.0, 30.0]),
    ),
)


def pick(seq: list, i: int):  # type: ignore[no-untyped-def]
    return seq[i % len(seq)] if seq else None


def heartbeat_event(sim: Sim, pool: str, fracs: list[float], mode: str) -> ev.HeartbeatSeen:
    devices = []
    for d, frac in zip(POOLS[pool], fracs, strict=False):
        free = int(d.total_bytes * frac)
        devices.append(d.__class__(**{**_fields(d), "free_bytes": free,
                                      "used_bytes": d.total_bytes - free}))  # fmt: skip
    mine = [(wid, w) for wid, w in sorted(sim.workers.items()) if w.pool == pool]
    infos = []
    for i, (wid, w) in enumerate(mine):
        if w.state == "gone":
            continue
        if mode == "drop" and i == 0:
            w.state = "gone"
            continue
        if mode == "exit" and i == 0:
            w.state = "gone"
            infos.append(winfo(wid, "exited", w.model, w.device, None, "crashed"))
            continue
        state = "starting" if w.state == "starting" else "ready"
        memory = None if w.state == "starting" else 500 * MiB
        infos.append(winfo(wid, state, w.model, w.device, memory, slots=w.slots,
                           slots_busy=len(w.jobs)))  # fmt: skip
    if mode == "stranger":
        sim.workers[f"s{sim.hb_seq}"] = SimWorker(pool, "a", 0, "ready", 2, {"foreign"})
        infos.append(winfo(f"s{sim.hb_seq}", "ready", "a", 0, 600 * MiB, slots=2, slots_busy=1))
    sim.hb_seq += 1
    ts = sim.now + (10_000 if mode == "skew" else 0)
    hb = Heartbeat(pool_id=pool, ts=ts, seq=sim.hb_seq, interval_s=2.0, devices=devices,
                   workers=infos, models=MODELS[pool])  # fmt: skip
    return ev.HeartbeatSeen(sim.now, hb)


def _fields(d):  # type: ignore[no-untyped-def]
    return {f: getattr(d, f) for f in d.__struct_fields__}


def to_event(sim: Sim, action: tuple) -> ev.Event | str | None:  # noqa: C901
    kind = action[0]
    now = sim.now
    if kind == "submit":
        _, name, prio, pin, deadline = action
        job = f"j{sim.n_jobs}"
        sim.n_jobs += 1
        kw: dict = {"priority": prio, "deadline_ms": deadline}
        if pin == "p1/1":
            kw.update(pool="p1", device=1)
        elif pin == "dev0":
            kw["device"] = 0
        elif pin is not None:
            kw["pool"] = pin
        sim.submitted.append(job)
        sim.submit_order[job] = sim.n_jobs
        return ev.Submit(now, request(name, job_id=job, **kw), f"_INBOX.{job}")
    if kind == "hb":
        return heartbeat_event(sim, action[1], action[2], action[3])
    if kind == "tick":
        sim.now += action[1]
        return ev.Tick(sim.now)
    if kind == "cancel":
        return "cancel:" + (pick(sim.submitted, action[1]) or "unknown")
    starting = [wid for wid, w in sorted(sim.workers.items()) if w.state == "starting"]
    if kind in ("ready", "failed", "spawn_refused"):
        wid = pick(starting, action[1])
        if wid is None:
            return None
        w = sim.workers[wid]
        if kind == "ready":
            w.state = "ready"
            return ready(wid, now, w.pool, action[2], w.model, w.device, w.slots)
        w.state = "gone"
        if kind == "failed":
            msg = WorkerFailed(worker_id=wid, pool_id=w.pool, code=ErrorCode.MODEL_LOAD_FAILED,
                               message="x")  # fmt: skip
            return ev.FailedSeen(now, msg)
        return ev.SpawnRefused(now, wid, ErrorCode.INSUFFICIENT_VRAM, "no")
    run = pick(sim.runs, action[1])
    if run is None:
        return None
    job, wid = run
    if kind == "accept":
        return ev.ExecuteAccepted(now, job, wid)
    if kind == "refuse":
        return ev.ExecuteRefused(now, job, wid, action[2])
    state = action[2]
    if state in ("finished", "failed"):
        sim.runs.remove(run)
        if wid in sim.workers:
            sim.workers[wid].jobs.discard(job)
    code = ErrorCode.INTERNAL if state == "failed" else None
    seq = sim.core.jobs[job].last_seq + 1 if job in sim.core.jobs else 0
    return ev.StatusSeen(now, JobStatus(job_id=job, worker_id=wid, state=state, seq=seq + 2,
                                        code=code))  # fmt: skip


# ---- invariants --------------------------------------------------------------------------
def reserved(core: Core, pool: str, index: int) -> int:
    return sum(w.reserved for w in core.view.device_workers(pool, index))


def snapshot(core: Core) -> dict:
    return {
        # busy with a job we track (one refused for an unknown job may be freed by a heartbeat)
        "busy": {w.worker_id for w in core.view.workers.values() if w.jobs},
        "order": {m: [j for _, j in core.queue.head(m, 10**6)] for m in core.queue.all_models()},
        "reserved": {
            (p.pool_id, i): reserved(core, p.pool_id, i)
            for p in core.view.pools.values()
            for i in p.devices
        },
    }


def check_queue(core: Core) -> None:
    assert len(core.queue) <= core.cfg.queue_capacity
    assert len(core.queue) == sum(1 for j in core.jobs.values() if j.phase == "queued")
    for name in core.queue.all_models():  # interactive first
        entries = [core.jobs[j] for _, j in core.queue.head(name, 10**6)]
        prios = [j.request.priority == "batch" for j in entries]
        assert prios == sorted(prios)


def check_view(core: Core) -> None:
    for job in core.jobs.values():
        if job.phase == "queued":
            assert job.job_id in core.queue, job
            assert job.worker_id is None
            continue
        assert job.job_id not in core.queue
        assert job.worker_id is not None
        worker = core.view.workers.get(job.worker_id)
        if worker is not None:  # one slot of its worker, which runs no more than it has
            assert worker.phase == "busy" and job.job_id in worker.jobs, (worker, job)
    for w in core.view.workers.values():
        assert len(w.jobs) <= w.slots, f"{w.worker_id} holds more jobs than slots"
        for job_id in w.jobs:
            job = core.jobs[job_id]
            assert job.worker_id == w.worker_id and job.phase != "queued", (w, job)
        assert (w.phase == "busy") == bool(w.jobs or w.foreign) or w.phase in (
            "starting",
            "draining",
        ), w
        assert w.est_bytes >= 0 and (w.memory_bytes is None or w.memory_bytes >= 0)
    for pool in core.view.pools.values():
        for index in pool.devices:
            assert core.view.available(pool.pool_id, index) >= 0
    check_queue(core)
    alive = any(p.alive for p in core.view.pools.values())
    assert core.next_wake() is not None or not alive  # a live pool's loss is a timer ahead
    check_index(core)


def check_index(core: Core) -> None:
    """The model/phase index agrees with every worker, and holds no other."""
    for w in core.view.workers.values():
        assert core.view.in_phase(w.model, w.phase).count(w) == 1
    indexed = sum(
        len(core.view.in_phase(m, p))
        for m in {w.model for w in core.view.workers.values()}
        for p in ("starting", "idle", "busy", "draining")
    )
    assert indexed == len(core.view.workers)


def check_dispatch_order(core: Core, before: dict, out: list[Command]) -> None:
    for cmd in out:
        if not isinstance(cmd, SendExecute):
            continue
        job = cmd.execute.job_id
        order = before["order"].get(cmd.execute.model, [])
        if job not in order:
            continue  # dispatched straight from submit (nothing waited for its model)
        for earlier in order[: order.index(job)]:
            waiting = core.jobs.get(earlier)
            if waiting is None or waiting.phase != "queued":
                continue
            req = waiting.request
            assert req.pool is not None or req.device is not None, (
                f"{job} overtook unpinned {earlier}"
            )


def check_commands(  # noqa: C901 (one branch per command kind)
    sim: Sim, before: dict, out: list[Command], worker_ended_now: str | None
) -> None:
    core = sim.core
    spawned = set()
    for cmd in out:
        if isinstance(cmd, Emit):
            assert cmd.subject == f"_INBOX.{cmd.job_id}"
            event = cmd.event
            assert getattr(event, "job_id", cmd.job_id) == cmd.job_id
            assert event.seq is not None and event.seq > sim.last_seq.get(cmd.job_id, -1)
            sim.last_seq[cmd.job_id] = event.seq
            assert cmd.job_id not in sim.worker_ended, f"event after worker's end: {cmd}"
            if isinstance(event, Error):
                sim.terminal[cmd.job_id] = sim.terminal.get(cmd.job_id, 0) + 1
                assert sim.terminal[cmd.job_id] == 1, f"two terminal events for {cmd.job_id}"
            else:
                assert sim.terminal.get(cmd.job_id, 0) == 0, "event after the terminal one"
                assert isinstance(event, Queued)
                assert cmd.job_id not in sim.dispatched, "queued event inside a worker's stream"
        elif isinstance(cmd, SendExecute):
            job = cmd.execute.job_id
            assert sim.terminal.get(job, 0) == 0 and job not in sim.worker_ended
            w = core.view.workers[cmd.worker_id]
            assert w.phase == "busy" and job in w.jobs and len(w.jobs) <= w.slots
            assert core.jobs[job].worker_id == cmd.worker_id
            assert cmd.execute.stream == f"_INBOX.{job}"
            sim.dispatched.add(job)
            sim.runs.append((job, cmd.worker_id))
            if cmd.worker_id in sim.workers:
                sim.workers[cmd.worker_id].jobs.add(job)
        elif isinstance(cmd, Stop):
            if cmd.reason != "lost":
                assert cmd.request.worker_id not in before["busy"], f"busy worker stopped: {cmd}"
            if cmd.request.worker_id in sim.workers:
                sim.workers[cmd.request.worker_id].state = "gone"
        elif isinstance(cmd, Spawn):
            wid = cmd.request.worker_id
            assert wid not in sim.workers
            sim.workers[wid] = SimWorker(
                cmd.pool_id, cmd.request.model, cmd.request.device, slots=cmd.request.slots
            )
            spawned.add((cmd.pool_id, cmd.request.device))
        elif isinstance(cmd, CancelOnWorker):
            assert core.jobs[cmd.job_id].worker_id == cmd.worker_id
    for pool, index in spawned:
        total = core.view.pools[pool].devices[index].total_bytes
        new = {c.request.worker_id for c in out if isinstance(c, Spawn)}
        old = sum(
            w.reserved for w in core.view.device_workers(pool, index) if w.worker_id not in new
        )
        if old <= total:
            assert reserved(core, pool, index) <= total, "placement over-committed a device"
    if worker_ended_now is not None:
        sim.worker_ended.add(worker_ended_now)


def step(sim: Sim, action: tuple) -> None:
    core = sim.core
    before = snapshot(core)
    event = to_event(sim, action)
    if event is None:
        return
    ended = None
    if isinstance(event, str):
        job_id = event.split(":", 1)[1]
        known = job_id in core.jobs
        reply, out = cancel(core, sim.now, job_id)
        if known:
            assert reply.outcome == "cancelled"  # type: ignore[union-attr]
        elif core.job_info(job_id) is not None:
            assert reply.outcome == "already_finished"  # type: ignore[union-attr]
        else:
            assert isinstance(reply, Error) and reply.code == ErrorCode.NOT_FOUND
    else:
        if isinstance(event, ev.StatusSeen) and event.status.state in ("finished", "failed"):
            job = core.jobs.get(event.status.job_id)
            if job is not None and (
                job.worker_id == event.status.worker_id or job.phase == "queued"
            ):
                ended = job.job_id
            # its job ended in this very step: idle now, so it may be stopped in the same step
            before["busy"].discard(event.status.worker_id)
        out = core.handle(event)
    check_commands(sim, before, out, ended)
    check_dispatch_order(core, before, out)
    check_view(core)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(cfg=config_st, actions=st.lists(action_st, min_size=10, max_size=80))
def test_random_event_sequences_keep_the_invariants(cfg: OrchConfig, actions: list) -> None:
    sim = Sim(Core(cfg))
    for pool in POOLS:
        step(sim, ("hb", pool, [1.0, 1.0], "all"))
    for action in actions:
        step(sim, action)
    # drain: time passes, pools keep heartbeating, workers finish what they run
    for _ in range(30):
        for pool in POOLS:
            step(sim, ("hb", pool, [1.0, 1.0], "all"))
        for wid, w in sorted(sim.workers.items()):
            if w.state == "starting":
                step(sim, ("ready", sorted(
                    k for k, v in sim.workers.items() if v.state == "starting"
                ).index(wid), 500 * MiB))  # fmt: skip
        while sim.runs:
            step(sim, ("status", 0, "finished"))
        step(sim, ("tick", 2.0))
    # every accepted job ended one way or the other
    leftover = [j for j in sim.core.jobs.values()]
    for job in leftover:  # only pinned jobs that can never be served may still wait
        assert job.phase == "queued", job
