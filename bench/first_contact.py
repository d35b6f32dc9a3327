"""What a new user meets, measured: the README's first command, and Ctrl-C on `llorch up`.

    python3 -m bench.first_contact [--runs 6] [--stops 3]

1. `llorch run "Why is the sky blue?"` from a fresh data dir, `--runs` times: exit status,
   tokens, finish reason, tracebacks, wall time (stack start, worker load and answer included).
2. `llorch up` started as a user does, one long greedy job streaming, then SIGINT to its
   process group (a terminal's Ctrl-C), `--stops` times: seconds until `llorch up` exited,
   the job's terminal event, lines with "Error"/"Traceback" in any log.

Prints a table per part and writes bench/results/first_contact.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import summary, table, use_uvloop, write_results
from llorch_common import client
from llorch_common.connect import Credentials
from llorch_common.local import read_stack_record
from llorch_orch.natsserver import free_port
from schemas import End, Error, GenerateRequest, Token

LLORCH = [sys.executable, "-m", "llorch_orch"]
QUESTION = "Why is the sky blue?"
SUMMARY = re.compile(r"^-- (\d+) tokens, finish (\w+),", re.MULTILINE)
LONG = GenerateRequest(
    model="smollm2-135m", prompt="Write a long story about a dragon:", max_tokens=1500,
    temperature=0, seed=1,
)  # fmt: skip


def first_command(runs: int) -> list[dict[str, object]]:
    rows = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="llorch-run-") as data_dir:
            start = time.perf_counter()
            done = subprocess.run(
                [*LLORCH, "run", QUESTION, "--data-dir", data_dir],
                capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            wall = time.perf_counter() - start
        found = SUMMARY.search(done.stderr)
        rows.append({
            "rc": done.returncode,
            "tokens": int(found.group(1)) if found else 0,
            "finish": found.group(2) if found else "-",
            "tracebacks": done.stderr.count("Traceback"),
            "wall_s": wall,
        })  # fmt: skip
    return rows


async def one_stop() -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="llorch-stop-") as tmp:
        data_dir = Path(tmp)
        up = subprocess.Popen(
            [*LLORCH, "up", "--data-dir", tmp, "--port", str(free_port()), "--http", "off"],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            start_new_session=True,  # its own group: the signal goes to it all, as from a tty
        )  # fmt: skip
        assert up.stderr is not None
        line = await asyncio.to_thread(up.stderr.readline)
        assert "llorch is up" in line, line
        record = read_stack_record(data_dir)
        assert record is not None
        seed = Path(record.creds_dir or "") / "client-cli.nk"
        creds = Credentials(nkey_seed_file=seed)
        nc = await client.connect(record.nats_url, creds, error_cb=_expected, allow_reconnect=False)
        events = client.stream(nc, LONG)
        async for event in events:  # until the first token: the job is streaming
            if isinstance(event, Token):
                break
        start = time.perf_counter()
        os.killpg(up.pid, signal.SIGINT)
        terminal = [e async for e in events if isinstance(e, End | Error)]
        exit_status = await asyncio.to_thread(up.wait, 60)
        stop_s = time.perf_counter() - start
        await nc.close()
        bad = [
            line
            for log in (data_dir / "logs").glob("*.log")
            for line in log.read_text(errors="replace").splitlines()
            if "Error" in line or "Traceback" in line
        ]
        end = terminal[0] if terminal else None
        return {
            "stop_s": stop_s,
            "exit": exit_status,
            "terminal": end.code if isinstance(end, Error) else type(end).__name__,
            "error_lines": len(bad),
        }


async def _expected(_: Exception) -> None:
    """The server goes away with the stack: that is the point, not news."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--stops", type=int, default=3)
    args = parser.parse_args()
    use_uvloop()
    runs = first_command(args.runs)
    print(f'`llorch run "{QUESTION}"`, fresh data dir each time')
    print(table(list(runs[0]), [list(r.values()) for r in runs]))
    stops = [asyncio.run(one_stop()) for _ in range(args.stops)]
    print("\nCtrl-C (SIGINT to the process group) on `llorch up` with a job streaming")
    print(table(list(stops[0]), [list(s.values()) for s in stops]))
    answered = sum(r["rc"] == 0 and r["tokens"] > 0 and not r["tracebacks"] for r in runs)
    path = write_results("first_contact", {
        "runs": runs,
        "answered": f"{answered}/{len(runs)}",
        "run_wall_s": summary([float(r["wall_s"]) for r in runs]),
        "stops": stops,
        "stop_s": summary([float(s["stop_s"]) for s in stops]),
    })  # fmt: skip
    print(f"\nanswered {answered}/{len(runs)}; wrote {path}")


if __name__ == "__main__":
    main()
