"""`llorch up`: the embedded nats-server, the orchestrator and one pool, each its own process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nats

from schemas import ClusterState, Error, Heartbeat, StateRequest, Subjects, decoder, encode
from schemas.connect import Credentials, without_credentials

from . import natsconf
from .natsserver import NatsServer, free_port

READY_TIMEOUT_S = 60.0
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
        identities = natsconf.deployment([pool_id], clients=["cli"], producers=["cli"])
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
        return [flag, str(natsconf.seed_file(self.creds_dir, identity))]

    def credentials(self, identity: str) -> Credentials:
        if self.creds_dir is None:
            return Credentials()
        return Credentials(nkey_seed_file=natsconf.seed_file(self.creds_dir, identity))

    def spawn(self, name: str, args: list[str]) -> None:
        log = open(self.data_dir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 (child owns it)
        cmd = [sys.executable, "-m", *args, "--nats-url", self.nats_url, "--prefix", self.prefix]
        # With our own identities, a child must not also pick up the caller's from the env.
        env = without_credentials(os.environ) if self.creds_dir else None
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        self.children.append((name, proc))

    async def wait_ready(self, pool_id: str) -> Heartbeat:
        """Until the orchestrator answers and counts the pool as alive: from then on a request
        is served. Woken by the pool's heartbeats; a child that dies first is reported with
        its log. Returns the pool's latest heartbeat."""
        subjects = Subjects(self.prefix)
        nc = await nats.connect(self.nats_url, **self.credentials("admin").connect_options())
        try:
            sub = await nc.subscribe(subjects.heartbeat(pool_id))
            deadline = asyncio.get_running_loop().time() + READY_TIMEOUT_S
            heartbeat: Heartbeat | None = None
            while asyncio.get_running_loop().time() < deadline:
                self._check_children()
                if heartbeat is not None and await _orchestrator_sees(nc, subjects, pool_id):
                    return heartbeat
                with contextlib.suppress(nats.errors.TimeoutError):
                    heartbeat = _heartbeat((await sub.next_msg(timeout=0.5)).data)
            waiting_for = "the orchestrator" if heartbeat else f"pool {pool_id}'s heartbeat"
            raise StackError(f"not ready in {READY_TIMEOUT_S}s: no answer from {waiting_for}")
        finally:
            await nc.close()

    def _check_children(self) -> None:
        for name, proc in self.children:
            if proc.poll() is not None:
                log = self.data_dir / "logs" / f"{name}.log"
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


async def _orchestrator_sees(nc: nats.NATS, subjects: Subjects, pool_id: str) -> bool:
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
