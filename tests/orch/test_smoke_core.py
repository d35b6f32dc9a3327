from llorch_orch.core import Emit, SendExecute, Spawn

from .factory import make_core, ready, status, submit


def test_first_job_spawns_then_runs() -> None:
    core = make_core()
    out = core.handle(submit("j1"))
    assert [type(c) for c in out] == [Emit, Spawn]
    spawn = out[1]
    assert isinstance(spawn, Spawn)
    out = core.handle(ready(spawn.request.worker_id))
    assert len(out) == 1 and isinstance(out[0], SendExecute)
    assert out[0].execute.seq == 1
    out = core.handle(status("j1", spawn.request.worker_id, "finished", seq=5))
    assert out == []
    assert core.job_info("j1").state == "finished"
