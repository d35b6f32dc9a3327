"""The nats-server config of a deployment: one nkey identity per role, least-privilege permissions.

The role table below is the one source of who may do what on the bus: `llorch up` writes its
server config from it, and the repo's `nats.conf` is its output for an example deployment
(`llorch nats-config`). The config holds public keys only; each seed is a 0600 file in the
creds dir (0700), named after its identity. See docs/security.md.

A cluster (`--node`, docs/deployment.md) gets one config per server: its name, listen address,
JetStream store and routes to every other server differ; the accounts block is the same text
on every one (a server checks the clients connected to it, so each must know every identity).
The routes authenticate with a shared secret (`creds/route.secret`): without it anyone who
reaches a cluster port could join as a server and read every subject.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from llorch_common.connect import nkey_public
from llorch_common.local import seed_file
from schemas import MAX_MESSAGE_BYTES, ProtocolError, Subjects, check_id
from schemas.subjects import DEFAULT_INBOX

from .batch.config import BATCH_STREAM, PRODUCER_PREFIX, RESULTS_STREAM
from .lease import BUCKET as LEASE_BUCKET
from .settings import ConfigError

ROLES = ("orchestrator", "pool", "worker", "client", "batch-producer", "admin")
DEFAULT_CLUSTER = "llorch"
ROUTE_USER = "route"
ROUTE_SECRET = "route.secret"  # in the creds dir, beside the seeds
_NODE = re.compile(r"(?P<name>[^=]+)=(?P<host>.+):(?P<client>\d+):(?P<cluster>\d+)")


@dataclass(frozen=True, slots=True)
class Identity:
    name: str  # file stem of its seed and comment in the config, e.g. "pool-gpu1"
    role: str  # one of ROLES
    scope: str | None = None  # the pool a pool or worker identity belongs to
    public_key: str = ""  # nkey `U…`; filled in once the seed exists


@dataclass(frozen=True, slots=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    responses: bool  # may reply once to a request it received (micro endpoints)
    publish_deny: tuple[str, ...] = ()  # carved out of `publish` (the server's deny wins)


@dataclass(frozen=True, slots=True)
class Node:
    """One server of a NATS cluster: `--node NAME=HOST:CLIENT_PORT:CLUSTER_PORT`."""

    name: str  # its server_name, unique in the cluster ([A-Za-z0-9_-])
    host: str  # where clients and the other servers reach it (and where it listens)
    client_port: int
    cluster_port: int  # routes between the servers

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.client_port}"


@dataclass(frozen=True, slots=True)
class Seat:
    """A server's place in its cluster: what its config says beyond the shared accounts."""

    node: Node
    nodes: tuple[Node, ...]  # every server of the cluster, this one included
    name: str  # the cluster's
    route_secret: str  # the routes' password, the same on every server


def parse_node(text: str) -> Node:
    """The argparse type of `--node`."""
    match = _NODE.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"want NAME=HOST:CLIENT_PORT:CLUSTER_PORT, got {text!r}")
    try:
        name = check_id(match["name"], "node name")
    except ProtocolError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    return Node(name, match["host"], int(match["client"]), int(match["cluster"]))


def check_nodes(nodes: Sequence[Node]) -> tuple[Node, ...]:
    """Distinct names and addresses: two servers in one place would fight over it."""
    names = [n.name for n in nodes]
    places = [(n.host, port) for n in nodes for port in (n.client_port, n.cluster_port)]
    if len(set(names)) < len(names) or len(set(places)) < len(places):
        raise ConfigError("each --node needs a name and ports of its own")
    return tuple(nodes)


def deployment(
    pools: Iterable[str], clients: Iterable[str] = ("cli",), producers: Iterable[str] = ()
) -> list[Identity]:
    """The identities of a deployment: one orchestrator, admin, and per pool two (pool, its
    workers); per client and batch producer one."""
    out = [Identity("orchestrator", "orchestrator"), Identity("admin", "admin")]
    for pool in pools:
        check_id(pool, "pool id")
        out += [Identity(f"pool-{pool}", "pool", pool), Identity(f"worker-{pool}", "worker", pool)]
    out += [Identity(f"client-{check_id(c, 'client')}", "client") for c in clients]
    out += [Identity(f"producer-{check_id(p, 'producer')}", "batch-producer") for p in producers]
    return out


def _service(name: str) -> tuple[str, ...]:
    """Micro-service discovery (`$SRV.PING|INFO|STATS[.name[.id]]`) for one service name."""
    return ("$SRV.*", f"$SRV.*.{name}", f"$SRV.*.{name}.*")


def _results_reader(s: Subjects, producer: str) -> tuple[str, ...]:
    """JetStream API to read (not write) one producer's part of the results stream. Only the
    API subjects that carry the subject filter are allowed, so the server checks it: a
    consumer create whose filter is in its subject (`…CREATE.<stream>.<consumer>.<filter>`,
    NATS >= 2.10; the server refuses a body whose filter differs) and direct gets by subject.
    No stream info: with a subject filter it would list other producers' batches."""
    r = RESULTS_STREAM
    own = (f"{s.prefix}.batch.result.{producer}.>", f"{s.prefix}.batch.cancelled.{producer}.*")
    return (
        f"$JS.API.CONSUMER.CREATE.{r}.*.{own[0]}",
        f"$JS.API.CONSUMER.MSG.NEXT.{r}.*",  # consumer names are random (store.scan)
        *(f"$JS.API.DIRECT.GET.{r}.{subject}" for subject in own),
        f"$JS.ACK.{r}.>",
    )


def permissions(ident: Identity, s: Subjects) -> Permissions:
    """What one identity may publish and subscribe to: nothing its role does not need."""
    inbox = f"{DEFAULT_INBOX}.{ident.public_key}.>"  # its own replies only
    p = s.prefix
    pub: tuple[str, ...]
    sub: tuple[str, ...]
    match ident.role:
        case "orchestrator":
            pub = (
                f"{p}.pool.*.spawn",
                f"{p}.pool.*.stop",
                s.snapshot_request,
                s.leader,
                f"{p}.worker.*.execute",
                f"{p}.worker.*.cancel",
                f"{p}.batch.>",
                "_INBOX.>",
                "$JS.API.>",
                f"$JS.ACK.{BATCH_STREAM}.>",
                f"$KV.{LEASE_BUCKET}.>",  # the leader lease (llorch_orch/lease.py)
            )
            sub = (
                f"{p}.api.>",
                s.heartbeat_all,
                s.ready_all,
                s.job_status_all,
                inbox,
                *_service("llorch-orchestrator"),
            )
            return Permissions(pub, sub, responses=True)
        case "pool":
            pool = ident.scope or ""
            sub = (
                s.spawn(pool),
                s.stop(pool),
                s.snapshot_request,
                s.leader,
                s.ready_all,
                inbox,
                *_service("llorch-pool"),
            )
            return Permissions((s.heartbeat(pool),), sub, responses=True)
        case "worker":
            # Worker subjects carry no pool, so a worker identity covers every worker id; it
            # can never speak for a pool (heartbeat, spawn, stop).
            pub = (s.ready_all, s.job_status_all, "_INBOX.>")  # streams go to clients' inboxes
            sub = (
                f"{p}.worker.*.execute",
                f"{p}.worker.*.cancel",
                s.leader,
                inbox,
                *_service("llorch-worker"),
            )
            return Permissions(pub, sub, responses=True)
        case "client":
            # the batch API (status, cancel of any batch) is the producers'
            deny = (f"{p}.api.batch.>",)
            # the leader's announcements: a job waiting at a dead leader is sent again
            sub = (inbox, s.leader)
            return Permissions((f"{p}.api.>",), sub, responses=False, publish_deny=deny)
        case "batch-producer":
            # Its namespace is the one token of a batch subject it may use: no other
            # producer's batches to submit into, read, cancel or watch (docs/batch.md).
            ns = ident.name.removeprefix(PRODUCER_PREFIX)
            pub = (
                f"{p}.batch.submit.{ns}.*.*",
                f"{p}.api.batch.{ns}.*",
                "$JS.API.INFO",
                *_results_reader(s, ns),
            )
            return Permissions(pub, (inbox, f"{p}.batch.event.{ns}.*"), responses=False)
        case "admin":
            return Permissions((">",), (">",), responses=False)
    raise ValueError(f"unknown role {ident.role!r}")


def _list(subjects: tuple[str, ...]) -> str:
    items = "".join(f"\n          {json.dumps(x)}," for x in subjects)
    return f"[{items}\n        ]"


def _deny(subjects: tuple[str, ...]) -> str:
    return f", deny: {_list(subjects)}" if subjects else ""


def _cluster(seat: Seat) -> list[str]:
    """The cluster block: routes to every other server, authenticated with the shared secret."""
    me = seat.node
    auth = f"{ROUTE_USER}:{seat.route_secret}@"
    routes = [f"nats-route://{auth}{n.host}:{n.cluster_port}" for n in seat.nodes if n != me]
    return [
        "cluster {",
        f"  name: {json.dumps(seat.name)}",
        f"  listen: {json.dumps(f'{me.host}:{me.cluster_port}')}",
        f"  authorization {{ user: {ROUTE_USER}, password: {json.dumps(seat.route_secret)} }}",
        f"  routes: {_list(tuple(routes))}",
        "}",
    ]


def render(
    identities: Iterable[Identity],
    subjects: Subjects,
    listen: str | None = None,
    store_dir: Path | None = None,
    max_payload: int = MAX_MESSAGE_BYTES,
    seat: Seat | None = None,
) -> str:
    """The server config text. `listen`/`store_dir` may be left to command-line flags; a
    cluster's server (`seat`) listens where its node says."""
    lines = [
        "# Generated by llorch (llorch_orch/natsconf.py) from its role table.",
        "# Public nkeys only: the seeds are 0600 files beside this file, in creds/.",
        "# Remake: llorch nats-config --out DIR --pool-id ID [--client NAME] [--producer NAME]",
        f"max_payload: {max_payload}  # = the decoders' limit (schemas.MAX_MESSAGE_BYTES)",
    ]
    if seat is not None:
        lines += [
            "# A server of a cluster (remade with one --node per server): this file holds the",
            "# routes' secret; keep it on its own host.",
            f"server_name: {json.dumps(seat.node.name)}",
        ]
        listen = f"{seat.node.host}:{seat.node.client_port}"
    if listen:
        lines.append(f"listen: {json.dumps(listen)}")
    if store_dir:
        lines.append(f"jetstream {{ store_dir: {json.dumps(str(store_dir))} }}")
    if seat is not None:
        lines += _cluster(seat)
    lines += ["", "authorization {", "  users = ["]
    for ident in identities:
        perms = permissions(ident, subjects)
        scope = f" of pool {ident.scope}" if ident.scope else ""
        lines += [
            f"    # {ident.name}: role {ident.role}{scope}",
            f"    {{ nkey: {json.dumps(ident.public_key)}, permissions: {{",
            f"        publish: {{ allow: {_list(perms.publish)}{_deny(perms.publish_deny)} }}",
            f"        subscribe: {{ allow: {_list(perms.subscribe)} }}",
        ]
        if perms.responses:
            lines.append("        allow_responses: true")
        lines.append("    } }")
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)


def ensure_seeds(creds_dir: Path, identities: Iterable[Identity]) -> list[Identity]:
    """Each identity with its public key; a missing seed is created (0600). Deleting a seed
    and running this again rotates that identity."""
    import nkeys

    _private_dir(creds_dir)
    out = []
    for ident in identities:
        path = seed_file(creds_dir, ident.name)
        if not path.exists():
            seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(seed + b"\n")
        path.chmod(0o600)
        out.append(Identity(ident.name, ident.role, ident.scope, nkey_public(path)))
    return out


def ensure_route_secret(creds_dir: Path) -> str:
    """The routes' password (made once, 0600; delete it and remake every config to rotate)."""
    _private_dir(creds_dir)
    path = creds_dir / ROUTE_SECRET
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(24) + "\n")  # hex: safe inside a route URL
    return path.read_text().strip()


def write_config(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def write_deployment(
    out: Path,
    subjects: Subjects,
    pools: Iterable[str],
    clients: Iterable[str] = ("cli",),
    producers: Iterable[str] = (),
    listen: str | None = None,
    store_dir: Path | None = None,
) -> Path:
    """`<out>/creds/<identity>.nk` (kept if present) and `<out>/nats.conf` made from them."""
    identities = ensure_seeds(out / "creds", deployment(pools, clients, producers))
    path = out / "nats.conf"
    write_config(path, render(identities, subjects, listen, store_dir))
    return path


def node_config(out: Path, node: Node) -> Path:
    return out / f"nats-{node.name}.conf"


def write_cluster(
    out: Path,
    subjects: Subjects,
    nodes: Sequence[Node],
    pools: Iterable[str],
    clients: Iterable[str] = ("cli",),
    producers: Iterable[str] = (),
    store_dir: Path | None = None,
    name: str = DEFAULT_CLUSTER,
) -> list[Path]:
    """`<out>/nats-<node>.conf` per server (JetStream in `<store_dir>/<node>`, default
    `<out>/jetstream/<node>`) and the seeds and route secret in `<out>/creds` (kept if
    present)."""
    nodes = check_nodes(nodes)
    identities = ensure_seeds(out / "creds", deployment(pools, clients, producers))
    secret = ensure_route_secret(out / "creds")
    stores = store_dir or out.resolve() / "jetstream"
    paths = []
    for node in nodes:
        seat = Seat(node, nodes, name, secret)
        path = node_config(out, node)
        write_config(path, render(identities, subjects, store_dir=stores / node.name, seat=seat))
        paths.append(path)
    return paths
