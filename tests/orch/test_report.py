"""api.state / api.models replies and job queries built from the core."""

from llorch_orch.core import ModelConfig
from llorch_orch.core.report import cluster_state, models
from schemas import decoder, encode
from schemas.state import ClusterState, ModelsReply

from .factory import (
    T0,
    MiB,
    cancel,
    gpu,
    heartbeat,
    make_core,
    model,
    only_spawn,
    ready,
    status,
    submit,
    winfo,
)


def test_cluster_state_round_trips() -> None:
    core = make_core(default_model=ModelConfig(max_workers=1))
    core.handle(heartbeat(devices=[gpu(1), gpu(0)], workers=[winfo("wa")]))
    core.handle(submit("j1"))  # runs on wa
    core.handle(submit("j2", priority="batch"))
    core.handle(submit("j3"))
    state = cluster_state(core, T0 + 1.5)
    assert decoder(ClusterState)(encode(state)) == state
    (pool,) = state.pools
    assert pool.pool_id == "p1" and pool.alive and pool.last_seen_ms_ago == 1500.0
    assert [d.index for d in pool.devices] == [0, 1]
    assert (pool.workers[0].worker_id, pool.workers[0].state) == ("wa", "busy")
    assert [(j.job_id, j.position) for j in state.queue] == [("j3", 1), ("j2", 2)]
    assert [(j.job_id, j.state, j.worker_id) for j in state.running] == [("j1", "running", "wa")]


def test_models_reply_learns_measurements() -> None:
    core = make_core()
    core.handle(heartbeat("p2", models=[model(), model("z")]))
    reply = models(core)
    assert decoder(ModelsReply)(encode(reply)) == reply
    entries = {e.model.name: e for e in reply.models}
    assert entries["m"].pools == ["p1", "p2"] and not entries["m"].measured
    assert entries["z"].pools == ["p2"]
    w = only_spawn(core.handle(submit("j1"))).request.worker_id
    core.handle(ready(w, pool="p1", memory=123 * MiB, slots=4))  # the slots it was asked for
    entries = {e.model.name: e for e in models(core).models}
    assert entries["m"].measured and entries["m"].est_bytes == 123 * MiB


def test_job_info_through_its_life() -> None:
    core = make_core()
    w = only_spawn(core.handle(submit("j1"))).request.worker_id
    info = core.job_info("j1")
    assert (info.state, info.position, info.worker_id) == ("queued", 1, None)
    core.handle(ready(w))
    assert core.job_info("j1").state == "running" and core.job_info("j1").worker_id == w
    core.handle(status("j1", w, "failed", seq=3, code="INTERNAL"))
    info = core.job_info("j1")
    assert (info.state, info.code) == ("failed", "INTERNAL")
    assert core.job_info("nope") is None


def test_finished_memory_is_bounded() -> None:
    core = make_core(finished_memory=2)
    for j in ("a", "b", "c"):
        core.handle(submit(j))
        cancel(core, T0, j)
    assert core.job_info("a") is None
    assert core.job_info("b").state == core.job_info("c").state == "cancelled"
