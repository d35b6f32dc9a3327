"""Checks before queueing, each with its own code; queue capacity and policies; deadlines;
`queued` position events."""

import pytest

from llorch_orch.core import Core, Emit, ModelConfig, OrchConfig
from llorch_orch.core.admission import NO_POOL_RETRY_MS
from llorch_orch.core.config import Limits
from llorch_orch.core.drain import NO_RATE_MS, DrainRate
from schemas import ChatMessage, Error, Queued
from schemas.codes import ErrorCode

from .factory import (
    T0,
    GiB,
    MiB,
    cancel,
    error_codes,
    errors,
    gpu,
    heartbeat,
    make_core,
    model,
    only_execute,
    only_spawn,
    queued,
    ready,
    spawns,
    status,
    submit,
    tick,
)


def one_error(out: list) -> Error:
    errs = errors(out)
    assert len(errs) == 1, out
    return errs[0]


def accepted(core: Core, out: list, job_id: str, position: int = 1) -> None:
    """`job_id` passed admission: no error, and it waits at `position` (told so)."""
    assert not errors(out), out
    assert [(q.job_id, q.position) for q in queued(out)] == [(job_id, position)]
    info = core.job_info(job_id)
    assert info is not None and info.state == "queued" and info.position == position


def test_unknown_model() -> None:
    core = make_core()
    err = one_error(core.handle(submit("j1", model_name="nope")))
    assert err.code == ErrorCode.MODEL_NOT_FOUND and not err.retriable
    assert err.job_id == "j1" and err.seq == 0
    assert err.message == "model 'nope' is not in the catalog (known: m)"
    assert core.job_info("j1") is None


def test_before_any_pool_reported_a_request_is_unavailable_and_retriable() -> None:
    core = Core(OrchConfig())
    err = one_error(core.handle(submit("j1")))
    assert err.code == ErrorCode.UNAVAILABLE and err.retriable
    assert err.retry_after_ms == NO_POOL_RETRY_MS and "no pool has reported" in err.message
    assert core.job_info("j1") is None
    core.handle(heartbeat())
    out = core.handle(submit("j2"))
    accepted(core, out, "j2")
    assert only_spawn(out).job_id == "j2"


def test_retired_model() -> None:
    core = make_core(models={"m": ModelConfig(retired=True)})
    err = one_error(core.handle(submit("j1")))
    assert err.code == ErrorCode.MODEL_NOT_FOUND and not err.retriable
    assert err.message == "model 'm' is retired"
    assert core.job_info("j1") is None


def test_model_only_a_lost_pool_holds_is_unavailable_and_retriable() -> None:
    core = make_core()
    core.handle(tick(T0 + 100))
    err = one_error(core.handle(submit("j1", T0 + 100)))
    assert err.code == ErrorCode.UNAVAILABLE and err.retriable
    assert err.retry_after_ms == NO_POOL_RETRY_MS
    assert err.message == "the pools that hold 'm' are lost: p1"
    assert one_error(core.handle(submit("j2", T0 + 100, model_name="x"))).code == (
        ErrorCode.MODEL_NOT_FOUND
    )


def test_prompt_too_large() -> None:
    core = make_core(limits=Limits(max_prompt_bytes=10))
    err = one_error(core.handle(submit("j1", prompt="x" * 11)))
    assert err.code == ErrorCode.PAYLOAD_TOO_LARGE and not err.retriable
    assert err.message == "prompt is 11 bytes, limit 10"
    # counted in UTF-8 bytes, not characters
    err = one_error(core.handle(submit("j2", prompt="é" * 6)))
    assert err.code == ErrorCode.PAYLOAD_TOO_LARGE and err.message == "prompt is 12 bytes, limit 10"
    accepted(core, core.handle(submit("j3", prompt="x" * 10)), "j3")


CHAT = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi")]


def test_chat_goes_to_the_worker_as_messages() -> None:
    core = make_core()
    out = core.handle(submit("j1", messages=CHAT))
    assert not errors(out)
    out = core.handle(ready(only_spawn(out).request.worker_id))
    execute = only_execute(out).execute
    assert execute.messages == CHAT and execute.prompt is None


def test_chat_to_a_model_without_a_template_is_refused() -> None:
    core = Core(OrchConfig())
    core.handle(heartbeat(models=[model(chat=False)]))
    err = one_error(core.handle(submit("j1", messages=CHAT)))
    assert err.code == ErrorCode.NO_CHAT_TEMPLATE and not err.retriable
    assert "raw `prompt`" in err.message
    accepted(core, core.handle(submit("j2", prompt="raw text works")), "j2")


def test_chat_content_counts_toward_the_prompt_limit() -> None:
    core = make_core(limits=Limits(max_prompt_bytes=10))
    long = [ChatMessage(role="system", content="x" * 6), ChatMessage(role="user", content="y" * 5)]
    err = one_error(core.handle(submit("j1", messages=long)))
    assert err.code == ErrorCode.PAYLOAD_TOO_LARGE
    assert err.message == "messages' content is 11 bytes, limit 10"
    accepted(core, core.handle(submit("j2", messages=long[1:])), "j2")


STOP_RULE = "stop: at most 8 non-empty strings of <= 64 chars"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"max_tokens": 5000}, "max_tokens 5000 > limit 4096"),
        ({"stop": ["a"] * 9}, STOP_RULE),
        ({"stop": [""]}, STOP_RULE),
        ({"stop": ["x" * 65]}, STOP_RULE),
    ],
)
def test_invalid_params(kw: dict, message: str) -> None:
    core = make_core()
    err = one_error(core.handle(submit("j1", **kw)))
    assert err.code == ErrorCode.INVALID_PARAMS and not err.retriable
    assert err.message == message and err.job_id == "j1"
    assert core.job_info("j1") is None


@pytest.mark.parametrize("kw", [{"max_tokens": 100}, {"stop": ["a"] * 8}, {"stop": ["x" * 64]}])
def test_params_at_their_limits_pass(kw: dict) -> None:
    core = make_core(limits=Limits(max_tokens=100))  # under the context, to isolate the limit
    accepted(core, core.handle(submit("j1", **kw)), "j1")


def test_context_overflow_uses_the_smaller_context() -> None:
    core = Core(OrchConfig(default_model=ModelConfig(n_ctx=4096)))
    core.handle(heartbeat(models=[model(n_ctx_train=1024)]))
    err = one_error(core.handle(submit("j1", max_tokens=1024)))
    assert err.code == ErrorCode.CONTEXT_OVERFLOW and not err.retriable
    assert err.message == "max_tokens 1024 leaves no room for the prompt in context 1024"
    accepted(core, core.handle(submit("j2", max_tokens=1023)), "j2")


@pytest.mark.parametrize(
    ("kw", "field"),
    [({"job_id": "a.b"}, "job_id"), ({"job_id": "*"}, "job_id"), ({"pool": "p>1"}, "pool")],
)
def test_bad_ids(kw: dict, field: str) -> None:
    core = make_core()
    job_id = kw.pop("job_id", "j1")
    err = one_error(core.handle(submit(job_id, **kw)))
    assert err.code == ErrorCode.INVALID_ID and not err.retriable
    assert err.message == f"{field} must match [A-Za-z0-9_-]{{1,64}}"
    assert core.job_info(job_id) is None


def test_duplicate_job_id_rejected() -> None:
    core = make_core()
    first = core.handle(submit("j1", prompt="first"))
    out = core.handle(submit("j1", prompt="second"))
    err = one_error(out)
    assert err.code == ErrorCode.INVALID_PARAMS and not err.retriable
    assert err.message == "job j1 already exists"
    assert not queued(out) and not spawns(out)
    # the first job is untouched: still waiting for the worker spawned for it, with its prompt
    assert core.job_info("j1").state == "queued" and core.job_info("j1").position == 1
    w = only_spawn(first).request.worker_id
    assert only_execute(core.handle(ready(w))).execute.prompt == "first"


def test_the_same_job_again_from_its_client_is_the_same_job() -> None:
    """A client resends its request after a change of leader (docs/protocol.md): a queued
    job says again where it waits, a running one streams on; neither is admitted twice."""
    core = make_core()
    first = core.handle(submit("j1", prompt="same"))
    again = core.handle(submit("j1", prompt="same"))
    assert not errors(again) and not spawns(again)
    assert [(q.job_id, q.position) for q in queued(again)] == [("j1", 1)]
    w = only_spawn(first).request.worker_id
    assert only_execute(core.handle(ready(w))).execute.job_id == "j1"
    assert core.handle(submit("j1", prompt="same")) == []  # running: nothing to say
    assert core.job_info("j1").attempts == 1


def test_job_id_assigned_when_absent() -> None:
    core = make_core()
    from llorch_orch.core.events import Submit

    from .factory import request

    out = core.handle(Submit(T0, request(), "_INBOX.x"))
    q = queued(out)
    assert len(q) == 1 and q[0].job_id.startswith("job-") and q[0].position == 1
    assert core.job_info(q[0].job_id).state == "queued"
    out = core.handle(Submit(T0, request(), "_INBOX.y"))
    assert len(queued(out)) == 1 and queued(out)[0].job_id not in {q[0].job_id, ""}


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"pool": "nowhere"}, "pinned pool nowhere is unknown"),
        ({"device": 5}, "pool p1 has no device 5"),
        ({"pool": "p1", "device": 1}, "pool p1 has no device 1"),
    ],
)
def test_pins_that_cannot_be_served(kw: dict, why: str) -> None:
    core = make_core()
    out = core.handle(submit("j1", **kw))
    err = one_error(out)
    assert err.code == ErrorCode.NO_CAPACITY and not err.retriable
    assert err.message == f"no device can host m: {why}"
    assert core.job_info("j1") is None and not spawns(out)


def test_model_larger_than_any_device() -> None:
    core = Core(OrchConfig())
    core.handle(heartbeat(devices=[gpu(0, total=1 * GiB)], models=[model(size=2 * GiB)]))
    out = core.handle(submit("j1"))
    err = one_error(out)
    assert err.code == ErrorCode.NO_CAPACITY and not err.retriable
    # 2 GiB file + 8 MiB KV (4 slots) + 768 MiB GPU overhead
    assert err.message == "no device can host m: device p1/0: needs 2824 MiB, has 1024 MiB in all"
    assert core.job_info("j1") is None and not spawns(out)


def test_model_larger_than_free_memory_waits() -> None:
    core = Core(OrchConfig())
    core.handle(heartbeat(devices=[gpu(0, total=8 * GiB, free=100 * MiB)]))
    out = core.handle(submit("j1"))
    accepted(core, out, "j1")
    assert not spawns(out)
    info = core.job_info("j1")
    assert info.worker_id is None
    # the default slots on a GPU: 32 (1 KiB x 2048 tokens x 32 = 64 MiB of KV)
    assert info.reasons == ["device p1/0: needs 932 MiB, 100 MiB free"]


def test_pinned_job_served_by_existing_worker_passes() -> None:
    core = make_core()
    w = only_spawn(core.handle(submit("j0", pool="p1", device=0))).request.worker_id
    out = core.handle(submit("j1", pool="p1", device=0))
    accepted(core, out, "j1", position=2)
    assert not spawns(out)  # max_workers=1: j1 waits for w, the worker already there
    core.handle(ready(w))
    out = core.handle(status("j0", w, "finished", seq=3))
    assert only_execute(out).worker_id == w and only_execute(out).execute.job_id == "j1"


# ---- capacity --------------------------------------------------------------------------
def full_core(policy: str = "reject", capacity: int = 3) -> Core:
    core = Core(OrchConfig(queue_capacity=capacity, queue_policy=policy))  # type: ignore[arg-type]
    # no memory anywhere: everything waits
    core.handle(heartbeat(devices=[gpu(0, free=0)]))
    return core


def test_reject_when_full() -> None:
    core = full_core()
    for i, prio in enumerate(["batch", "interactive", "batch"]):
        assert not errors(core.handle(submit(f"j{i}", priority=prio)))
    err = one_error(core.handle(submit("x", priority="interactive")))
    assert err.code == ErrorCode.QUEUE_FULL and err.retriable and err.job_id == "x"
    assert err.retry_after_ms == NO_RATE_MS  # nothing completed yet: no rate to go by
    assert err.message == "queue holds 3 jobs (capacity 3)"
    assert len(core.queue) == 3
    assert core.job_info("x") is None


def test_retry_after_follows_the_drain_rate() -> None:
    core = Core(OrchConfig(queue_capacity=1))
    core.handle(heartbeat())
    w = only_spawn(core.handle(submit("a"))).request.worker_id
    core.handle(ready(w))
    core.handle(status("a", w, "finished", now=T0))
    for i in range(1, 30):  # 30 completions in the last 30 s: 1 job/s
        job = f"r{i}"
        core.handle(submit(job, T0 + i))
        core.handle(status(job, w, "finished", now=T0 + i))
    core.handle(submit("busy", T0 + 30))  # runs on w
    core.handle(submit("waits", T0 + 30))
    err = one_error(core.handle(submit("x", T0 + 30)))
    assert err.code == ErrorCode.QUEUE_FULL
    assert err.retry_after_ms == 2000  # (1 waiting + 1) / 1 job/s


def test_retry_after_is_honest_right_after_a_burst_began() -> None:
    """A long-idle orchestrator, then a flood: 150 jobs done in 5 s (30/s) with 1000 waiting
    drain in ~33 s; the old estimate divided by the whole 60 s window and said 60 s (its cap)."""
    rate = DrainRate()
    for i in range(150):
        rate.completed(T0 + 1000 + i / 30)
    assert rate.retry_after_ms(T0 + 1005, waiting=1000) == pytest.approx(33_367, rel=0.01)
    assert rate.retry_after_ms(T0 + 1005, waiting=0) == 100  # never below the floor
    assert rate.retry_after_ms(T0 + 2000, waiting=10) == 5000  # nothing recent: no rate


def test_drop_oldest_batch() -> None:
    core = full_core("drop-oldest-batch")
    core.handle(submit("b1", priority="batch"))
    core.handle(submit("i1", priority="interactive"))
    core.handle(submit("b2", priority="batch"))
    out = core.handle(submit("new", priority="batch"))
    assert error_codes(out) == {"b1": ErrorCode.QUEUE_FULL}
    drop = next(c for c in out if isinstance(c, Emit) and isinstance(c.event, Error))
    assert drop.subject == "_INBOX.b1" and drop.event.message == "dropped for newer work"
    assert core.job_info("b1").state == "failed" and core.job_info("b1").code == "QUEUE_FULL"
    assert "new" in core.queue and len(core.queue) == 3


def test_drop_oldest_batch_rejects_when_only_interactive() -> None:
    core = full_core("drop-oldest-batch")
    for i in range(3):
        core.handle(submit(f"i{i}", priority="interactive"))
    err = one_error(core.handle(submit("x", priority="batch")))
    assert err.code == ErrorCode.QUEUE_FULL and err.job_id == "x"


# ---- deadlines -------------------------------------------------------------------------
def test_deadline_while_queued() -> None:
    core = full_core()
    core.handle(submit("j1", deadline_ms=1500))
    core.handle(submit("j2"))
    assert core.next_wake() == T0 + 1.5
    assert not errors(core.handle(tick(T0 + 1.4)))
    out = core.handle(tick(T0 + 1.5))
    assert error_codes(out) == {"j1": ErrorCode.DEADLINE_EXCEEDED}
    assert core.job_info("j1").code == ErrorCode.DEADLINE_EXCEEDED
    # j2 moved up: its position update follows
    assert [(q.job_id, q.position) for q in queued(out)] == [("j2", 1)]


def test_deadline_does_not_touch_a_running_job() -> None:
    core = make_core()
    w = only_spawn(core.handle(submit("j1", deadline_ms=1000))).request.worker_id
    core.handle(ready(w, T0 + 0.5))
    core.handle(status("j1", w, "started", now=T0 + 0.6))
    assert not errors(core.handle(tick(T0 + 2)))
    assert core.job_info("j1").state == "running"


# ---- queued events ---------------------------------------------------------------------
def test_queued_positions_update_when_they_change() -> None:
    core = full_core(capacity=10)
    positions = {}
    for j, prio in [("b1", "batch"), ("b2", "batch"), ("i1", "interactive")]:
        for q in queued(core.handle(submit(j, priority=prio))):
            positions[q.job_id] = q.position
    assert positions == {"b1": 2, "b2": 3, "i1": 1}
    out = cancel(core, T0, "i1")[1]
    assert sorted((q.job_id, q.position) for q in queued(out)) == [("b1", 1), ("b2", 2)]


def test_queued_seq_increases_per_job() -> None:
    core = full_core(capacity=10)
    out = core.handle(submit("a", priority="batch"))
    out += core.handle(submit("b", priority="interactive"))
    a_events = [c.event for c in out if isinstance(c, Emit) and c.job_id == "a"]
    assert [e.seq for e in a_events] == [0, 1]
    assert [e.position for e in a_events if isinstance(e, Queued)] == [1, 2]
    assert all(c.subject == f"_INBOX.{c.job_id}" for c in out if isinstance(c, Emit))


def test_queued_updates_only_near_the_head() -> None:
    core = Core(OrchConfig(queued_update_top=2))
    core.handle(heartbeat(devices=[gpu(0, free=0)]))
    for i in range(4):
        core.handle(submit(f"j{i}"))
    out = cancel(core, T0, "j0")[1]
    assert sorted(q.job_id for q in queued(out)) == ["j1", "j2"]  # j3 (now 3rd) not told
    assert core.job_info("j3").position == 4  # last reported
