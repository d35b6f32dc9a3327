"""Keep-alive stops and memory-pressure eviction: LRU idle victims, never busy, never twice."""

from llorch_orch.core import Core, ModelConfig, OrchConfig

from .factory import (
    T0,
    GiB,
    MiB,
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
    stops,
    submit,
    tick,
    winfo,
)


def test_idle_worker_stopped_after_keep_alive() -> None:
    core = make_core(default_model=ModelConfig(keep_alive_s=10), pool_lost_after=1000)
    w = only_spawn(core.handle(submit("j1"))).request.worker_id
    core.handle(ready(w))
    core.handle(status("j1", w, "finished", now=T0 + 5))
    assert core.next_wake() == T0 + 15
    assert not stops(core.handle(tick(T0 + 14.9)))
    out = core.handle(tick(T0 + 15))
    (stop,) = stops(out)
    assert stop.request.worker_id == w and stop.request.drain and stop.reason == "keep-alive"
    assert core.view.workers[w].phase == "draining"
    assert not stops(core.handle(tick(T0 + 30)))  # asked once
    # a draining worker takes no job: it waits (for a new worker)
    out = core.handle(submit("j2", T0 + 31))
    assert not executes(out) and core.job_info("j2").state == "queued"
    assert core.view.workers[w].phase == "draining" and not core.view.workers[w].jobs


def test_keep_alive_zero_means_never() -> None:
    core = make_core(default_model=ModelConfig(keep_alive_s=0))
    w = only_spawn(core.handle(submit("j1"))).request.worker_id
    core.handle(ready(w))
    core.handle(status("j1", w, "finished"))
    assert not stops(core.handle(tick(T0 + 1e6)))


def test_keep_alive_is_per_model() -> None:
    core = Core(
        OrchConfig(models={"a": ModelConfig(keep_alive_s=5), "b": ModelConfig(keep_alive_s=50)})
    )
    core.handle(heartbeat(models=[model("a"), model("b")]))
    core.handle(heartbeat(models=[model("a"), model("b")], workers=[
        winfo("wa", model_name="a"), winfo("wb", model_name="b"),
    ]))  # fmt: skip
    core.handle(tick(T0 + 1))  # keep the pool alive
    core.handle(heartbeat(now=T0 + 5, models=[model("a"), model("b")], workers=[
        winfo("wa", model_name="a"), winfo("wb", model_name="b"),
    ]))  # fmt: skip
    out = core.handle(tick(T0 + 6))
    assert [s.request.worker_id for s in stops(out)] == ["wa"]


def test_busy_worker_never_stopped_by_keep_alive() -> None:
    core = make_core(default_model=ModelConfig(keep_alive_s=1), stall_timeout_s=1000)
    w = only_spawn(core.handle(submit("j1"))).request.worker_id
    core.handle(ready(w))
    for t in range(1, 20):
        core.handle(heartbeat(now=T0 + t, workers=[winfo(w, "busy")]))
        core.handle(status("j1", w, "progress", seq=t, now=T0 + t))
        assert not stops(core.handle(tick(T0 + t)))


def pressure_core() -> tuple[Core, list[str]]:
    """One 4 GiB GPU holding three idle 1 GiB workers of a, b, c (LRU order a, b, c)."""
    models = [
        model("a"),
        model("b"),
        model("c"),
        model("big", size=2 * GiB),
        model("mid", 512 * MiB),
    ]
    core = Core(OrchConfig(default_model=ModelConfig(keep_alive_s=0), pool_lost_after=1000))
    workers = [winfo(f"w{n}", model_name=n, memory=1 * GiB) for n in "abc"]
    core.handle(heartbeat(devices=[gpu(0, total=4 * GiB, free=1 * GiB)], models=models,
                          workers=workers))  # fmt: skip
    for i, n in enumerate("abc"):  # use them in order: a least recently
        core.handle(submit(f"j{n}", T0 + i, model_name=n))
        core.handle(status(f"j{n}", f"w{n}", "finished", now=T0 + i))
    return core, ["wa", "wb", "wc"]


def test_eviction_stops_least_recently_used_idle() -> None:
    core, _ = pressure_core()
    # big needs 2 GiB + 8 MiB kv + 768 MiB: 1 GiB available, so two victims
    out = core.handle(submit("jbig", T0 + 10, model_name="big"))
    assert not spawns(out)
    assert [(s.request.worker_id, s.reason) for s in stops(out)] == [
        ("wa", "evict"),
        ("wb", "evict"),
    ]
    assert all(s.request.drain for s in stops(out))


def test_eviction_is_not_repeated_while_victims_drain() -> None:
    core, _ = pressure_core()
    core.handle(submit("jbig", T0 + 10, model_name="big"))
    for t in range(11, 15):
        out = core.handle(tick(T0 + t))
        out += core.handle(submit(f"more{t}", T0 + t, model_name="big"))
        assert not stops(out), "wc must survive: wa and wb already free enough"
    # victims leave the pool's view: now the big worker starts
    models = [model("a"), model("b"), model("c"), model("big", size=2 * GiB)]
    out = core.handle(heartbeat(now=T0 + 15, devices=[gpu(0, total=4 * GiB, free=3 * GiB)],
                                models=models, workers=[winfo("wc", model_name="c",
                                memory=1 * GiB)]))  # fmt: skip
    assert only_spawn(out).request.model == "big"


def test_busy_worker_never_evicted() -> None:
    core, _ = pressure_core()
    core.handle(submit("ja2", T0 + 5, model_name="a"))  # wa busy
    core.handle(submit("jb2", T0 + 5, model_name="b"))  # wb busy
    out = core.handle(submit("jbig", T0 + 10, model_name="big"))
    assert not stops(out)  # wc alone frees too little; busy ones are untouchable
    assert core.job_info("jbig").state == "queued"


def test_evicted_worker_takes_no_job() -> None:
    core, _ = pressure_core()
    core.handle(submit("jbig", T0 + 10, model_name="big"))
    assert core.view.workers["wa"].phase == "draining"
    out = core.handle(submit("ja2", T0 + 11, model_name="a"))
    assert not executes(out) and core.job_info("ja2").state == "queued"
    assert core.view.workers["wa"].phase == "draining"


def test_measured_footprint_may_exceed_total() -> None:
    """Learned measurements may grow reservations over the total; placement then waits."""
    core = make_core()
    w = only_spawn(core.handle(submit("j1"))).request.worker_id
    core.handle(ready(w, memory=9 * 1024 * MiB))
    assert core.view.available("p1", 0) == 0
    core.handle(status("j1", w, "finished"))
    assert only_execute(core.handle(submit("j2", T0 + 1))).worker_id == w


def test_one_victim_is_enough_and_later_events_do_not_add_more() -> None:
    core, _ = pressure_core()
    # mid needs 512 + 2 + 768 MiB: 1 GiB available, one victim (wa) frees enough
    out = core.handle(submit("jmid", T0 + 10, model_name="mid"))
    assert [s.request.worker_id for s in stops(out)] == ["wa"]
    for t in range(11, 15):  # until the pool reports wa gone, nothing else may be stopped
        assert not stops(core.handle(tick(T0 + t)))
        assert not stops(core.handle(submit(f"more{t}", T0 + t, model_name="mid")))
