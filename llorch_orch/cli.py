"""The `llorch` command: run the stack, talk to it, or run one component alone."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import nats
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from opentelemetry import trace

from llorch_common import client, observe, tracing
from llorch_common.connect import Credentials, add_arguments, permission_refusal
from llorch_common.local import (
    DATA_DIR_ENV,
    DEFAULT_NATS_URL,
    add_nats_url_argument,
    default_data_dir,
    default_pool_id,
    nats_url,
    positive_float,
    remove_stack_record,
    stack_endpoint,
    write_stack_record,
)
from schemas import (
    DEFAULT_PREFIX,
    ChatMessage,
    End,
    Error,
    Event,
    GenerateRequest,
    Heartbeat,
    JobInfo,
    ProtocolError,
    Queued,
    Subjects,
    Token,
)

from . import edge, natsconf, settings
from .batch import cli as batch_cli
from .batch import load as load_batch
from .lease import DEFAULT_TTL_S
from .stack import Stack, StackError
from .table import job_table, models_table, state_table

T = TypeVar("T")

DEFAULT_MODEL = "smollm2-135m"


def _common(p: argparse.ArgumentParser) -> None:
    add_nats_url_argument(p)
    p.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        help=f"the stack's data dir: its URL and credentials (default ${DATA_DIR_ENV}, "
        "else ~/.local/share/llorch)",
    )
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="subject prefix")
    add_arguments(p)


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="the user's message (with --raw: the prompt text as is)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--system", help="a system message before the prompt (chat)")
    p.add_argument(
        "--raw",
        action="store_true",
        help="send the prompt as raw text, without the model's chat template",
    )
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--seed", type=int)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--stop", action="append", default=[], help="stop sequence (repeatable)")
    p.add_argument("--job-id", help="name the job (for `llorch job ID`, `llorch cancel ID`)")


def _stack_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument(
        "--nats-url",
        type=nats_url,
        metavar="URL[,URL...]",
        help="use this NATS server (or cluster: comma-separated) instead of starting one",
    )
    p.add_argument("--creds-dir", type=Path, help="with --nats-url: seeds from `nats-config`")
    p.add_argument("--listen", default="127.0.0.1", help="embedded server's bind address")
    p.add_argument(
        "--port",
        type=int,
        help="port of the embedded nats-server (default: 4222 for up, a free one for run)",
    )
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="subject prefix")
    p.add_argument("--pool-id", default=default_pool_id())
    p.add_argument("--cpu", action="store_true", help="run workers on the CPU even with GPUs")
    p.add_argument("--cpu-memory-bytes", type=int, help="cap the CPU device's capacity")
    p.add_argument("--device-memory-limit", type=int, help="cap each GPU's capacity (bytes)")
    p.add_argument(
        "--allow-model-dir",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="the pool also loads model files from DIR, in place (repeatable)",
    )
    _metrics_arg(p, "orchestrator on PORT, pool on PORT+1")
    p.add_argument("--trace-console", action="store_true", help="print spans to the logs")
    settings.add_arguments(p)


def _metrics_arg(p: argparse.ArgumentParser, where: str) -> None:
    p.add_argument(
        "--metrics-port",
        type=int,
        default=observe.metrics_port_default(),
        help=f"Prometheus metrics on 127.0.0.1 ({where}; default ${observe.METRICS_PORT_ENV})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llorch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start nats-server, orchestrator and a pool on this host")
    _stack_args(up)
    _http_args(up)
    run = sub.add_parser("run", help="start the stack, stream one generation, stop")
    _stack_args(run)
    _generate_args(run)
    gen = sub.add_parser("generate", help="stream a generation from a running stack")
    _common(gen)
    _generate_args(gen)
    for name, help_ in (
        ("state", "cluster view, with why each waiting job waits"),
        ("job", "one job: state, position, worker, why it waits, timings"),
        ("cancel", "cancel a job"),
    ):
        p = sub.add_parser(name, help=help_)
        _common(p)
        if name != "state":
            p.add_argument("job_id")
    models = sub.add_parser("models", help="list models (or `models add NAME PATH`)")
    _common(models)
    models.add_argument("action", nargs="?", default="list", choices=["list", "add"])
    models.add_argument("rest", nargs=argparse.REMAINDER)
    batch_cli.add_parser(sub, _common)
    orch = sub.add_parser("orch", help="run the orchestrator alone")
    _common(orch)
    _metrics_arg(orch, "PORT")
    settings.add_arguments(orch)
    orch.add_argument(
        "--operator",
        action="append",
        default=[],
        metavar="KEY",
        help="an identity (nkey public key or user name) that sees and acts on every job "
        "(repeatable; `llorch up` passes its admin's)",
    )
    orch.add_argument(
        "--name",
        default="",
        help="this orchestrator's name, as `llorch state` shows the leader (default: random)",
    )
    orch.add_argument(
        "--lease-ttl",
        type=positive_float,
        default=DEFAULT_TTL_S,
        metavar="SECONDS",
        help="how long the lead outlives its leader's last renewal: a standby takes over "
        f"within about this long of a leader's death (default {DEFAULT_TTL_S:g})",
    )
    conf = sub.add_parser("nats-config", help="write a server config and seeds per role")
    conf.add_argument("--out", type=Path, required=True, help="dir for nats.conf and creds/")
    conf.add_argument("--prefix", default=DEFAULT_PREFIX, help="subject prefix")
    conf.add_argument("--pool-id", action="append", required=True, help="repeatable")
    conf.add_argument("--client", action="append", default=[], help="repeatable")
    conf.add_argument("--producer", action="append", default=[], help="batch producer")
    conf.add_argument("--listen", help="host:port for the config's listen line")
    conf.add_argument(
        "--store-dir",
        type=Path,
        help="JetStream store dir for the config (with --node: of each node's own dir, "
        "default <out>/jetstream)",
    )
    conf.add_argument(
        "--node",
        type=natsconf.parse_node,
        action="append",
        default=[],
        metavar="NAME=HOST:CLIENT_PORT:CLUSTER_PORT",
        help="a server of a NATS cluster (repeatable): writes nats-NAME.conf per node, with "
        "routes to the others, instead of nats.conf",
    )
    conf.add_argument("--cluster-name", default=natsconf.DEFAULT_CLUSTER, help="with --node")
    for name in ("pool", "worker", "http"):
        sub.add_parser(
            name, help=f"run a {name} alone (see `llorch {name} --help`)", add_help=False
        )
    return parser


_PACKAGES = {"pool": "llorch_pool", "worker": "llorch_worker", "http": "llorch_http"}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in _PACKAGES:  # owned by their packages: hand over
        package = _PACKAGES[argv[0]]
        os.execv(sys.executable, [sys.executable, "-m", package, *argv[1:]])
    if argv[:2] == ["models", "add"]:
        os.execv(sys.executable, [sys.executable, "-m", "llorch_pool", *argv])
    args = build_parser().parse_args(argv)
    if getattr(args, "trace_console", False):  # children inherit it through the environment
        os.environ["OTEL_TRACES_EXPORTER"] = "console"
    if args.command in ("generate", "run", "batch"):
        tracing.setup_tracing("llorch-cli")
    _use_uvloop()
    try:
        code = asyncio.run(_dispatch(args))
    except KeyboardInterrupt:
        code = 130
    except _EXPECTED as exc:  # one line, never a traceback: the message says what to do
        print(f"llorch: {_one_line(exc)}", file=sys.stderr)
        code = 1
    sys.exit(code)


# Failures a user can meet on a healthy install: wrong URL or credentials, a stack that went
# away, a coded refusal. Anything else is a bug and keeps its traceback.
_EXPECTED = (
    StackError,
    settings.ConfigError,
    client.Failed,
    ProtocolError,
    nats.errors.Error,
    OSError,
)


def _one_line(exc: BaseException) -> str:
    match exc:
        case nats.errors.TimeoutError():
            return "no reply from the orchestrator in time; is `llorch up` still running?"
        case nats.errors.ConnectionClosedError() | nats.errors.UnexpectedEOF():
            return "the connection to NATS closed; is `llorch up` still running?"
    return str(exc) or type(exc).__name__


def _use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _dispatch(args: argparse.Namespace) -> int:
    if args.command in ("up", "run"):
        return await _up(args)
    if args.command == "orch":
        from .serve import serve

        cfg, batch_cfg = settings.from_args(args), load_batch(args.config, args.stream_replicas)
        creds = Credentials.from_args(args, os.environ)
        return await serve(
            args.nats_url or DEFAULT_NATS_URL,
            cfg,
            Subjects(args.prefix),
            batch_cfg,
            creds,
            args.metrics_port,
            args.operator,
            args.record_events,
            args.name,
            args.lease_ttl,
        )
    if args.command == "nats-config":
        return _nats_config(args)
    nc = await _connect(*_client_endpoint(args))
    try:
        if args.command == "batch":
            return await batch_cli.run(nc, args)
        if args.command == "generate":
            return await _generate(nc, args)
        return await _ask(nc, args)
    except nats.errors.TimeoutError:
        # a publish the server refused (permissions) is never answered: say that, not "late"
        if (refused := permission_refusal(nc)) is not None:
            raise StackError(f"NATS refused it: {refused}") from None
        raise
    finally:
        await nc.close()


async def _ask(nc: Client, args: argparse.Namespace) -> int:
    """The one-request commands: state, models, job, cancel."""
    subjects = Subjects(args.prefix)
    if args.command == "state":
        return _print_table(await client.state(nc, subjects), state_table)
    if args.command == "models":
        return _print_table(await client.models(nc, subjects), models_table)
    if args.command == "job":
        info = await client.job(nc, args.job_id, subjects)
        return _print_table(info, lambda job: job_table(job, time.time()))
    print(_ok(await client.cancel(nc, args.job_id, subjects)).outcome)
    return 0


def _client_endpoint(args: argparse.Namespace) -> tuple[str, Credentials]:
    """Where and as whom a client command connects: flags and env first, else what
    `llorch up` recorded in the data dir (its URL, the identity it made for this host's CLI),
    else the defaults."""
    name = "producer-cli" if args.command == "batch" else "client-cli"
    creds = Credentials.from_args(args, os.environ)
    return stack_endpoint(args.data_dir, args.nats_url, creds, name)


def _nats_config(args: argparse.Namespace) -> int:
    subjects, creds = Subjects(args.prefix), args.out / "creds"
    if not args.node:
        path = natsconf.write_deployment(
            args.out, subjects, args.pool_id, args.client, args.producer, args.listen,
            args.store_dir,
        )  # fmt: skip
        print(f"wrote {path} and seeds in {creds}", file=sys.stderr)
        return 0
    if args.listen:
        raise settings.ConfigError("--listen and --node: each node says where it listens")
    paths = natsconf.write_cluster(
        args.out, subjects, args.node, args.pool_id, args.client, args.producer,
        args.store_dir, args.cluster_name,
    )  # fmt: skip
    names = ", ".join(p.name for p in paths)
    print(f"wrote {names} in {args.out}, seeds and the route secret in {creds}", file=sys.stderr)
    return 0


async def _connect(url: str, credentials: Credentials) -> Client:
    """A connection, or a StackError that says in one line why there is none."""
    errors: list[Exception] = []

    async def keep(exc: Exception) -> None:  # reported once, below, not as tracebacks
        errors.append(exc)

    try:
        # nats-py retries forever with 0 attempts; 1 gives one retry, then NoServersError
        return await client.connect(
            url,
            credentials,
            connect_timeout=3,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.2,
            error_cb=keep,
        )
    except ProtocolError as exc:  # our side: a seed or creds file that cannot be used
        raise StackError(exc.message) from None
    except Exception as exc:
        errors.append(exc)
    if any(_is_auth_error(e) for e in errors):
        raise StackError(
            f"NATS at {url} refused the credentials ({credentials.describe()}): authentication "
            f"failed; pass the identity of that server (--nkey-seed/--creds, or --data-dir of "
            f"the `llorch up` that runs it)"
        )
    raise StackError(f"cannot reach NATS at {url} ({errors[-1]}); is `llorch up` running?")


def _is_auth_error(exc: Exception) -> bool:
    return isinstance(exc, nats.errors.AuthorizationError) or "authorization" in str(exc).lower()


async def _up(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    if args.nats_url:
        stack = Stack(data_dir, args.nats_url, args.prefix, creds_dir=args.creds_dir)
        (data_dir / "logs").mkdir(exist_ok=True)
    else:
        port = args.port if args.command == "up" else None
        port = port or (4222 if args.command == "up" else None)
        stack = Stack.start_server(data_dir, port, args.prefix, args.pool_id, args.listen)
    http: socket.socket | None = None
    try:
        pool = ["llorch_pool", "serve", "--pool-id", args.pool_id, "--data-dir", str(data_dir)]
        if args.cpu:
            pool.append("--cpu")
        if args.cpu_memory_bytes:
            pool += ["--cpu-memory-bytes", str(args.cpu_memory_bytes)]
        if args.device_memory_limit:
            pool += ["--device-memory-limit", str(args.device_memory_limit)]
        for model_dir in args.allow_model_dir:  # resolved: the pool may run in another cwd
            pool += ["--allow-model-dir", str(model_dir.resolve())]
        pool += stack.seed_args(f"pool-{args.pool_id}")
        pool += stack.seed_args(f"worker-{args.pool_id}", "--worker-nkey-seed")
        orch = ["llorch_orch", "orch", *settings.to_args(args), *stack.seed_args("orchestrator")]
        orch += stack.operator_args()
        port = args.metrics_port  # explicit to each child (0 = off): they must not share one
        orch += ["--metrics-port", str(port or 0)]
        pool += ["--metrics-port", str(port + 1 if port else 0)]
        stack.spawn("orchestrator", orch)
        stack.spawn("pool", pool)
        http = _start_http(stack, args)
        hb = await stack.wait_ready(args.pool_id)
        if http is not None:
            await edge.wait_ready(stack, http)
        # `up` only: a Ctrl-C from the moment "up" is printed is a clean stop, and `run` is
        # gone before anyone could use the record
        stop = _stop_event() if args.command == "up" else None
        if stop is not None:
            write_stack_record(data_dir, stack.nats_url, stack.creds_dir)
        _announce(stack, hb, args.http if http is not None else None)
        if stop is None:
            nc = await _connect(stack.nats_url, stack.credentials("client-cli"))
            try:
                return await _generate(nc, args)
            finally:
                await nc.close()
        await stack.supervise(stop)
        return 0
    finally:
        remove_stack_record(data_dir)
        stack.stop()
        if http is not None:
            http.close()


def _announce(stack: Stack, hb: Heartbeat, http: tuple[str, int] | None) -> None:
    """What `up` prints once it serves: where, on what, and where the logs are."""
    devices = ", ".join(f"{d.name} ({d.total_bytes >> 20} MiB)" for d in hb.devices)
    print(f"llorch is up on {stack.nats_url}: pool {hb.pool_id} with {devices}", file=sys.stderr)
    if http is not None:
        home = edge.url(*http)
        print(f"OpenAI API on {home}v1, dashboard on {home}", file=sys.stderr)
    print(f"logs: {stack.data_dir / 'logs'}", file=sys.stderr)


def _http_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--http",
        type=edge.address,
        default=edge.DEFAULT,
        metavar="HOST:PORT|off",
        help=f"the OpenAI-compatible API and the dashboard (default {edge.DEFAULT})",
    )
    p.add_argument(
        "--api-key-file",
        type=Path,
        metavar="FILE",
        help="the HTTP API's keys, one per line (also $LLORCH_HTTP_API_KEYS); required when "
        "--http binds a non-loopback address",
    )
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve a non-loopback --http address without API keys",
    )


def _start_http(stack: Stack, args: argparse.Namespace) -> socket.socket | None:
    """The HTTP edge, for `up` unless `--http off`: its socket (bound here, see edge.py)."""
    if args.command != "up" or args.http is None:
        return None
    sock = edge.bind(*args.http)
    extra = ["--data-dir", str(args.data_dir)]
    if args.api_key_file:
        extra += ["--api-key-file", str(args.api_key_file.resolve())]
    if args.insecure_no_auth:
        extra.append("--insecure-no-auth")
    port = args.metrics_port
    extra += ["--metrics-port", str(port + 2 if port else 0)]
    edge.spawn(stack, sock, extra)
    return sock


def _stop_event() -> asyncio.Event:
    """Set by SIGINT or SIGTERM (instead of KeyboardInterrupt)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _generate(nc: Client, args: argparse.Namespace) -> int:
    """One generation in the CLI's CLIENT span: the root of the request's trace."""
    subject = Subjects(args.prefix).generate
    attrs = tracing.messaging("send", subject, subject, **{tracing.MODEL: args.model})
    span = tracing.tracer("llorch.cli").start_span(
        tracing.span_name("send", subject), kind=tracing.CLIENT, attributes=attrs
    )
    with trace.use_span(span, end_on_exit=True):  # client.stream injects its context
        return await _print_generation(nc, args)


async def _chat_or_raw(
    nc: Client, args: argparse.Namespace
) -> tuple[str | None, list[ChatMessage] | None]:
    """(prompt, messages): chat when the model has a chat template (or --system asks for it),
    the raw prompt with --raw or when the model has none."""
    if args.raw:
        return args.prompt, None
    messages = [ChatMessage(role="user", content=args.prompt)]
    if args.system is not None:
        return None, [ChatMessage(role="system", content=args.system), *messages]
    catalog = _ok(await client.models(nc, Subjects(args.prefix)))
    entry = next((e for e in catalog.models if e.model.name == args.model), None)
    if entry is not None and not entry.model.has_chat_template:
        print(f"[{args.model} has no chat template: sent as a raw prompt]", file=sys.stderr)
        return args.prompt, None
    return None, messages  # an unknown model: the orchestrator names the ones it knows


async def _print_generation(nc: Client, args: argparse.Namespace) -> int:
    prompt, messages = await _chat_or_raw(nc, args)
    request = GenerateRequest(
        model=args.model,
        prompt=prompt,
        messages=messages,
        max_tokens=args.max_tokens,
        seed=args.seed,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        stop=args.stop,
        job_id=args.job_id,
    )
    start = time.perf_counter()
    first: float | None = None
    # aclosing: the stream unsubscribes now, not when collected after the connection closed
    subjects = Subjects(args.prefix)
    events = contextlib.aclosing(client.stream(nc, request, subjects))
    async with events as stream:
        async for event in stream:
            if isinstance(event, Queued):
                _waiting(event, await _reasons(nc, event.job_id, subjects))
            elif _show(event, start, first):
                first = first or time.perf_counter()
            if isinstance(event, Error):
                if first is not None:
                    print()  # end the partial answer's line
                raise client.Failed(event)
    return 0


async def _reasons(nc: Client, job_id: str, subjects: Subjects) -> list[str]:
    """Why a queued job waits, as placement says (`llorch job ID` shows the same); none when
    the orchestrator cannot say at once: the stream goes on either way."""
    with contextlib.suppress(NatsTimeout, NoRespondersError):
        info = await client.job(nc, job_id, subjects, timeout=2.0, ready_s=0)
        if isinstance(info, JobInfo):
            return info.reasons
    return []


def _waiting(event: Queued, reasons: list[str]) -> None:
    """A queued job's line: its place, and what the wait is for (a worker that loads, busy
    slots, memory)."""
    why = "".join(f"; {reason}" for reason in reasons)
    print(f"[waiting for a worker: position {event.position} in line{why}]", file=sys.stderr)


def _show(event: Event, start: float, first: float | None) -> bool:
    """Print one event of a generation; whether it was text."""
    match event:
        case Token(text=text):
            print(text, end="", flush=True)
            return True
        case End():
            print()
            ttft = ((first or time.perf_counter()) - start) * 1000
            rate = event.tokens_out / max(event.total_ms - event.ttft_ms, 1e-6) * 1000
            print(
                f"-- {event.tokens_out} tokens, finish {event.finish_reason}, "
                f"first token {ttft:.1f} ms, {rate:.1f} tokens/s",
                file=sys.stderr,
            )
    return False


def _print_table(reply: T | Error, table: Callable[[T], str]) -> int:
    print(table(_ok(reply)))
    return 0


def _ok(reply: T | Error) -> T:
    """The reply, or client.Failed: main prints a coded refusal as one line."""
    if isinstance(reply, Error):
        raise client.Failed(reply)
    return reply
