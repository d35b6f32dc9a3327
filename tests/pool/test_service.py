"""The pool as a real process on a real nats-server; spawn tests run the real worker."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
from pathlib import Path

import pytest
from nats.aio.client import Client

from llorch_pool import catalog
from schemas import (
    Ack,
    Error,
    ErrorCode,
    Execute,
    SnapshotRequest,
    SpawnRequest,
    StopRequest,
    Subjects,
    decoder,
    encode,
)
from tests.pool.conftest import POOL_ID, WAIT_S, StartPool
from tests.pool.ggufgen import llama_kv, write_gguf

SUBJECTS = Subjects()
_decode_reply = decoder(Ack | Error)
needs_worker = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed"
)


async def call(nc: Client, subject: str, payload: bytes) -> Ack | Error:
    msg = await nc.request(subject, payload, timeout=WAIT_S)
    reply = _decode_reply(msg.data)
    if isinstance(reply, Error):  # errors are mirrored in the micro-service headers
        assert msg.headers is not None
        assert msg.headers["Nats-Service-Error-Code"] == reply.code
    return reply


async def spawn(
    nc: Client, worker_id: str, model: str = "smollm2-135m", device: int = 0, slots: int = 1
) -> Ack | Error:
    req = SpawnRequest(worker_id=worker_id, model=model, device=device, n_ctx=512, slots=slots)
    return await call(nc, SUBJECTS.spawn(POOL_ID), encode(req))


async def stop(nc: Client, worker_id: str, drain: bool) -> Ack | Error:
    req = StopRequest(worker_id=worker_id, drain=drain)
    return await call(nc, SUBJECTS.stop(POOL_ID), encode(req))


def error_code(reply: Ack | Error) -> ErrorCode:
    assert isinstance(reply, Error), reply
    return reply.code


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_periodic_heartbeat_has_cpu_device_and_bundled_model(
    start_pool: StartPool, model_path: Path
) -> None:
    pool = await start_pool("--cpu-memory-bytes", str(4 * 2**30), interval=0.2)
    beats = [await pool.next_beat() for _ in range(3)]
    assert [b.seq for b in beats] == [2, 3, 4]
    beat = beats[-1]
    assert (beat.pool_id, beat.interval_s, beat.workers) == (POOL_ID, 0.2, [])
    [device] = beat.devices
    assert (device.kind, device.index, device.uuid) == ("cpu", 0, f"cpu-{POOL_ID}")
    assert device.total_bytes == 4 * 2**30
    [model] = beat.models
    assert (model.name, model.size_bytes, model.n_layers) == (
        "smollm2-135m",
        model_path.stat().st_size,
        30,
    )
    assert model.sha256 == hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert await pool.stop() == 0


async def test_snapshot_request_triggers_a_heartbeat(start_pool: StartPool, nc: Client) -> None:
    pool = await start_pool()  # 60 s interval: only the request can explain a prompt beat
    await nc.publish(SUBJECTS.snapshot_request, encode(SnapshotRequest()))
    assert (await pool.next_beat()).seq == 2


async def test_discoverable_as_micro_service(start_pool: StartPool, nc: Client) -> None:
    await start_pool()
    ping = json.loads((await nc.request("$SRV.PING.llorch-pool", b"", timeout=WAIT_S)).data)
    assert ping["name"] == "llorch-pool"
    info = json.loads((await nc.request("$SRV.INFO.llorch-pool", b"", timeout=WAIT_S)).data)
    assert info["metadata"]["pool_id"] == POOL_ID
    subjects = {e["name"]: e["subject"] for e in info["endpoints"]}
    assert subjects == {"spawn": SUBJECTS.spawn(POOL_ID), "stop": SUBJECTS.stop(POOL_ID)}


async def test_bad_requests_get_coded_errors_and_pool_keeps_serving(
    start_pool: StartPool, nc: Client
) -> None:
    await start_pool()
    spawn_subject, stop_subject = SUBJECTS.spawn(POOL_ID), SUBJECTS.stop(POOL_ID)
    assert error_code(await call(nc, spawn_subject, b"{not json")) == ErrorCode.INVALID_PARAMS
    wrong_type = b'{"type":"spawn","worker_id":"w","model":"m","device":"zero","n_ctx":1}'
    assert error_code(await call(nc, spawn_subject, wrong_type)) == ErrorCode.INVALID_PARAMS
    assert error_code(await call(nc, stop_subject, b"[]")) == ErrorCode.INVALID_PARAMS
    assert error_code(await spawn(nc, "a.b")) == ErrorCode.INVALID_ID
    assert error_code(await spawn(nc, "w>")) == ErrorCode.INVALID_ID
    assert error_code(await spawn(nc, "w", model="nope")) == ErrorCode.MODEL_NOT_FOUND
    assert error_code(await spawn(nc, "w", device=7)) == ErrorCode.INVALID_PARAMS
    assert error_code(await stop(nc, "ghost", drain=True)) == ErrorCode.NOT_FOUND
    assert error_code(await stop(nc, "a*b", drain=True)) == ErrorCode.INVALID_ID


async def test_memory_pressure_is_insufficient_vram(start_pool: StartPool, nc: Client) -> None:
    pool = await start_pool("--cpu-memory-bytes", "1000")
    assert error_code(await spawn(nc, "w1")) == ErrorCode.INSUFFICIENT_VRAM
    await nc.publish(SUBJECTS.snapshot_request, encode(SnapshotRequest()))
    beat = await pool.next_beat()  # a refused spawn changed nothing: this is the asked-for beat
    assert (beat.seq, beat.workers) == (2, [])


@needs_worker
async def test_workers_of_this_pool_count_against_cpu_capacity(
    start_pool: StartPool, nc: Client, model_path: Path
) -> None:
    capacity = model_path.stat().st_size * 3 // 2  # room for one model file, not two
    pool = await start_pool("--cpu-memory-bytes", str(capacity))
    assert isinstance(await spawn(nc, "w1"), Ack)
    assert error_code(await spawn(nc, "w2")) == ErrorCode.INSUFFICIENT_VRAM
    beat = await pool.beat_where(lambda b: any(w.worker_id == "w1" for w in b.workers))
    assert [w.worker_id for w in beat.workers] == ["w1"]
    assert beat.devices[0].free_bytes < model_path.stat().st_size


async def test_changed_model_file_is_untrusted(
    start_pool: StartPool, nc: Client, tmp_path: Path
) -> None:
    data_dir = tmp_path / "pooldata"
    (data_dir / "models").mkdir(parents=True)
    gguf = write_gguf(data_dir / "models" / "tiny.gguf")
    catalog.add_model(data_dir, "tiny", gguf)
    await start_pool(data_dir=data_dir)
    write_gguf(gguf, llama_kv(**{"llama.context_length": 16}))
    assert error_code(await spawn(nc, "w1", model="tiny")) == ErrorCode.UNTRUSTED_MODEL
    gguf.unlink()
    assert error_code(await spawn(nc, "w1", model="tiny")) == ErrorCode.MODEL_NOT_FOUND


async def test_model_outside_the_allowed_dirs_is_refused_and_audited(
    start_pool: StartPool, nc: Client, tmp_path: Path
) -> None:
    data_dir = tmp_path / "pooldata"
    (data_dir / "models").mkdir(parents=True)
    catalog.add_model(data_dir, "stray", write_gguf(tmp_path / "stray.gguf"))
    # A link inside the allowed dir still leads outside it: refused too.
    (data_dir / "models" / "link.gguf").symlink_to(tmp_path / "stray.gguf")
    catalog.add_model(data_dir, "linked", data_dir / "models" / "link.gguf")
    pool = await start_pool(data_dir=data_dir)
    for name in ("stray", "linked"):
        assert error_code(await spawn(nc, "w1", model=name)) == ErrorCode.UNTRUSTED_MODEL
    await pool.stop()
    audit = [line for line in pool.log().splitlines() if "llorch.audit" in line]
    assert len(audit) == 2 and "'stray'" in audit[0] and "outside" in audit[0], audit


@needs_worker
async def test_spawn_ready_then_drain_to_exit(start_pool: StartPool, nc: Client) -> None:
    pool = await start_pool()
    reply = await spawn(nc, "w1")
    assert isinstance(reply, Ack), reply
    pid = int(reply.detail)
    ready = await pool.worker_where("w1", lambda w: w.state != "starting")
    assert ready.state == "ready", pool.log()
    assert (ready.pid, ready.model, ready.device) == (pid, "smollm2-135m", 0)
    assert ready.memory_bytes is not None and ready.memory_bytes > 0
    assert error_code(await spawn(nc, "w1")) == ErrorCode.INVALID_PARAMS  # id in use
    assert isinstance(await stop(nc, "w1", drain=True), Ack)
    gone = await pool.worker_where("w1", lambda w: w.exit_code is not None)
    assert (gone.state, gone.exit_code) == ("exited", 0)
    assert not pid_alive(pid)


@needs_worker
async def test_heartbeats_report_a_workers_slots_and_its_busy_ones(
    start_pool: StartPool, nc: Client
) -> None:
    pool = await start_pool(interval=0.2)
    assert isinstance(await spawn(nc, "w1", slots=2), Ack)
    ready = await pool.worker_where("w1", lambda w: w.state == "ready")
    assert (ready.slots, ready.slots_busy) == (2, 0)
    execute = Execute(
        job_id="j1", model="smollm2-135m", prompt="Write a long story about a dragon:",
        max_tokens=400, temperature=0.0, top_p=0.95, top_k=40, seed=1, stream=nc.new_inbox(),
    )  # fmt: skip
    events = await nc.subscribe(execute.stream)
    assert isinstance(await call(nc, SUBJECTS.execute("w1"), encode(execute)), Ack)
    busy = await pool.worker_where("w1", lambda w: w.slots_busy == 1)  # heard through WorkerLoad
    assert busy.slots == 2
    await nc.request(SUBJECTS.worker_cancel("w1"), b'{"job_id":"j1"}', timeout=WAIT_S)
    await pool.worker_where("w1", lambda w: w.slots_busy == 0)
    await events.unsubscribe()


@needs_worker
async def test_worker_killed_from_outside_is_reported_next(
    start_pool: StartPool, nc: Client
) -> None:
    pool = await start_pool()
    reply = await spawn(nc, "w1")
    assert isinstance(reply, Ack), reply
    await pool.worker_where("w1", lambda w: w.state == "ready")
    os.kill(int(reply.detail), signal.SIGKILL)
    [worker] = (await pool.next_beat()).workers  # nothing else changed: the very next beat
    assert (worker.state, worker.exit_code) == ("exited", -signal.SIGKILL)
    assert error_code(await stop(nc, "w1", drain=False)) == ErrorCode.NOT_FOUND


@needs_worker
async def test_stop_without_drain_kills(start_pool: StartPool, nc: Client) -> None:
    pool = await start_pool()
    assert isinstance(await spawn(nc, "w1"), Ack)
    await pool.worker_where("w1", lambda w: w.state == "ready")
    assert isinstance(await stop(nc, "w1", drain=False), Ack)
    gone = await pool.worker_where("w1", lambda w: w.exit_code is not None)
    assert (gone.state, gone.exit_code) == ("exited", -signal.SIGKILL)


@needs_worker
async def test_unloadable_model_reports_failed(
    start_pool: StartPool, nc: Client, tmp_path: Path
) -> None:
    data_dir = tmp_path / "pooldata"
    (tmp_path / "elsewhere").mkdir()
    hollow = write_gguf(tmp_path / "elsewhere" / "hollow.gguf")  # no tensors
    catalog.add_model(data_dir, "hollow", hollow)
    pool = await start_pool("--allow-model-dir", str(hollow.parent), data_dir=data_dir)
    assert isinstance(await spawn(nc, "w1", model="hollow"), Ack)
    failed = await pool.worker_where("w1", lambda w: w.exit_code is not None)
    assert (failed.state, failed.exit_code) == ("failed", 3), failed  # 3: its load failed
    # the worker's own report, or (when the pool reaped its exit first) the exit before ready
    assert failed.message.startswith(f"{ErrorCode.MODEL_LOAD_FAILED}: ") or (
        failed.message == "exited with code 3 before ready"
    ), failed.message


@needs_worker
async def test_pool_sigterm_stops_its_workers(start_pool: StartPool, nc: Client) -> None:
    pool = await start_pool()
    pids = []
    for worker_id in ("w1", "w2"):
        reply = await spawn(nc, worker_id)
        assert isinstance(reply, Ack), reply
        pids.append(int(reply.detail))
    await pool.beat_where(lambda b: [w.state for w in b.workers] == ["ready", "ready"])
    assert await pool.stop() == 0
    last = await pool.beat_where(lambda b: all(w.exit_code is not None for w in b.workers))
    # Asked with SIGTERM, both drained (exit 0) within the grace period: none was killed.
    assert {(w.worker_id, w.state, w.exit_code) for w in last.workers} == {
        ("w1", "exited", 0),
        ("w2", "exited", 0),
    }
    assert not any(pid_alive(pid) for pid in pids)
