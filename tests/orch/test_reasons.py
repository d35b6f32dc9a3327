"""Why a job waits: one placement decision per waiting job, its reasons current on every pass,
told to observers (`Pending`) only when they change, and shown by `llorch job`/`llorch state`."""

from llorch_orch.core import Core, ModelConfig, OrchConfig, Pending
from llorch_orch.table import job_table, state_table
from schemas import ClusterState, Leadership
from schemas.codes import ErrorCode

from .factory import (
    T0,
    GiB,
    MiB,
    errors,
    gpu,
    heartbeat,
    make_core,
    model,
    of,
    ready,
    status,
    submit,
    tick,
    winfo,
)
from .test_eviction import pressure_core


def reasons(core: Core, job_id: str) -> list[str]:
    info = core.job_info(job_id)
    assert info is not None and info.state == "queued", info
    return info.reasons


def test_a_job_waits_for_the_worker_started_for_it_to_load() -> None:
    core = make_core()
    out = core.handle(submit("j1"))
    assert of(Pending, out) == [Pending("j1", ("starting a worker of m on p1/0",))]
    out = core.handle(tick(T0 + 1))
    assert of(Pending, out) == [Pending("j1", ("waiting for w-0-1 to load on p1/0",))]
    assert reasons(core, "j1") == ["waiting for w-0-1 to load on p1/0"]
    assert of(Pending, core.handle(tick(T0 + 2))) == []  # unchanged: not told again


def test_a_job_behind_busy_workers_says_how_many_of_the_maximum() -> None:
    core = make_core(default_model=ModelConfig(max_workers=1, slots=1))
    core.handle(submit("j1"))
    core.handle(submit("j2"))
    assert reasons(core, "j2") == ["1/1 workers of m, loading for earlier jobs"]
    core.handle(ready("w-0-1", slots=2))  # j1 and j2 run on its two slots
    assert core.job_info("j2").state == "running"  # type: ignore[union-attr]
    core.handle(submit("j3"))
    assert reasons(core, "j3") == ["1/1 workers of m, 2/2 slots busy"]
    out = core.handle(status("j1", "w-0-1", "finished", seq=3))
    assert core.job_info("j3").state == "running"  # type: ignore[union-attr]
    assert of(Pending, out) == []  # dispatched: nothing to wait for


def test_a_device_without_room_says_what_is_needed_and_free() -> None:
    core = Core(OrchConfig())
    core.handle(heartbeat(devices=[gpu(0, total=8 * GiB, free=100 * MiB)]))
    core.handle(submit("j1"))
    # 100 MiB file + 64 MiB KV (1 KiB x 2048 tokens x 32 slots: a GPU's default) + 768 MiB
    # GPU overhead
    assert reasons(core, "j1") == ["device p1/0: needs 932 MiB, 100 MiB free"]


def test_eviction_names_its_victims_then_the_job_waits_for_them() -> None:
    core, _ = pressure_core()
    core.handle(submit("jbig", T0 + 10, model_name="big"))
    assert reasons(core, "jbig") == ["evicting wa, wb on p1/0 to make room"]
    core.handle(tick(T0 + 11))
    assert reasons(core, "jbig") == ["waiting for wa, wb to stop on p1/0"]


def test_a_job_pinned_to_a_lost_pool_says_so() -> None:
    core = Core(OrchConfig(pool_lost_after=1))
    core.handle(heartbeat("p1"))
    core.handle(heartbeat("p2", devices=[gpu(0, total=2 * GiB, free=0)]))
    core.handle(submit("j1", pool="p2"))
    assert reasons(core, "j1") == ["device p2/0: needs 932 MiB, 0 MiB free"]
    core.handle(heartbeat("p1", now=T0 + 3))
    core.handle(tick(T0 + 3))  # p2 missed its heartbeat
    assert reasons(core, "j1") == ["pool p2 is lost"]


def test_a_job_pinned_off_the_free_slots_says_why_it_waits() -> None:
    core = make_core(default_model=ModelConfig(max_workers=1))
    core.handle(heartbeat(devices=[gpu(0), gpu(1)], workers=[winfo("w0", device=0)]))
    core.handle(submit("j1", device=1))
    assert reasons(core, "j1") == [
        "1/1 workers of m, 1/1 slots busy; the free slots are off its pinned pool/device"
    ]


def test_jobs_beyond_the_head_wait_for_those_ahead() -> None:
    core = make_core(queued_update_top=2, default_model=ModelConfig(max_workers=1, slots=1))
    for i in range(4):
        core.handle(submit(f"j{i}"))
    assert reasons(core, "j1") == ["1/1 workers of m, loading for earlier jobs"]
    assert reasons(core, "j3") == ["3 earlier jobs of m go first"]  # position 4 of the queue


def test_state_and_job_tables_show_the_reasons() -> None:
    core = make_core(default_model=ModelConfig(max_workers=1, slots=1))
    core.handle(submit("j1"))
    core.handle(submit("j2"))
    leader = Leadership(epoch=7, orchestrator="orch-a", since=1764355029.0)
    state = ClusterState(
        pools=[], queue=core.queued_infos(), running=core.running_infos(), leader=leader
    )
    assert state_table(state).splitlines()[0] == (
        "leader: orch-a (epoch 7) since 2025-11-28 18:37:09 UTC"
    )
    assert "WHY" in state_table(state).splitlines()[-3]
    assert "1/1 workers of m, loading for earlier jobs" in state_table(state)
    info = core.job_info("j2")
    assert info is not None
    table = job_table(info, T0 + 2.5).splitlines()
    assert "state      queued (position 2)" in table
    assert "why        1/1 workers of m, loading for earlier jobs" in table
    assert "submitted  2.5 s ago" in table


def test_a_job_no_device_can_ever_host_is_refused_with_the_reasons() -> None:
    core = Core(OrchConfig())
    core.handle(heartbeat("p1", models=[model("m")]))
    core.handle(heartbeat("p2", models=[model("other")]))
    (error,) = errors(core.handle(submit("j1", pool="p2")))
    assert (error.code, error.message) == (
        ErrorCode.NO_CAPACITY,
        "no device can host m: pool p2 has no file for m",
    )
