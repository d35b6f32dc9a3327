"""A recorded run of the real orchestrator replays, through a fresh core, to the same outputs:
spawns, jobs, a cancel and a killed worker's retry included (`--record-events`, `replay`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from llorch_common import client
from schemas import End, Error, ErrorCode, Started

from .conftest import ClusterFactory, worker_pid
from .test_brain import LONG, Job


def replay(path: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "llorch_orch.replay", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


async def test_a_recorded_run_replays_to_identical_outputs(
    make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    record = tmp_path / "events.jsonl"
    cluster = await make_cluster(orch_args=("--record-events", str(record)))
    assert isinstance(await Job(cluster).result(), End)  # a spawn, then a dispatch
    cancelled = Job(cluster, **LONG)
    await cancelled.reached(cancelled.tokens)
    assert not isinstance(await client.cancel(cluster.nc, cancelled.job_id), Error)
    end = await cancelled.result()
    assert isinstance(end, Error) and end.code == ErrorCode.CANCELLED
    killed = Job(cluster, prompt="List the planets of the solar system:", max_tokens=40)
    await killed.reached(killed.tokens)
    started = next(e for e in killed.events if isinstance(e, Started))
    os.kill(await worker_pid(cluster, started.worker_id), signal.SIGKILL)
    assert isinstance(await killed.result(), End)  # retried on a new worker
    (orch,) = [p for name, p in cluster.stack.children if name == "orchestrator"]
    orch.send_signal(signal.SIGINT)
    assert orch.wait(timeout=30) == 0

    lines = [json.loads(line) for line in record.read_text().splitlines()]
    kinds = {line["event"][0] for line in lines[1:]}
    assert {"Submit", "Cancel", "ReadySeen", "StatusSeen", "HeartbeatSeen", "Shutdown"} <= kinds
    outputs = [out for line in lines[1:] for out in line["out"]]
    assert sum(kind == "Spawn" for kind, _ in outputs) == 2  # the first worker, its successor
    attempts = [o["attempt"] for kind, o in outputs if kind == "SendExecute"]
    assert 2 in attempts  # the killed worker's job was sent again
    done = replay(record)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"replayed {len(lines) - 1} events: every output identical"

    # a recording whose outputs were not what this core outputs is caught, at that event
    first_spawn = next(
        i for i, line in enumerate(lines[1:], 1) if any(k == "Spawn" for k, _ in line["out"])
    )
    for kind, out in lines[first_spawn]["out"]:
        if kind == "Spawn":
            out["request"]["device"] += 1
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("".join(json.dumps(line) + "\n" for line in lines))
    done = replay(tampered)
    assert done.returncode == 1
    assert done.stderr.startswith(f"event {first_spawn} (Submit): outputs differ")
