"""Cancel: queued, running, idempotent, finished, unknown; the one-terminal-event rule."""

from schemas import CancelReply, Error
from schemas.codes import ErrorCode

from .factory import (
    T0,
    cancel,
    cancels,
    error_codes,
    errors,
    gpu,
    heartbeat,
    make_core,
    only_execute,
    only_spawn,
    queued,
    ready,
    refused,
    running_worker,
    status,
    submit,
    tick,
)


def test_cancel_queued_job() -> None:
    core = make_core()
    core.handle(submit("j1"))
    reply, out = cancel(core, T0, "j1")
    assert reply == CancelReply(job_id="j1", outcome="cancelled")
    assert error_codes(out) == {"j1": ErrorCode.CANCELLED}
    (err,) = errors(out)
    assert err.seq == 1 and not err.retriable  # after `queued` (seq 0)
    assert "j1" not in core.queue and core.job_info("j1").state == "cancelled"


def test_cancel_queued_is_idempotent() -> None:
    core = make_core()
    core.handle(submit("j1"))
    cancel(core, T0, "j1")
    reply, out = cancel(core, T0, "j1")
    assert reply == CancelReply(job_id="j1", outcome="already_finished")
    assert out == []


def test_cancel_running_job_asks_the_worker() -> None:
    core = make_core()
    w = running_worker(core)
    reply, out = cancel(core, T0, "j1")
    assert reply.outcome == "cancelled"
    assert [(c.worker_id, c.job_id) for c in cancels(out)] == [(w, "j1")]
    assert not errors(out)  # the worker sends the terminal event
    reply, out = cancel(core, T0, "j1")
    assert reply.outcome == "cancelled" and out == []  # asked once
    out = core.handle(status("j1", w, "failed", seq=4, code=ErrorCode.CANCELLED))
    assert not errors(out)
    assert core.job_info("j1").state == "cancelled"
    assert cancel(core, T0, "j1")[0].outcome == "already_finished"


def test_cancel_finished_job() -> None:
    core = make_core()
    w = running_worker(core)
    core.handle(status("j1", w, "finished", seq=9))
    reply, out = cancel(core, T0, "j1")
    assert reply == CancelReply(job_id="j1", outcome="already_finished") and out == []


def test_cancel_unknown_job() -> None:
    core = make_core()
    reply, out = cancel(core, T0, "nope")
    assert isinstance(reply, Error) and reply.code == ErrorCode.NOT_FOUND and out == []


def test_cancelled_job_whose_worker_dies_gets_cancelled_not_retried() -> None:
    core = make_core()
    w = running_worker(core)
    cancel(core, T0, "j1")
    out = core.handle(heartbeat(now=T0 + 1, workers=[]))  # the worker vanished
    assert error_codes(out) == {"j1": ErrorCode.CANCELLED}
    assert w not in core.view.workers


def test_cancel_then_busy_refusal_does_not_resurrect_the_job() -> None:
    core = make_core()
    core.handle(heartbeat(workers=[]))
    from .factory import winfo

    core.handle(heartbeat(now=T0 + 1, workers=[winfo("wx", "busy")]))  # adopted
    out = core.handle(submit("j1", T0 + 1))
    assert only_execute(out).worker_id == "wx"
    cancel(core, T0 + 1, "j1")
    out = core.handle(refused("j1", "wx", T0 + 1, ErrorCode.WORKER_BUSY))
    assert error_codes(out) == {"j1": ErrorCode.CANCELLED}
    assert "j1" not in core.queue and core.job_info("j1").state == "cancelled"


def test_cancel_frees_the_slot_for_the_next_job() -> None:
    core = make_core()
    core.handle(heartbeat(devices=[gpu(0, free=0)]))
    core.handle(submit("a"))
    core.handle(submit("b"))
    _, out = cancel(core, T0, "a")
    assert [(q.job_id, q.position) for q in queued(out)] == [("b", 1)]


def test_cancel_in_flight_dispatch_and_then_worker_finishes() -> None:
    core = make_core()
    w = only_spawn(core.handle(submit("j1"))).request.worker_id
    core.handle(ready(w))
    _, out = cancel(core, T0, "j1")  # execute sent, not yet acked
    assert [(c.worker_id, c.job_id) for c in cancels(out)] == [(w, "j1")]
    out = core.handle(status("j1", w, "finished", seq=3))
    assert not errors(out) and core.job_info("j1").state == "finished"
    assert not errors(core.handle(tick(T0 + 100)))
