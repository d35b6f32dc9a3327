"""Placement: idle workers (LRU, ties by id), spawn decisions, memory budgets, strategies, pins."""

from llorch_orch.core import Core, ModelConfig, OrchConfig
from llorch_orch.core.placement import Slot, best_slot

from .factory import (
    T0,
    GiB,
    MiB,
    cpu,
    errors,
    executes,
    gpu,
    heartbeat,
    make_core,
    model,
    only_execute,
    only_spawn,
    ready,
    spawns,
    status,
    submit,
    winfo,
)

EST = 100 * MiB + 1024 * 2048 * 4 + 768 * MiB  # size + kv * n_ctx * slots + gpu overhead


def core_with(devices: list, models: list | None = None, **cfg: object) -> Core:
    core = Core(OrchConfig(**cfg))  # type: ignore[arg-type]
    core.handle(heartbeat(devices=devices, models=models))
    return core


def test_estimate_from_gguf_then_measured() -> None:
    core = make_core()
    assert core.view.estimate("m", "gpu", 4) == EST
    assert core.view.estimate("m", "cpu", 4) == 100 * MiB + 1024 * 2048 * 4 + 160 * MiB
    spawn = only_spawn(core.handle(submit("j1")))
    assert core.view.workers[spawn.request.worker_id].est_bytes == EST
    assert spawn.request.n_ctx == 2048 and spawn.request.model == "m"
    core.handle(ready(spawn.request.worker_id, memory=500 * MiB, slots=4))  # as asked
    assert core.view.estimate("m", "gpu", 4) == 500 * MiB
    assert core.view.estimate("m", "cpu", 4) != 500 * MiB  # learned per device kind


def test_cpu_only_host() -> None:
    core = core_with([cpu()])
    spawn = only_spawn(core.handle(submit("j1")))
    assert spawn.request.device == 0


def test_idle_worker_used_directly() -> None:
    core = make_core(default_model=ModelConfig(max_workers=1))
    w = only_spawn(core.handle(submit("j1"))).request.worker_id
    core.handle(ready(w))
    core.handle(status("j1", w, "finished", seq=3))
    out = core.handle(submit("j2", T0 + 1))
    assert only_execute(out).worker_id == w and not spawns(out)
    assert only_execute(out).execute.seq == 0  # no `queued` event: started is the first


def test_least_recently_used_idle_first_ties_by_id() -> None:
    core = make_core(default_model=ModelConfig(max_workers=3))
    hb_workers = [winfo("wb"), winfo("wa"), winfo("wc")]
    core.handle(heartbeat(workers=hb_workers))  # adopted at the same time: ties by id
    assert only_execute(core.handle(submit("j1", T0 + 1))).worker_id == "wa"
    assert only_execute(core.handle(submit("j2", T0 + 1))).worker_id == "wb"
    core.handle(status("j1", "wa", "finished", now=T0 + 2))
    core.handle(status("j2", "wb", "finished", now=T0 + 3))
    # wc was used longest ago (never), then wa (T0+2), then wb (T0+3)
    assert only_execute(core.handle(submit("j3", T0 + 4))).worker_id == "wc"
    assert only_execute(core.handle(submit("j4", T0 + 4))).worker_id == "wa"


def test_spawns_up_to_max_workers_including_starting() -> None:
    core = make_core(default_model=ModelConfig(max_workers=2, slots=1))
    assert len(spawns(core.handle(submit("j1")))) == 1
    assert len(spawns(core.handle(submit("j2")))) == 1
    assert len(spawns(core.handle(submit("j3")))) == 0
    info = core.job_info("j3")
    assert info.state == "queued"


def test_no_spawn_while_starting_workers_cover_the_queue() -> None:
    core = make_core(default_model=ModelConfig(max_workers=4, slots=1))
    core.handle(submit("j1"))
    assert len(core.view.workers) == 1
    core.handle(submit("j2"))
    assert len(core.view.workers) == 2


def test_memory_budget_counts_unloaded_starters_against_nvml_free() -> None:
    # NVML says plenty is free, but a starting worker has not allocated yet
    # a loading worker is claimed by as many waiting jobs as it has slots: 4 jobs per spawn
    model_cfg = ModelConfig(max_workers=10, slots=4)
    core = core_with([gpu(0, total=8 * GiB)], default_model=model_cfg, queued_update_top=64)
    n = 0
    for i in range(40):
        n += len(spawns(core.handle(submit(f"j{i}"))))
    assert n == (8 * GiB) // EST == 9  # memory, not max_workers, stops it
    reserved = sum(w.reserved for w in core.view.workers.values())
    assert reserved <= 8 * GiB


def test_memory_budget_counts_reservations_against_total() -> None:
    # NVML free is stale-high (the loaded worker's memory not yet visible), total caps it
    core = core_with([gpu(0, total=2 * GiB)], default_model=ModelConfig(max_workers=5))
    w = only_spawn(core.handle(submit("j1"))).request.worker_id
    core.handle(ready(w, memory=1536 * MiB))  # measured: now the estimate for m
    out = core.handle(submit("j2"))
    assert not spawns(out)  # 2 GiB total - 1.5 GiB reserved < 1.5 GiB


def test_best_fit_picks_tightest_device() -> None:
    core = core_with([gpu(0, total=40 * GiB), gpu(1, total=2 * GiB), gpu(2, total=8 * GiB)])
    assert only_spawn(core.handle(submit("j1"))).request.device == 1


def test_spread_picks_emptiest_device() -> None:
    core = core_with(
        [gpu(0, total=40 * GiB), gpu(1, total=2 * GiB), gpu(2, total=8 * GiB)], placement="spread"
    )
    assert only_spawn(core.handle(submit("j1"))).request.device == 0


def test_device_without_room_is_skipped_with_a_reason() -> None:
    core = core_with([gpu(0, total=8 * GiB, free=0), gpu(1, total=8 * GiB)])
    assert only_spawn(core.handle(submit("j1"))).request.device == 1


def test_best_slot_ties_are_deterministic() -> None:
    a = Slot("p2", 0, "gpu", 4, 10, 20)
    b = Slot("p1", 1, "gpu", 4, 10, 20)
    c = Slot("p1", 0, "gpu", 4, 10, 20)
    assert best_slot([a, b, c], "best-fit")[0] == c
    slot, reasons = best_slot([Slot("p1", 0, "gpu", 4, 30, 20)], "best-fit")
    assert slot is None and reasons == ["device p1/0: needs 0 MiB, 0 MiB free"]


def test_pool_pin_honoured_without_fallback() -> None:
    core = Core(OrchConfig())
    core.handle(heartbeat("p1", devices=[gpu(0, total=80 * GiB)]))
    core.handle(heartbeat("p2", devices=[gpu(0, total=2 * GiB, free=0)]))
    out = core.handle(submit("j1", pool="p2"))
    assert not spawns(out) and not errors(out)  # waits for p2 rather than using p1
    assert core.job_info("j1").reasons == ["device p2/0: needs 932 MiB, 0 MiB free"]
    out = core.handle(heartbeat("p2", devices=[gpu(0, total=2 * GiB)]))
    assert only_spawn(out).pool_id == "p2"


def test_device_pin_honoured() -> None:
    core = core_with([gpu(0, total=2 * GiB), gpu(1, total=40 * GiB)])
    spawn = only_spawn(core.handle(submit("j1", device=1)))
    assert spawn.request.device == 1


def test_pinned_job_not_given_to_a_worker_elsewhere() -> None:
    core = core_with([gpu(0), gpu(1)], default_model=ModelConfig(max_workers=2))
    core.handle(heartbeat(devices=[gpu(0), gpu(1)], workers=[winfo("w0", device=0)]))
    out = core.handle(submit("j1", device=1))
    assert not executes(out)
    assert only_spawn(out).request.device == 1


def test_pinned_job_behind_unpinned_head_is_matched() -> None:
    core = core_with([gpu(0), gpu(1)], default_model=ModelConfig(max_workers=2))
    core.handle(submit("j1", device=0))
    core.handle(submit("j2", device=1))
    w1 = [w for w in core.view.workers.values() if w.device == 1]
    assert len(w1) == 1, "each pin got its own worker"
    out = core.handle(ready(w1[0].worker_id, device=1))
    assert only_execute(out).execute.job_id == "j2"


def test_interactive_dispatched_before_batch_fifo() -> None:
    core = make_core()
    w = only_spawn(core.handle(submit("b1", priority="batch"))).request.worker_id
    core.handle(submit("b2", priority="batch"))
    core.handle(submit("i1", priority="interactive"))
    core.handle(submit("i2", priority="interactive"))
    order = [only_execute(core.handle(ready(w))).execute.job_id]
    for n in range(3):
        out = core.handle(status(order[-1], w, "finished", now=T0 + n))
        order.append(only_execute(out).execute.job_id)
    assert order == ["i1", "i2", "b1", "b2"]


def test_execute_carries_the_request() -> None:
    core = make_core()
    w = only_spawn(
        core.handle(submit("j1", temperature=0.0, seed=7, stop=["\n"], top_k=3, top_p=0.5))
    ).request.worker_id
    ex = only_execute(core.handle(ready(w)))
    e = ex.execute
    assert (e.job_id, e.seed, e.stop, e.top_k, e.top_p, e.temperature) == (
        "j1", 7, ["\n"], 3, 0.5, 0.0,
    )  # fmt: skip
    assert e.stream == "_INBOX.j1" and e.seq == 1 and e.resume_after == -1 and ex.attempt == 1


def test_seed_picked_when_absent_and_stable() -> None:
    a, b = make_core(), make_core()
    for core in (a, b):
        w = only_spawn(core.handle(submit("j1"))).request.worker_id
        core.handle(ready(w))
    assert a.jobs["j1"].seed == b.jobs["j1"].seed


def test_other_models_do_not_block() -> None:
    core = Core(OrchConfig())
    core.handle(heartbeat(models=[model("a"), model("b")]))
    sa = only_spawn(core.handle(submit("ja", model_name="a")))
    sb = only_spawn(core.handle(submit("jb", model_name="b")))
    assert sa.request.model == "a" and sb.request.model == "b"


def test_heartbeats_raise_the_learned_footprint_as_workers_grow() -> None:
    core = make_core()
    w = only_spawn(core.handle(submit("j1"))).request.worker_id
    core.handle(ready(w, memory=500 * MiB, slots=4))
    core.handle(heartbeat(now=T0 + 1, workers=[winfo(w, memory=600 * MiB, slots=4)]))
    assert core.view.workers[w].memory_bytes == 600 * MiB
    assert core.view.estimate("m", "gpu", 4) == 600 * MiB
    core.handle(heartbeat(now=T0 + 2, workers=[winfo(w, memory=550 * MiB, slots=4)]))
    assert core.view.estimate("m", "gpu", 4) == 600 * MiB  # the largest seen stays the budget


def test_adopted_workers_teach_their_footprint() -> None:
    core = make_core()
    core.handle(heartbeat(now=T0 + 1, workers=[winfo("stranger", memory=700 * MiB, slots=4)]))
    assert core.view.workers["stranger"].memory_bytes == 700 * MiB
    assert core.view.estimate("m", "gpu", 4) == 700 * MiB
