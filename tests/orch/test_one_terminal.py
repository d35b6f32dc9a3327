"""Exactly one terminal event per job: a worker refusing a bad job is not a lost worker, a job
whose pool was lost is retried only once its old worker has stopped streaming (the fence), and
jobs still queued when the orchestrator stops end with a retriable error."""

import pytest

from llorch_orch.core import Core, OrchConfig
from llorch_orch.core import events as ev
from llorch_orch.core.brain import JOB_FAULTS
from schemas.codes import ErrorCode

from .factory import (
    T0,
    abandon_answered,
    abandons,
    accepted,
    cancel,
    error_codes,
    errors,
    executes,
    heartbeat,
    make_core,
    only_execute,
    refused,
    running_worker,
    spawns,
    status,
    stops,
    submit,
    tick,
    winfo,
)


# ---- a refusal for the job's fault ---------------------------------------------------------
@pytest.mark.parametrize("code", sorted(JOB_FAULTS))
def test_refusal_for_the_jobs_fault_fails_the_job_and_keeps_the_worker(code: ErrorCode) -> None:
    core = make_core(pool_lost_after=1000)
    w = running_worker(core)
    out = core.handle(refused("j1", w, T0 + 1, code, "the worker's own words"))
    (error,) = errors(out)
    assert (error.job_id, error.code, error.message) == ("j1", code, "the worker's own words")
    assert not error.retriable
    assert not stops(out) and not executes(out) and not spawns(out)
    assert core.view.workers[w].phase == "idle"
    assert core.job_info("j1").state == "failed"
    # the worker serves the next job at once
    assert only_execute(core.handle(submit("j2", T0 + 2))).worker_id == w


def test_a_late_refusal_of_a_job_that_moved_on_changes_nothing() -> None:
    core = make_core(pool_lost_after=1000)
    w = running_worker(core)
    core.handle(status("j1", w, "finished", seq=3, now=T0 + 1))
    out = core.handle(refused("j1", w, T0 + 2, ErrorCode.INVALID_PARAMS))
    assert not errors(out) and core.job_info("j1").state == "finished"


# ---- pool lost: the fence ------------------------------------------------------------------
def two_pools() -> tuple[Core, str, str]:
    """j1 runs on worker w1 of pool p1; pool p2 has an idle worker w2 ready for a retry."""
    core = make_core(pool_lost_after=3)
    w1 = running_worker(core)
    core.handle(status("j1", w1, "started", seq=0, now=T0 + 1))
    core.handle(heartbeat(pool="p2", now=T0 + 1, workers=[winfo("w2")]))
    assert core.view.workers["w2"].phase == "idle"
    core.handle(heartbeat(pool="p2", now=T0 + 5, workers=[winfo("w2")]))
    return core, w1, "w2"


def pool_p1_lost(core: Core, w1: str) -> None:
    out = core.handle(tick(T0 + 6))
    assert not core.view.pools["p1"].alive and w1 not in core.view.workers
    assert [(a.worker_id, a.job_id) for a in abandons(out)] == [(w1, "j1")]
    assert not executes(out) and not errors(out)  # no retry while w1 may still stream
    assert core.job_info("j1").state == "running"
    # p2 lost if silent (its last beat T0+5, 3 intervals of 2 s): the first timer; the fenced
    # job sets none of its own
    assert core.next_wake() == T0 + 11


def test_pool_lost_retries_only_after_the_old_worker_says_where_it_stopped() -> None:
    core, w1, w2 = two_pools()
    pool_p1_lost(core, w1)
    assert not executes(core.handle(status("j1", w1, "progress", seq=40, now=T0 + 6.1)))
    core.handle(heartbeat(pool="p2", now=T0 + 99, workers=[winfo("w2")]))
    assert not executes(core.handle(tick(T0 + 100)))  # no stall rule for a fenced job
    out = core.handle(status("j1", w1, "abandoned", seq=57, now=T0 + 6.2,
                             code=ErrorCode.WORKER_LOST))  # fmt: skip
    retry = only_execute(out)
    assert retry.worker_id == w2
    assert (retry.execute.seq, retry.execute.resume_after) == (1, 57)  # seq of `started`
    assert not errors(out)


def test_fence_lifted_when_the_old_worker_is_shown_gone() -> None:
    """No responders or no answer: it resumes after the last seq its progress reported."""
    core, w1, w2 = two_pools()
    core.handle(status("j1", w1, "progress", seq=12, now=T0 + 2))
    pool_p1_lost(core, w1)
    retry = only_execute(core.handle(abandon_answered("j1", w1, T0 + 16)))
    assert retry.worker_id == w2 and retry.execute.resume_after == 12


def test_fenced_job_that_its_old_worker_finished_is_over() -> None:
    core, w1, _ = two_pools()
    pool_p1_lost(core, w1)
    out = core.handle(status("j1", w1, "finished", seq=90, now=T0 + 6.5))
    assert not executes(out) and not errors(out)
    assert core.job_info("j1").state == "finished"
    assert not executes(core.handle(abandon_answered("j1", w1, T0 + 6.6)))


def test_fenced_job_cancelled_meanwhile_ends_cancelled_once_its_worker_stopped() -> None:
    core, w1, _ = two_pools()
    pool_p1_lost(core, w1)
    cancel(core, T0 + 6.1, "j1")
    assert core.job_info("j1").state == "running"
    out = core.handle(abandon_answered("j1", w1, T0 + 6.2))
    assert error_codes(out) == {"j1": ErrorCode.CANCELLED} and not executes(out)


def test_worker_abandoning_on_its_own_is_retried_at_once() -> None:
    """A worker whose pool died stops and says so before the pool's heartbeats are missed."""
    core, w1, w2 = two_pools()
    out = core.handle(status("j1", w1, "abandoned", seq=9, now=T0 + 2,
                             code=ErrorCode.POOL_LOST))  # fmt: skip
    assert w1 not in core.view.workers
    retry = only_execute(out)
    assert retry.worker_id == w2 and retry.execute.resume_after == 9
    core.handle(accepted("j1", w2, T0 + 2))
    # its pool's last heartbeat still lists it (it is exiting): not adopted again
    core.handle(heartbeat(pool="p1", now=T0 + 3, workers=[winfo(w1)]))
    assert w1 not in core.view.workers
    core.handle(heartbeat(pool="p2", now=T0 + 8, workers=[winfo("w2")]))
    out = core.handle(tick(T0 + 9))  # then the pool is lost: nothing left to fence
    assert not core.view.pools["p1"].alive
    assert not abandons(out) and not errors(out)


def test_abandoned_job_without_attempts_left_fails_with_the_workers_code() -> None:
    core = make_core(pool_lost_after=1000, max_job_attempts=1)
    w = running_worker(core)
    out = core.handle(status("j1", w, "abandoned", seq=4, now=T0 + 1, code=ErrorCode.POOL_LOST))
    assert error_codes(out) == {"j1": ErrorCode.POOL_LOST}
    (error,) = errors(out)
    assert error.retriable and error.seq == 5


# ---- the orchestrator stops ----------------------------------------------------------------
def test_shutdown_fails_queued_jobs_retriably_and_leaves_running_ones() -> None:
    core = Core(OrchConfig(pool_lost_after=1000))
    core.handle(heartbeat())
    w = running_worker(core)
    core.handle(submit("j2", T0 + 1))
    core.handle(submit("j3", T0 + 1, priority="batch"))
    out = core.handle(ev.Shutdown(T0 + 2))
    assert error_codes(out) == {"j2": ErrorCode.UNAVAILABLE, "j3": ErrorCode.UNAVAILABLE}
    assert all(e.retriable and "stopping" in e.message for e in errors(out))
    assert core.job_info("j1").state == "running" and not len(core.queue)
    # nothing waits from now on: a new job, or a retry, ends at once
    assert error_codes(core.handle(submit("j4", T0 + 3))) == {"j4": ErrorCode.UNAVAILABLE}
    out = core.handle(status("j1", w, "abandoned", seq=2, now=T0 + 4, code=ErrorCode.POOL_LOST))
    assert error_codes(out) == {"j1": ErrorCode.UNAVAILABLE} and not executes(out)
