"""`llorch batch status|cancel` while no orchestrator serves: a coded one-line refusal, not a
traceback (a `--watch` waits instead: test_batch_e2e)."""

from __future__ import annotations

import subprocess
import sys

from llorch_orch.natsserver import NatsServer


def test_status_and_cancel_say_no_orchestrator_answers(nats_server: NatsServer) -> None:
    for command in ("status", "cancel"):
        done = subprocess.run(
            [sys.executable, "-m", "llorch_orch", "batch", command, "b1", "--nats-url",
             nats_server.url],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 1, done.stderr
        assert done.stderr.strip() == "llorch: batch b1: UNAVAILABLE: no answer", done.stderr
