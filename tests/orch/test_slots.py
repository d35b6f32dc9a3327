"""Capacity in slots: a worker runs up to `slots` jobs at once; the orchestrator fills the
slots of its workers before it starts another replica, and a retry carries the text hash."""

from llorch_orch.core import Core, ModelConfig, OrchConfig

from .factory import (
    T0,
    MiB,
    cpu,
    executes,
    gpu,
    heartbeat,
    make_core,
    only_execute,
    only_spawn,
    ready,
    refused,
    spawns,
    status,
    submit,
    tick,
    winfo,
)


def test_a_worker_takes_as_many_jobs_as_it_has_slots_before_another_starts() -> None:
    core = make_core(default_model=ModelConfig(max_workers=2, slots=3))
    spawn = only_spawn(core.handle(submit("j1")))
    assert spawn.request.slots == 3
    w1 = spawn.request.worker_id
    core.handle(ready(w1, slots=3))
    for job in ("j2", "j3"):  # the free slots of w1, no new worker
        out = core.handle(submit(job))
        assert not spawns(out) and only_execute(out).worker_id == w1
    assert core.view.workers[w1].jobs == {"j1", "j2", "j3"}
    w2 = only_spawn(core.handle(submit("j4"))).request.worker_id  # w1 full: a replica
    assert w2 != w1 and core.job_info("j4").state == "queued"  # type: ignore[union-attr]


def test_the_worker_with_the_most_free_slots_takes_the_job() -> None:
    core = make_core(default_model=ModelConfig(max_workers=2, slots=2))
    core.handle(heartbeat(workers=[winfo("wa", slots=4, slots_busy=1), winfo("wb", slots=4)]))
    assert only_execute(core.handle(submit("j1"))).worker_id == "wb"  # 4 free against 3
    assert only_execute(core.handle(submit("j2"))).worker_id == "wa"  # 3 free against 3: LRU


def test_an_adopted_worker_brings_its_busy_slots() -> None:
    core = make_core(default_model=ModelConfig(max_workers=1))
    core.handle(heartbeat(workers=[winfo("wa", slots=2, slots_busy=2)]))
    out = core.handle(submit("j1"))
    assert not executes(out) and not spawns(out)
    assert core.job_info("j1").reasons == ["1/1 workers of m, 2/2 slots busy"]  # type: ignore[union-attr]
    out = core.handle(heartbeat(now=T0 + 1, workers=[winfo("wa", slots=2, slots_busy=1)]))
    assert only_execute(out).worker_id == "wa"


def test_a_busy_refusal_marks_a_slot_taken_until_the_pool_says_otherwise() -> None:
    core = make_core(default_model=ModelConfig(max_workers=1))
    core.handle(heartbeat(workers=[winfo("wa", slots=2)]))
    core.handle(submit("j1"))
    core.handle(submit("j2"))
    out = core.handle(refused("j2", "wa"))  # a job we do not know holds that slot
    assert not executes(out)
    assert core.view.workers["wa"].foreign == 1 and core.view.workers["wa"].jobs == {"j1"}
    out = core.handle(heartbeat(now=T0 + 1, workers=[winfo("wa", slots=2, slots_busy=1)]))
    assert only_execute(out).execute.job_id == "j2"  # only j1 is busy there: j2 goes again


def test_a_lost_worker_retries_every_job_it_ran_with_the_hash_of_what_was_sent() -> None:
    core = make_core(default_model=ModelConfig(max_workers=2))
    core.handle(heartbeat(devices=[gpu(0), gpu(1)], workers=[winfo("wa", slots=2)]))
    core.handle(submit("j1"))
    core.handle(submit("j2"))
    core.handle(status("j1", "wa", "progress", seq=4, hash="aa11"))
    out = core.handle(heartbeat(now=T0 + 1, devices=[gpu(0), gpu(1)], workers=[]))  # wa gone
    assert {c.execute.job_id for c in executes(out)} == set()  # waiting for a new worker
    w = only_spawn(out).request.worker_id
    out = core.handle(ready(w, T0 + 2, device=1, slots=2))
    retried = {c.execute.job_id: c.execute for c in executes(out)}
    assert set(retried) == {"j1", "j2"}
    assert (retried["j1"].resume_after, retried["j1"].resume_hash) == (4, "aa11")
    assert (retried["j2"].resume_after, retried["j2"].resume_hash) == (-1, None)


def test_by_default_a_model_gets_one_worker_per_device_that_holds_it() -> None:
    core = make_core()  # slots 4, max_workers 0: one per device
    core.handle(heartbeat(devices=[gpu(0), gpu(1)]))
    first = only_spawn(core.handle(submit("j1")))
    assert first.request.slots == 4
    for job in ("j2", "j3", "j4"):  # they wait for the first worker's other slots
        assert not spawns(core.handle(submit(job)))
    assert core.job_info("j4").reasons == [  # type: ignore[union-attr]
        f"waiting for {first.request.worker_id} to load on p1/0"
    ]
    second = only_spawn(core.handle(submit("j5")))  # a replica, on the other device
    assert (first.request.device, second.request.device) == (0, 1)
    for job in ("j6", "j7", "j8", "j9"):
        assert not spawns(core.handle(submit(job)))
    assert not spawns(core.handle(tick(T0 + 1)))  # one per device: two
    assert core.job_info("j9").reasons == [  # type: ignore[union-attr]
        "2/2 workers of m, loading for earlier jobs"
    ]


def test_slots_follow_the_device_unless_configured() -> None:
    """`slots = 0` (the default): the most whose worker fits the device, of 32/16/8/4 on a GPU
    (100 MiB file + 2 MiB of KV a slot + 768 MiB overhead: 32 slots need 932 MiB, 8 need 884)
    and of 8/4 on a CPU (160 MiB overhead: 8 need 276 MiB); a configured number wherever the
    worker goes."""
    cases = [
        (OrchConfig(), gpu(0), 32),
        (OrchConfig(), gpu(0, total=890 * MiB), 8),
        (OrchConfig(), cpu(), 8),
        (OrchConfig(), cpu(total=270 * MiB), 4),
        (OrchConfig(default_model=ModelConfig(slots=2)), gpu(0), 2),
    ]
    for cfg, device, slots in cases:
        core = Core(cfg)
        core.handle(heartbeat(devices=[device]))
        spawn = only_spawn(core.handle(submit("j1")))
        assert spawn.request.slots == slots, (device, cfg)
        est = 100 * MiB + 1024 * 2048 * slots + (768 if device.kind == "gpu" else 160) * MiB
        assert core.view.workers[spawn.request.worker_id].est_bytes == est
