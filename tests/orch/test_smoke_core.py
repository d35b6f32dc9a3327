from llorch_orch.core import Emit, JobEnded, Pending, SendExecute, Spawn

from .factory import make_core, ready, status, submit


def test_first_job_spawns_then_runs() -> None:
    core = make_core()
    out = core.handle(submit("j1"))
    assert [type(c) for c in out] == [Emit, Spawn, Pending]
    spawn = out[1]
    assert isinstance(spawn, Spawn)
    worker_id = spawn.request.worker_id
    assert out[2] == Pending("j1", ("starting a worker of m on p1/0",))
    out = core.handle(ready(worker_id))
    assert len(out) == 1 and isinstance(out[0], SendExecute)
    assert out[0].execute.seq == 1
    out = core.handle(status("j1", worker_id, "finished", seq=5))
    assert len(out) == 1 and isinstance(out[0], JobEnded)
    assert (out[0].job_id, out[0].info.state, out[0].info.worker_id) == (
        "j1",
        "finished",
        worker_id,
    )
    info = core.job_info("j1")
    assert info is not None and info.state == "finished" and info.started_at is not None
