"""Failures and timers: spawn timeouts and refusals, lost workers and pools, retries that
resume the stream, heartbeat skew, adoption after an orchestrator restart."""

from llorch_orch.core import Core, Emit, ModelConfig, OrchConfig
from llorch_orch.core import events as ev
from llorch_orch.core.drain import NO_RATE_MS
from schemas import Queued
from schemas.codes import ErrorCode

from .factory import (
    T0,
    abandon_answered,
    abandons,
    accepted,
    error_codes,
    errors,
    executes,
    failed,
    gpu,
    heartbeat,
    make_core,
    only_execute,
    only_spawn,
    queued,
    ready,
    refused,
    running_worker,
    spawn_refused,
    spawns,
    status,
    stops,
    submit,
    tick,
    winfo,
)


def two_gpu_core(**cfg: object) -> Core:
    cfg.setdefault("pool_lost_after", 10_000)
    core = Core(OrchConfig(**cfg))  # type: ignore[arg-type]
    core.handle(heartbeat(devices=[gpu(0), gpu(1)]))
    return core


# ---- spawn failures ----------------------------------------------------------------------
def test_spawn_timeout_kills_and_retries_elsewhere_once_then_fails_jobs() -> None:
    core = two_gpu_core(spawn_timeout_s=10)
    first = only_spawn(core.handle(submit("j1")))
    assert core.next_wake() == T0 + 10
    out = core.handle(tick(T0 + 10))
    (stop,) = stops(out)
    assert stop.request.worker_id == first.request.worker_id and not stop.request.drain
    assert stop.reason == "spawn-timeout"
    second = only_spawn(out)
    assert second.request.device != first.request.device
    assert first.request.worker_id not in core.view.workers
    out = core.handle(tick(T0 + 20))
    assert [s.request.worker_id for s in stops(out)] == [second.request.worker_id]
    assert error_codes(out) == {"j1": ErrorCode.WORKER_START_FAILED}
    assert errors(out)[0].retriable
    assert not spawns(out)
    assert not core.view.workers


def test_spawn_refused_retries_once() -> None:
    core = two_gpu_core()
    first = only_spawn(core.handle(submit("j1")))
    out = core.handle(spawn_refused(first.request.worker_id))
    second = only_spawn(out)
    assert second.request.device != first.request.device and not stops(out)
    out = core.handle(spawn_refused(second.request.worker_id))
    assert error_codes(out) == {"j1": ErrorCode.WORKER_START_FAILED}


def test_a_spawn_nobody_answers_waits_for_the_pool_instead_of_failing_jobs() -> None:
    """A pool restarting (no responders) is not a model that cannot start: the job waits,
    new requests hear a retriable UNAVAILABLE, and the pool's next heartbeat brings a spawn."""
    core = make_core()
    first = only_spawn(core.handle(submit("j1")))
    out = core.handle(spawn_refused(first.request.worker_id, code=ErrorCode.UNAVAILABLE))
    assert not errors(out) and not spawns(out) and core.job_info("j1").state == "queued"
    assert not core.view.pools["p1"].alive
    assert error_codes(core.handle(submit("j2"))) == {"j2": ErrorCode.UNAVAILABLE}
    again = only_spawn(core.handle(heartbeat(now=T0 + 1)))
    assert again.pool_id == "p1" and again.request.worker_id != first.request.worker_id


def test_failed_seen_while_starting_retries() -> None:
    core = two_gpu_core()
    first = only_spawn(core.handle(submit("j1")))
    second = only_spawn(core.handle(failed(first.request.worker_id)))
    out = core.handle(ready(second.request.worker_id, device=second.request.device))
    assert only_execute(out).execute.job_id == "j1"


def test_single_device_retry_uses_the_same_device() -> None:
    core = make_core()
    first = only_spawn(core.handle(submit("j1")))
    second = only_spawn(core.handle(spawn_refused(first.request.worker_id)))
    assert second.request.device == 0


def test_spawn_retry_keeps_the_pin() -> None:
    core = two_gpu_core()
    first = only_spawn(core.handle(submit("j1", device=1)))
    second = only_spawn(core.handle(spawn_refused(first.request.worker_id)))
    assert second.request.device == 1


def test_start_failure_spares_jobs_other_workers_serve() -> None:
    core = two_gpu_core(default_model=ModelConfig(max_workers=2))
    w0 = only_spawn(core.handle(submit("j1"))).request.worker_id
    core.handle(ready(w0))
    core.handle(submit("j2"))  # spawns a second worker
    (s,) = [w for w in core.view.workers.values() if w.phase == "starting"]
    out = core.handle(spawn_refused(s.worker_id))
    out += core.handle(spawn_refused(only_spawn(out).request.worker_id))
    assert not errors(out)  # w0 will serve j2
    assert core.job_info("j2").state == "queued"


def test_starting_worker_absent_from_an_early_heartbeat_is_not_lost() -> None:
    """A heartbeat published before the pool got our spawn request does not list the worker."""
    core = make_core()
    w = only_spawn(core.handle(submit("j1"))).request.worker_id
    out = core.handle(heartbeat(now=T0 + 0.1, workers=[]))
    assert not spawns(out) and w in core.view.workers
    core.handle(heartbeat(now=T0 + 1, workers=[winfo(w, "starting", memory=None)]))
    out = core.handle(heartbeat(now=T0 + 2, workers=[]))  # now it did disappear
    assert w not in core.view.workers
    again = only_spawn(out)
    assert again.request.worker_id != w and core.job_info("j1").state == "queued"


def test_ready_via_heartbeat() -> None:
    core = make_core()
    w = only_spawn(core.handle(submit("j1"))).request.worker_id
    out = core.handle(heartbeat(now=T0 + 1, workers=[winfo(w, "ready")]))
    assert only_execute(out).worker_id == w


def test_stale_ready_is_ignored() -> None:
    core = make_core()
    assert core.handle(ready("stranger")) == []


# ---- lost workers and retries -------------------------------------------------------------
def lose_by_heartbeat(core: Core, now: float) -> list:
    return core.handle(heartbeat(now=now, workers=[]))


def test_lost_worker_job_retried_with_same_seq_and_resume_after() -> None:
    core = two_gpu_core(default_model=ModelConfig(max_workers=2))
    w1 = running_worker(core)
    first = core.jobs["j1"]
    seed, seq = first.seed, 1
    core.handle(status("j1", w1, "started", seq=1, now=T0 + 1))
    core.handle(status("j1", w1, "progress", seq=7, now=T0 + 2))
    out = lose_by_heartbeat(core, T0 + 3)
    assert not errors(out) and not queued(out)  # retried silently, no event mid-stream
    assert core.job_info("j1").state == "queued"
    w2 = only_spawn(out).request.worker_id
    ex = only_execute(core.handle(ready(w2, T0 + 4)))
    assert ex.execute.seq == seq and ex.execute.resume_after == 7 and ex.execute.seed == seed
    assert ex.attempt == 2
    # second loss: out of attempts
    core.handle(status("j1", w2, "started", seq=8, now=T0 + 5))
    out = lose_by_heartbeat(core, T0 + 6)
    (err,) = errors(out)
    assert err.code == ErrorCode.WORKER_LOST and err.retriable and err.seq == 9


def test_retried_job_goes_to_the_head_of_its_lane() -> None:
    core = make_core()
    w1 = running_worker(core, "j1", priority="batch")
    core.handle(submit("j2", priority="batch"))
    core.handle(submit("j3", priority="interactive"))
    out = lose_by_heartbeat(core, T0 + 1)
    assert [j for _, j in core.queue.head("m", 10)] == ["j3", "j1", "j2"]
    assert w1 not in core.view.workers
    w2 = only_spawn(out).request.worker_id
    assert only_execute(core.handle(ready(w2, T0 + 2))).execute.job_id == "j3"


def test_worker_reported_exited_is_lost() -> None:
    core = make_core()
    w = running_worker(core)
    out = core.handle(heartbeat(now=T0 + 1, workers=[winfo(w, "exited", message="segfault")]))
    assert w not in core.view.workers and core.job_info("j1").state == "queued"
    assert only_spawn(out).job_id == "j1" and not errors(out)


def test_failed_seen_for_a_loaded_worker_retries_its_job() -> None:
    core = make_core()
    w = running_worker(core)
    out = core.handle(failed(w, T0 + 1))
    assert w not in core.view.workers
    assert core.job_info("j1").state == "queued" and not errors(out)
    assert only_spawn(out).job_id == "j1"


def test_stalled_worker_is_lost_killed_and_not_readopted() -> None:
    core = make_core(stall_timeout_s=30, execute_ack_timeout_s=5, pool_lost_after=1000)
    w = running_worker(core)
    core.handle(accepted("j1", w, T0 + 1))
    core.handle(status("j1", w, "started", seq=1, now=T0 + 1))
    assert core.next_wake() == T0 + 31
    assert core.handle(tick(T0 + 30)) == []
    out = core.handle(tick(T0 + 31))
    (stop,) = stops(out)
    assert stop.request.worker_id == w and not stop.request.drain and stop.reason == "lost"
    assert core.job_info("j1").state == "queued"
    # the pool still lists it until the kill lands: it must not come back as idle
    out = core.handle(heartbeat(now=T0 + 32, workers=[winfo(w, "busy")]))
    assert w not in core.view.workers and not executes(out)


def test_unacked_execute_means_lost() -> None:
    core = make_core(execute_ack_timeout_s=5, pool_lost_after=1000)
    w = running_worker(core)
    assert core.next_wake() == T0 + 5
    out = core.handle(tick(T0 + 5))
    (stop,) = stops(out)
    assert (stop.request.worker_id, stop.request.drain, stop.reason) == (w, False, "lost")
    assert w not in core.view.workers and not errors(out)
    assert core.job_info("j1").state == "queued" and only_spawn(out).job_id == "j1"


def test_ack_clears_the_ack_deadline() -> None:
    core = make_core(execute_ack_timeout_s=5, stall_timeout_s=30, pool_lost_after=1000)
    w = running_worker(core)
    core.handle(accepted("j1", w, T0 + 1))
    core.handle(tick(T0 + 6))
    assert core.job_info("j1").state == "running"


def test_execute_refused_with_other_code_loses_the_worker() -> None:
    core = make_core()
    w = running_worker(core)
    out = core.handle(refused("j1", w, T0, ErrorCode.INTERNAL))
    assert w not in core.view.workers and core.job_info("j1").state == "queued"
    assert [s.request.worker_id for s in stops(out)] == [w]


def test_pool_lost_after_missed_heartbeats() -> None:
    core = make_core(pool_lost_after=3)
    w = running_worker(core)
    core.handle(status("j1", w, "started", seq=1, now=T0 + 1))
    assert core.next_wake() == T0 + 6
    core.handle(tick(T0 + 5.9))
    assert core.view.pools["p1"].alive
    out = core.handle(tick(T0 + 6))
    assert not core.view.pools["p1"].alive and not core.view.workers
    assert not stops(out)  # nobody to tell
    assert [(a.worker_id, a.job_id) for a in abandons(out)] == [(w, "j1")]  # the fence
    core.handle(abandon_answered("j1", w, T0 + 6.5))
    assert core.job_info("j1").state == "queued"  # waits for capacity to come back
    # the pool comes back: the job runs again
    out = core.handle(heartbeat(now=T0 + 7))
    w2 = only_spawn(out).request.worker_id
    assert only_execute(core.handle(ready(w2, T0 + 8))).execute.resume_after == 1


def test_skewed_heartbeat_dropped() -> None:
    core = Core(OrchConfig(max_heartbeat_skew_s=60))
    core.handle(heartbeat(ts=T0 - 61))
    assert not core.view.pools
    core.handle(heartbeat(ts=T0 + 60))
    assert list(core.view.pools) == ["p1"]


def test_worker_finished_after_we_gave_up_on_it() -> None:
    """A worker judged lost that finishes the job anyway has sent End: no retry may follow."""
    core = make_core(default_model=ModelConfig(max_workers=1), stall_timeout_s=10,
                     pool_lost_after=1000)  # fmt: skip
    w = running_worker(core)
    core.handle(status("j1", w, "started", seq=1, now=T0 + 1))
    core.handle(tick(T0 + 11))  # silent: lost, job requeued
    assert core.job_info("j1").state == "queued"
    out = core.handle(status("j1", w, "finished", seq=20, now=T0 + 12))
    assert not errors(out)
    assert core.job_info("j1").state == "finished" and "j1" not in core.queue


def test_retry_refused_when_queue_full() -> None:
    core = make_core(queue_capacity=1, pool_lost_after=1000)
    running_worker(core)
    core.handle(submit("j2"))  # fills the queue
    out = lose_by_heartbeat(core, T0 + 1)
    assert error_codes(out) == {"j1": ErrorCode.QUEUE_FULL}
    (err,) = errors(out)
    assert err.retriable and err.retry_after_ms == NO_RATE_MS  # nothing completed: no rate
    assert [j for _, j in core.queue.head("m", 10)] == ["j2"]
    assert (core.job_info("j1").state, core.job_info("j1").code) == ("failed", "QUEUE_FULL")


def test_a_silent_worker_of_two_jobs_ends_each_once_when_the_queue_is_full() -> None:
    """Both jobs of a 2-slot worker stall: losing the worker for the first settles the second
    too (no room to retry: each fails QUEUE_FULL), which the same pass must not settle again
    (hypothesis found it raising KeyError)."""
    core = make_core(default_model=ModelConfig(slots=2, max_workers=1), queue_capacity=1,
                     stall_timeout_s=10, pool_lost_after=1000)  # fmt: skip
    w = only_spawn(core.handle(submit("j1", T0))).request.worker_id
    assert len(executes(core.handle(ready(w, T0, slots=2)))) == 1
    assert only_execute(core.handle(submit("j2", T0))).worker_id == w
    core.handle(submit("j3", T0))  # waits for a slot: the queue is full
    for job in ("j1", "j2"):
        core.handle(status(job, w, "started", seq=1, now=T0 + 1))
    out = core.handle(tick(T0 + 11))
    assert error_codes(out) == {"j1": ErrorCode.QUEUE_FULL, "j2": ErrorCode.QUEUE_FULL}
    assert len(errors(out)) == 2 and [s.request.worker_id for s in stops(out)] == [w]


# ---- adoption after an orchestrator restart ---------------------------------------------------
def test_adopts_workers_from_heartbeats() -> None:
    core = Core(OrchConfig())
    core.handle(heartbeat(workers=[winfo("wr", "ready"), winfo("wd", "draining"),
                                   winfo("ws", "starting", memory=None)]))  # fmt: skip
    assert core.view.workers["wr"].phase == "idle"
    assert core.view.workers["wd"].phase == "draining"
    assert "ws" not in core.view.workers
    assert only_execute(core.handle(submit("j1"))).worker_id == "wr"


def test_adopted_busy_worker_refuses_then_is_freed_by_its_unknown_job() -> None:
    core = Core(OrchConfig(pool_lost_after=1000))
    core.handle(heartbeat(workers=[winfo("wb", "busy")]))
    assert only_execute(core.handle(submit("j1"))).worker_id == "wb"
    out = core.handle(refused("j1", "wb", T0 + 1, ErrorCode.WORKER_BUSY))
    assert not errors(out)
    assert core.job_info("j1").state == "queued" and core.jobs["j1"].attempts == 0
    assert not [q for q in queued(out)]  # no mid-stream `queued` event after dispatch
    # the unknown job it was running ends: the worker is free and takes j1
    out = core.handle(status("old-job", "wb", "finished", seq=50, now=T0 + 2))
    ex = only_execute(out)
    assert ex.worker_id == "wb" and ex.execute.job_id == "j1" and ex.attempt == 1


def test_refused_busy_worker_freed_when_its_pool_reports_it_ready() -> None:
    core = Core(OrchConfig(pool_lost_after=1000))
    core.handle(heartbeat(workers=[winfo("wb", "busy")]))
    core.handle(submit("j1"))
    core.handle(refused("j1", "wb", T0 + 1, ErrorCode.WORKER_BUSY))
    out = core.handle(heartbeat(now=T0 + 2, workers=[winfo("wb", "ready")]))
    assert only_execute(out).worker_id == "wb"


def test_no_emit_goes_anywhere_but_the_jobs_inbox() -> None:
    core = two_gpu_core(spawn_timeout_s=1)
    out = core.handle(submit("j1"))
    out += core.handle(tick(T0 + 1))
    out += core.handle(tick(T0 + 2))
    emits = [c for c in out if isinstance(c, Emit)]
    assert emits and all(c.subject == "_INBOX.j1" for c in emits)
    assert type(emits[0].event) is Queued


def test_pool_lost_without_retry_fails_with_pool_lost() -> None:
    core = make_core(pool_lost_after=3, max_job_attempts=1)
    w = running_worker(core)
    core.handle(status("j1", w, "started", seq=1, now=T0 + 1))
    assert not errors(core.handle(tick(T0 + 6)))  # not before its worker has stopped
    out = core.handle(abandon_answered("j1", w, T0 + 7))
    assert error_codes(out) == {"j1": ErrorCode.POOL_LOST}


def test_deadline_does_not_apply_to_a_retry_waiting_again() -> None:
    core = make_core(pool_lost_after=1000)
    w = running_worker(core, deadline_ms=5000)  # started in time
    core.handle(status("j1", w, "started", seq=1, now=T0 + 1))
    lose_by_heartbeat(core, T0 + 2)  # back in the queue as a retry
    out = core.handle(tick(T0 + 10))  # past its deadline
    assert not errors(out)
    assert core.job_info("j1").state == "queued"


def test_waiting_job_hears_queued_again_at_the_keepalive() -> None:
    core = make_core(queued_keepalive_s=15, pool_lost_after=1000)
    w = running_worker(core)
    core.handle(status("j1", w, "started", seq=1, now=T0 + 1))  # acked and streaming
    out = core.handle(submit("j2", T0 + 1))
    (first,) = queued(out)
    assert core.next_wake() == T0 + 16
    (again,) = queued(core.handle(tick(T0 + 16)))
    assert again.job_id == "j2" and again.position == first.position
    assert again.seq == first.seq + 1


def test_keepalives_of_a_huge_queue_go_out_in_slices() -> None:
    from llorch_orch.core.recovery import KEEPALIVES_PER_TICK

    core = make_core(queued_keepalive_s=15, pool_lost_after=1000, queue_capacity=10_000)
    w = running_worker(core)
    core.handle(status("j1", w, "started", seq=1, now=T0 + 1))
    waiting = KEEPALIVES_PER_TICK + 10
    for i in range(waiting):
        core.handle(submit(f"q{i}", T0 + 1))
    first = queued(core.handle(tick(T0 + 16)))
    assert KEEPALIVES_PER_TICK - 1 <= len(first) <= KEEPALIVES_PER_TICK  # j1's entry is stale
    assert core.next_wake() == T0 + 16  # the rest are due now: wake again at once
    rest = queued(core.handle(tick(T0 + 16)))
    assert sorted(e.job_id for e in first + rest) == sorted(f"q{i}" for i in range(waiting))


def test_silence_while_the_orchestrator_was_disconnected_loses_nothing() -> None:
    core = make_core()  # heartbeat interval 2 s, lost after 3 missed
    worker = running_worker(core)
    core.handle(status("j1", worker, "progress", seq=2, now=T0 + 1))
    out = core.handle(ev.Reconnected(T0 + 100))  # away for longer than every timer
    assert not abandons(out) and not stops(out) and not errors(out)
    assert core.next_wake() == T0 + 100 + 3 * 2.0  # the pool's loss timer restarted
    out = core.handle(tick(T0 + 105))
    assert not abandons(out) and not stops(out)
    assert core.jobs["j1"].phase == "running" and core.view.pools["p1"].alive
    out = core.handle(tick(T0 + 106))  # and still runs: silence after we are back counts
    assert [a.job_id for a in abandons(out)] == ["j1"] and not core.view.pools["p1"].alive
