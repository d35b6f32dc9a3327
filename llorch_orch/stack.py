"""`llorch up`: the embedded nats-server, the orchestrator and one pool, each its own process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import nats
from nats.aio.client import Client

from llorch_common.aio import wait_event
from llorch_common.connect import Credentials, nkey_public, without_credentials
from llorch_common.local import seed_file, servers
from schemas import ClusterState, Error, Heartbeat, StateRequest, Subjects, decoder, encode

from . import natsconf
from .natsserver import NatsServer, free_port

READY_TIMEOUT_S = 60.0
# A child that dies is started again after a delay: the first, doubled on each death up to the
# most, and the first again once the child had run this long (a crash loop does not spin, a
# rare crash costs half a second).
RESTART_FIRST_S, RESTART_MAX_S, RESTART_RESET_S = 0.5, 10.0, 60.0
HTTP_IDENTITY = "client-http"  # the HTTP edge's (llorch_http), a client of the bus
_heartbeat = decoder(Heartbeat)
_state = decoder(ClusterState | Error)


class StackError(RuntimeError):
    pass


@dataclass
class Stack:
    data_dir: Path
    nats_url: str
    prefix: str
    server: NatsServer | None = None
    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    creds_dir: Path | None = None  # nkey seeds per identity (natsconf); None = open server
    _argv: dict[str, list[str]] = field(default_factory=dict)  # what `spawn` ran, per child
    _fds: dict[str, tuple[int, ...]] = field(default_factory=dict)  # what each child inherits

    @classmethod
    def start_server(
        cls, data_dir: Path, port: int | None, prefix: str, pool_id: str, listen: str = "127.0.0.1"
    ) -> Stack:
        """The embedded server with auth on: a seed per role in `<data>/creds` and the config
        made from them; only loopback unless `listen` says otherwise."""
        if port is not None and not _port_free(listen, port):
            raise StackError(
                f"port {port} is in use: pass --port N, or --nats-url to use that server"
            )
        logs = data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        creds_dir = data_dir / "creds"
        identities = natsconf.deployment([pool_id], clients=["cli", "http"], producers=["cli"])
        identities = natsconf.ensure_seeds(creds_dir, identities)
        config = data_dir / "nats.conf"
        natsconf.write_config(config, natsconf.render(identities, Subjects(prefix)))
        server = NatsServer.start(
            data_dir / "jetstream",
            port=port or free_port(listen),
            host=listen,
            config=config,
            log_file=logs / "nats-server.log",
        )
        return cls(data_dir, server.url, prefix, server=server, creds_dir=creds_dir)

    def seed_args(self, identity: str, flag: str = "--nkey-seed") -> list[str]:
        """`flag FILE` naming the identity's seed (a path, never the secret), when auth is on."""
        if self.creds_dir is None:
            return []
        return [flag, str(seed_file(self.creds_dir, identity))]

    def operator_args(self) -> list[str]:
        """`--operator KEY` for each identity that sees and acts on every job, when auth is on
        and its seed is here: the admin, and the HTTP edge (its dashboard shows the whole
        cluster; it cancels only the jobs it submitted)."""
        out: list[str] = []
        for name in ("admin", HTTP_IDENTITY):
            seed = seed_file(self.creds_dir, name) if self.creds_dir else None
            if seed is not None and seed.is_file():
                out += ["--operator", nkey_public(seed)]
        return out

    def credentials(self, identity: str) -> Credentials:
        if self.creds_dir is None:
            return Credentials()
        return Credentials(nkey_seed_file=seed_file(self.creds_dir, identity))

    def spawn(self, name: str, args: list[str], pass_fds: tuple[int, ...] = ()) -> None:
        """Start `python -m ARGS` as child `name`; `pass_fds` (a listening socket) stay open
        in it, and in each child started in its place."""
        log = open(self.data_dir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 (child owns it)
        cmd = [sys.executable, "-m", *args, "--nats-url", self.nats_url, "--prefix", self.prefix]
        # With our own identities, a child must not also pick up the caller's from the env.
        env = without_credentials(os.environ) if self.creds_dir else None
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, pass_fds=pass_fds
        )
        log.close()
        if name in self._argv:  # started again: in the place of the one that died
            self.children = [(n, proc if n == name else p) for n, p in self.children]
        else:
            self.children.append((name, proc))
        self._argv[name], self._fds[name] = args, pass_fds

    def log_file(self, name: str) -> Path:
        return self.data_dir / "logs" / f"{name}.log"

    async def wait_ready(self, pool_id: str) -> Heartbeat:
        """Until the orchestrator answers and counts the pool as alive: from then on a request
        is served. Woken by the pool's heartbeats; a child that dies first is reported with
        its log. Returns the pool's latest heartbeat."""
        subjects = Subjects(self.prefix)
        nc = await nats.connect(
            servers(self.nats_url), **self.credentials("admin").connect_options()
        )
        try:
            sub = await nc.subscribe(subjects.heartbeat(pool_id))
            deadline = asyncio.get_running_loop().time() + READY_TIMEOUT_S
            heartbeat: Heartbeat | None = None
            while asyncio.get_running_loop().time() < deadline:
                self.check_children()
                if heartbeat is not None and await _orchestrator_sees(nc, subjects, pool_id):
                    return heartbeat
                with contextlib.suppress(nats.errors.TimeoutError):
                    heartbeat = _heartbeat((await sub.next_msg(timeout=0.5)).data)
            waiting_for = "the orchestrator" if heartbeat else f"pool {pool_id}'s heartbeat"
            raise StackError(f"not ready in {READY_TIMEOUT_S}s: no answer from {waiting_for}")
        finally:
            await nc.close()

    async def supervise(self, stop: asyncio.Event) -> None:
        """Keep the children running until `stop` is set: one that exits (a crash, a lost NATS
        connection, `kill -9`) is started again after a backoff, said in one line on stderr.
        Raises StackError when the embedded server exits: every component talks only through
        it, and it does not die of anything they send, so what killed it needs a person (its
        log) rather than a loop of restarts; the supervisor of `llorch up` (systemd) may start
        the whole stack again."""
        exits = _Exits()
        try:
            for child, proc in self.children:
                exits.watch(child, proc)
            if self.server is not None:
                exits.watch(_SERVER, self.server.proc)
            delays = {child: _Backoff() for child, _ in self.children}
            while (name := await exits.next(stop)) is not None:
                proc = self._proc(name)
                if name == _SERVER:
                    raise StackError(
                        f"nats-server {_how(proc.wait())}: llorch up cannot go on without it "
                        f"(see {self.log_file(_SERVER)})"
                    )
                delay = delays[name].next()
                print(
                    f"{name} {_how(proc.wait())}; restarting in {delay:g} s "
                    f"(see {self.log_file(name)})",
                    file=sys.stderr,
                )
                if await wait_event(stop, delay):
                    return
                self.spawn(name, self._argv[name], self._fds[name])
                exits.watch(name, self._proc(name))
        finally:
            exits.close()

    def _proc(self, name: str) -> subprocess.Popen[bytes]:
        if name == _SERVER and self.server is not None:
            return self.server.proc
        return next(proc for n, proc in self.children if n == name)

    def check_children(self) -> None:
        for name, proc in self.children:
            if proc.poll() is not None:
                log = self.log_file(name)
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise StackError(f"{name} exited with {proc.returncode}; {log}:\n{tail}")

    def stop(self) -> None:
        """Every child at once (a terminal's Ctrl-C has signalled them already; a signal to
        `llorch up` alone has not), each stopping on its own: the pool stops its workers and
        their running jobs end with a retriable error. The server goes last, once they have
        exited, so that what they publish while stopping still reaches its subscribers."""
        for _, proc in reversed(self.children):
            if proc.poll() is None:
                proc.terminate()
        for _, proc in reversed(self.children):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.server is not None:
            self.server.stop()


_SERVER = "nats-server"  # the name of its log too


def _how(code: int) -> str:
    """How a child ended, as a person says it."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with {code}"


@dataclass
class _Backoff:
    """The delay before a child is started again (see RESTART_FIRST_S)."""

    delay: float = RESTART_FIRST_S
    started: float = field(default_factory=time.monotonic)  # the child's last start

    def next(self) -> float:
        now = time.monotonic()
        if now - self.started >= RESTART_RESET_S:
            self.delay = RESTART_FIRST_S
        delay, self.delay = self.delay, min(self.delay * 2, RESTART_MAX_S)
        self.started = now + delay
        return delay


class _Exits:
    """The names of watched processes, as each exits: a pidfd per process (Linux), readable
    once it has exited, so the event loop hears it without polling or a thread per child."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Queue[str] = asyncio.Queue()
        self._fds: dict[int, str] = {}

    def watch(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        fd = os.pidfd_open(proc.pid)  # a pid not yet reaped: it cannot be another process's
        self._fds[fd] = name
        self._loop.add_reader(fd, self._on_exit, fd)

    def _on_exit(self, fd: int) -> None:
        self._loop.remove_reader(fd)
        os.close(fd)
        self._exited.put_nowait(self._fds.pop(fd))

    async def next(self, stop: asyncio.Event) -> str | None:
        """The next process to exit, or None once `stop` is set (it wins a tie: the children
        of a terminal's Ctrl-C exit because they were told to)."""
        stopping = asyncio.ensure_future(stop.wait())
        exited = asyncio.ensure_future(self._exited.get())
        try:
            await asyncio.wait((stopping, exited), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            exited.cancel()
        if stop.is_set():
            return None
        return exited.result()

    def close(self) -> None:
        for fd in self._fds:
            self._loop.remove_reader(fd)
            os.close(fd)
        self._fds.clear()


async def _orchestrator_sees(nc: Client, subjects: Subjects, pool_id: str) -> bool:
    """Whether the orchestrator answers `api.state` and lists the pool as alive."""
    try:
        msg = await nc.request(subjects.state, encode(StateRequest()), timeout=1.0)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return False  # still starting
    state = _state(msg.data)
    return isinstance(state, ClusterState) and any(
        p.pool_id == pool_id and p.alive for p in state.pools
    )


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
