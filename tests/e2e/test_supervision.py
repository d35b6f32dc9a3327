"""No silent dead process: a component whose NATS connection ends for good exits non-zero, and
`llorch up` starts again whichever of its components dies; a NATS restart loses no request.

Real processes throughout: `llorch up` as users run it, or the orchestrator and a pool against
a nats-server these tests reconfigure, kill and start again on the same port.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from llorch_common import client
from llorch_common.connect import Credentials
from llorch_common.lifeline import EXIT_CONNECTION_LOST
from llorch_orch.natsserver import NatsServer, free_port
from llorch_orch.stack import Stack
from schemas import (
    End,
    Error,
    Event,
    GenerateRequest,
    Queued,
    StateRequest,
    Subjects,
    Token,
    encode,
)

from .conftest import MODEL, Cluster, terminal

LLORCH = [sys.executable, "-m", "llorch_orch"]
# Greedy and long: still streaming when a component is killed under it.
LONG = GenerateRequest(
    model=MODEL, prompt="Write a long story about a dragon:", max_tokens=400, temperature=0.0,
    seed=1,
)  # fmt: skip
SHORT = GenerateRequest(model=MODEL, prompt="Hello", max_tokens=4, temperature=0.0, seed=1)


class Up:
    """`llorch up` in its own process group; its stderr read line by line as it comes."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        """`extra`: more flags (`--nats-url` and `--creds-dir` join an existing server)."""
        self.data_dir = data_dir
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                *LLORCH,
                "up",
                "--data-dir",
                str(data_dir),
                "--port",
                str(self.port),
                "--cpu",
                "--slots",  # one job at a time: a test here watches a job wait behind another
                "1",
                *_http(),
                *extra,
            ],
            stderr=subprocess.PIPE,
            text=True,
            process_group=0,
        )
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._new_line:
                self.lines.append(line)
                self._new_line.notify_all()
        with self._new_line:
            self.lines.append("")  # the end of stderr
            self._new_line.notify_all()

    def _line_sync(self, text: str, after: int) -> str:
        with self._new_line:
            while True:
                for line in self.lines[after:]:
                    assert line, f"stderr ended before {text!r}:\n{''.join(self.lines)}"
                    if text in line:
                        return line
                after = len(self.lines)
                self._new_line.wait()

    async def line(self, text: str, after: int = 0, timeout: float = 120) -> str:
        """The first line from `after` on that holds `text` (waits for it)."""
        return await asyncio.wait_for(asyncio.to_thread(self._line_sync, text, after), timeout)

    async def connect(self) -> nats.NATS:
        seed = Credentials(nkey_seed_file=self.data_dir / "creds" / "client-cli.nk")
        return await client.connect(f"nats://127.0.0.1:{self.port}", seed)

    def pid_of(self, program: str) -> int:
        """The pid of the `llorch up` child that runs `program` (a binary, or a module run
        with `python -m`)."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmd = (entry / "cmdline").read_bytes().decode().split("\0")
            except OSError:
                continue
            runs = Path(cmd[0]).name == program or cmd[1:3] == ["-m", program]
            if runs and int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                return int(entry.name)
        raise AssertionError(f"no {program} under llorch up")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reader.join()  # stderr's end: every process that held it has exited
        assert self.proc.stderr is not None
        self.proc.stderr.close()


@pytest.fixture
async def up(tmp_path: Path) -> AsyncIterator[Up]:
    stack = Up(tmp_path)
    try:
        await stack.line("llorch is up")
        yield stack
    finally:
        stack.stop()


class Stream:
    """One job's events, collected as they come."""

    def __init__(self, nc: nats.NATS, request: GenerateRequest) -> None:
        self.events: list[Event] = []
        self._seen = {Token: asyncio.Event(), Queued: asyncio.Event()}
        self.task = asyncio.create_task(self._collect(nc, request))

    async def _collect(self, nc: nats.NATS, request: GenerateRequest) -> None:
        async for event in client.stream(nc, request, stall_s=90):
            self.events.append(event)
            if type(event) in self._seen:
                self._seen[type(event)].set()

    async def first(self, kind: type[Token | Queued]) -> None:
        """Until an event of `kind` came (the stream must not end first)."""
        seen = asyncio.ensure_future(self._seen[kind].wait())
        await asyncio.wait({seen, self.task}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
        seen.cancel()
        assert self._seen[kind].is_set(), self.events

    async def end(self) -> End | Error:
        await asyncio.wait_for(self.task, 120)
        return terminal(self.events)


@pytest.mark.parametrize(
    ("program", "name"), [("llorch_pool", "pool"), ("llorch_orch", "orchestrator")]
)
async def test_up_restarts_a_killed_component_and_serves_again(
    up: Up, program: str, name: str
) -> None:
    """kill -9 of the pool (or the orchestrator) under `llorch up`: one line says it is
    started again, and a request sent then is served. The job that was queued behind a running
    one is served too: by the same orchestrator after the pool's restart, or, after the
    orchestrator's, sent again by its client when the new one announces its lead."""
    nc = await up.connect()
    try:
        running = Stream(nc, LONG)
        await running.first(Token)
        queued = Stream(nc, SHORT)
        await queued.first(Queued)

        seen = len(up.lines)
        os.kill(up.pid_of(program), signal.SIGKILL)
        line = await up.line(f"{name} was killed by SIGKILL; restarting in 0.5 s", seen)
        assert f"logs/{name}.log" in line, line

        fresh = [e async for e in client.stream(nc, SHORT, stall_s=90)]
        assert isinstance(terminal(fresh), End), fresh
        await running.end()  # it ends, one way or another
        assert isinstance(await queued.end(), End), queued.events
        assert up.proc.poll() is None
    finally:
        await nc.close()


async def test_up_stops_with_an_error_when_nats_server_dies(up: Up) -> None:
    os.kill(up.pid_of("nats-server"), signal.SIGKILL)
    line = await up.line("nats-server was killed by SIGKILL")
    assert "llorch up cannot go on" in line and "logs/nats-server.log" in line, line
    assert await asyncio.to_thread(up.proc.wait, 60) == 1


# ---- a connection the server closes for good --------------------------------------------------


@pytest.fixture
def reloadable_server(tmp_path: Path) -> Iterator[tuple[NatsServer, Path]]:
    """A nats-server with a config file: rewrite it, then `reload` it (SIGHUP)."""
    config = tmp_path / "nats.conf"
    config.write_text("max_payload: 1048576\n")
    log = tmp_path / "nats-server.log"
    server = NatsServer.start(tmp_path / "jetstream", config=config, log_file=log)
    yield server, config
    server.stop()


async def _reload(server: NatsServer, config: Path, text: str) -> None:
    log = config.parent / "nats-server.log"
    reloads = log.read_text().count("Reloaded server configuration")
    config.write_text(text)
    server.proc.send_signal(signal.SIGHUP)
    async with asyncio.timeout(30):  # the server says so in its log, nowhere else
        while log.read_text().count("Reloaded server configuration") == reloads:
            await asyncio.sleep(0.02)


async def test_components_exit_when_the_server_closes_their_connection(
    reloadable_server: tuple[NatsServer, Path], tmp_path: Path
) -> None:
    """The server closes a connection that publishes over its max payload and nats-py never
    reconnects it. Lowering the limit under running processes makes their next publish do so:
    the pool's heartbeat, the orchestrator's reply to `api.state`. Each exits with
    EXIT_CONNECTION_LOST and says why in one line, instead of living on serving nothing."""
    server, config = reloadable_server
    stack = Stack(data_dir=tmp_path / "data", nats_url=server.url, prefix=Subjects().prefix)
    (stack.data_dir / "logs").mkdir(parents=True)
    stack.spawn("orchestrator", ["llorch_orch", "orch"])
    nc = await nats.connect(server.url)
    try:
        cluster = Cluster(stack, nc)
        cluster.spawn_pool("p1")
        await cluster.wait_for_pools("p1")
        limit = len(encode(StateRequest())) + 16  # our question fits, no answer does
        await _reload(server, config, f"max_payload: {limit}\n")
        await nc.publish(cluster.subjects.state, encode(StateRequest()), reply=nc.new_inbox())
        await nc.flush()
        for name, proc in stack.children:
            code = await asyncio.to_thread(proc.wait, 60)
            log = stack.log_file(name).read_text()
            assert code == EXIT_CONNECTION_LOST, (name, code, log[-3000:])
            lost = [line for line in log.splitlines() if "closed the connection" in line]
            assert len(lost) == 1 and "maximum payload violation" in lost[0], log[-3000:]
    finally:
        await nc.close()
        stack.stop()


# ---- nats-server restarts ---------------------------------------------------------------------


async def test_a_request_sent_while_nats_is_down_gets_a_terminal_event(
    reloadable_server: tuple[NatsServer, Path], tmp_path: Path
) -> None:
    """The server goes away and comes back on the same port: a stream in flight goes on to its
    end; the request a client sent meanwhile (nats-py holds it until it reconnects) is served,
    or refused with a code, never met with silence; and the next request is served."""
    server, config = reloadable_server
    stack = Stack(data_dir=tmp_path / "data", nats_url=server.url, prefix=Subjects().prefix)
    (stack.data_dir / "logs").mkdir(parents=True)
    stack.spawn("orchestrator", ["llorch_orch", "orch"])
    disconnected, reconnected = asyncio.Event(), asyncio.Event()

    async def on_disconnect() -> None:
        disconnected.set()

    async def on_reconnect() -> None:
        reconnected.set()

    nc = await nats.connect(
        server.url, max_reconnect_attempts=-1, disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )  # fmt: skip
    restarted: NatsServer | None = None
    try:
        cluster = Cluster(stack, nc)
        cluster.spawn_pool("p1")
        await cluster.wait_for_pools("p1")
        assert isinstance(terminal(await cluster.run(prompt="Hi", max_tokens=2)), End)  # warm
        in_flight = Stream(nc, LONG)
        await in_flight.first(Token)

        assert not in_flight.task.done()  # still streaming as the server goes
        server.stop()
        await asyncio.wait_for(disconnected.wait(), 60)
        while_down = Stream(nc, SHORT)  # published while the server starts again
        restarted = await asyncio.to_thread(
            NatsServer.start, server.store_dir, port=server.port, config=config
        )
        await asyncio.wait_for(reconnected.wait(), 60)
        end = await while_down.end()
        assert isinstance(end, End) or end.code, while_down.events
        # the stream in flight rides the restart out: the worker does not take its client,
        # reconnecting too, for gone
        streamed = await in_flight.end()
        assert isinstance(streamed, End), in_flight.events
        await cluster.wait_for_pools("p1")
        after = await cluster.run(prompt="Hi", max_tokens=2)
        assert isinstance(terminal(after), End), after
    finally:
        await nc.close()
        stack.stop()  # before the server: they leave on a live connection
        if restarted is not None:
            restarted.stop()


def _http() -> list[str]:
    """`llorch up`'s HTTP edge on a free port (its default, 8000, may be taken)."""
    return ["--http", f"127.0.0.1:{free_port()}"]
