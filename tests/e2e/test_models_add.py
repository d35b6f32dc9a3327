"""Adding a model as a user does: `llorch models add`, then a generation on it at once, with
nothing in between (the command itself waits until the orchestrator lists the model)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from llorch_common import client
from llorch_common.connect import Credentials, without_credentials
from llorch_orch import natsconf
from llorch_orch.natsconf import Identity
from llorch_orch.natsserver import NatsServer
from llorch_orch.stack import Stack
from llorch_pool import catalog
from schemas import End, Error, GenerateRequest, ModelsReply, Subjects
from tests.e2e.conftest import ClusterFactory, terminal

LLORCH = [sys.executable, "-m", "llorch_orch"]
PROMPT = "Once upon a time"
SLOW_BEATS = ("--heartbeat-interval", "600")  # only a snapshot request can make the pool beat


async def llorch(*args: str, data_dir: Path) -> tuple[int, str, str]:
    """`llorch ARGS` with no credentials of the caller's and this data dir as the default."""
    env = {**without_credentials(os.environ), "LLORCH_DATA_DIR": str(data_dir)}
    env.pop("LLORCH_NATS_URL", None)
    proc = await asyncio.create_subprocess_exec(
        *LLORCH, *args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def copy_of(model_path: Path, where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(model_path, where / "mine.gguf"))


async def test_model_from_outside_the_data_dir_is_usable_at_once(
    make_cluster: ClusterFactory, model_path: Path, tmp_path: Path
) -> None:
    cluster = await make_cluster(pool_args=SLOW_BEATS)
    source = copy_of(model_path, tmp_path / "downloads")
    data_dir, url = cluster.stack.data_dir, cluster.stack.nats_url
    code, out, err = await llorch("models", "add", "mine", str(source), "--nats-url", url,
                                  data_dir=data_dir)  # fmt: skip
    assert code == 0, err
    placed = data_dir.resolve() / "models" / "mine.gguf"
    assert f"linked {source} as {placed}" in out
    assert "served: the orchestrator lists mine on pool p1" in out
    assert isinstance(terminal(await cluster.run(model="mine", prompt=PROMPT)), End)


async def test_allow_model_dir_serves_a_file_in_place(
    make_cluster: ClusterFactory, model_path: Path, tmp_path: Path
) -> None:
    shelf = tmp_path / "shelf"
    source = copy_of(model_path, shelf)
    cluster = await make_cluster(pool_args=(*SLOW_BEATS, "--allow-model-dir", str(shelf)))
    data_dir, url = cluster.stack.data_dir, cluster.stack.nats_url
    code, out, err = await llorch("models", "add", "mine", str(source), "--in-place",
                                  "--nats-url", url, data_dir=data_dir)  # fmt: skip
    assert code == 0, err
    assert f"registered {source} in place" in out
    assert catalog.load(data_dir)["mine"].path == str(source)
    assert isinstance(terminal(await cluster.run(model="mine", prompt=PROMPT)), End)


async def test_a_dir_not_allowed_is_refused_with_the_way_out(
    make_cluster: ClusterFactory, model_path: Path, tmp_path: Path
) -> None:
    source = copy_of(model_path, tmp_path / "shelf")
    cluster = await make_cluster(pool_args=SLOW_BEATS)
    data_dir, url = cluster.stack.data_dir, cluster.stack.nats_url
    code, _, err = await llorch("models", "add", "mine", str(source), "--in-place",
                                "--nats-url", url, data_dir=data_dir)  # fmt: skip
    assert code == 0 and f"llorch up --allow-model-dir {source.parent}" in err, err
    end = terminal(await cluster.run(model="mine", prompt=PROMPT))
    assert isinstance(end, Error) and "UNTRUSTED_MODEL" in end.message, end
    assert f"--allow-model-dir {source.parent}" in end.message


async def test_models_shows_the_context_a_request_can_use(
    make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    cluster = await make_cluster('[models."smollm2-135m"]\nn_ctx = 1024\n')
    reply = await client.models(cluster.nc)
    assert isinstance(reply, ModelsReply)
    assert [(e.model.name, e.n_ctx, e.model.n_ctx_train) for e in reply.models] == [
        ("smollm2-135m", 1024, 8192)
    ]
    url = cluster.stack.nats_url
    code, out, err = await llorch("models", "--nats-url", url, data_dir=tmp_path / "nocreds")
    assert code == 0, err
    header, row = out.splitlines()
    columns = dict(zip(header.split(), re.split(r"\s{2,}", row), strict=True))
    shown = (columns["USABLE_CTX"], columns["TRAINED_CTX"], columns["CHAT"])
    assert shown == ("1024", "8192", "yes")
    # the figure shown is the one admission enforces
    overflow = terminal(await cluster.run(prompt=PROMPT, max_tokens=1024))
    assert isinstance(overflow, Error) and overflow.code == "CONTEXT_OVERFLOW", overflow


async def test_with_auth_on_the_cli_announces_as_the_hosts_admin(
    model_path: Path, tmp_path: Path
) -> None:
    """The identities `llorch up` makes: a client may not ask pools for a snapshot, so the
    command uses the admin seed of the data dir; the generation then runs as `client-cli`."""
    data_dir = tmp_path / "data"
    stack = auth_stack(data_dir, "p1")
    try:
        stack.spawn("orchestrator", ["llorch_orch", "orch", *stack.seed_args("orchestrator")])
        stack.spawn("pool", ["llorch_pool", "serve", "--pool-id", "p1", "--data-dir",
                             str(data_dir), "--cpu", *stack.seed_args("pool-p1"),
                             *stack.seed_args("worker-p1", "--worker-nkey-seed")])  # fmt: skip
        source = copy_of(model_path, tmp_path / "downloads")
        code, out, err = await llorch("models", "add", "mine", str(source),
                                      "--nats-url", stack.nats_url, data_dir=data_dir)  # fmt: skip
        assert code == 0 and "served: the orchestrator lists mine" in out, err
        creds = Credentials(nkey_seed_file=data_dir / "creds" / "client-cli.nk")
        nc = await client.connect(stack.nats_url, creds)
        try:
            request = GenerateRequest(model="mine", prompt=PROMPT, max_tokens=4)
            events = [e async for e in client.stream(nc, request, stall_s=60)]
        finally:
            await nc.close()
        assert isinstance(terminal(events), End), events
    finally:
        stack.stop()


async def test_an_identity_the_server_refuses_gets_one_line_and_status_1(
    model_path: Path, tmp_path: Path
) -> None:
    stack = auth_stack(tmp_path / "data", "p1")
    try:
        (stranger,) = natsconf.ensure_seeds(tmp_path / "other", [Identity("me", "client")])
        seed = natsconf.seed_file(tmp_path / "other", stranger.name)
        source = copy_of(model_path, tmp_path / "downloads")
        code, _, err = await llorch("models", "add", "mine", str(source), "--nats-url",
                                    stack.nats_url, "--nkey-seed", str(seed),
                                    data_dir=stack.data_dir)  # fmt: skip
    finally:
        stack.stop()
    assert code == 1 and err.startswith("error: MODEL_NOT_FOUND: NATS at"), err
    assert "refused us" in err and "Authorization Violation" in err and "Traceback" not in err


def auth_stack(data_dir: Path, pool_id: str) -> Stack:
    """What `Stack.start_server` (`llorch up`) makes: a seed per identity in `<data>/creds` and a
    server that enforces the role table (its log goes nowhere here)."""
    (data_dir / "logs").mkdir(parents=True)
    subjects = Subjects()
    creds_dir = data_dir / "creds"
    ids = natsconf.ensure_seeds(creds_dir, natsconf.deployment([pool_id]))
    natsconf.write_config(data_dir / "nats.conf", natsconf.render(ids, subjects))
    server = NatsServer.start(data_dir / "jetstream", config=data_dir / "nats.conf")
    return Stack(data_dir, server.url, subjects.prefix, server=server, creds_dir=creds_dir)


async def test_up_allow_model_dir_reaches_the_pool(model_path: Path, tmp_path: Path) -> None:
    """Add first (no stack yet), then `llorch run` with the dir allowed."""
    source = copy_of(model_path, tmp_path / "shelf")
    data_dir = tmp_path / "data"
    code, out, err = await llorch("models", "add", "mine", str(source), "--in-place",
                                  data_dir=data_dir)  # fmt: skip
    assert code == 0 and "will be served when it starts" in out, err
    code, out, err = await llorch("run", "Hi", "--model", "mine", "--max-tokens", "3",
                                  "--allow-model-dir", str(source.parent), "--data-dir",
                                  str(data_dir), data_dir=data_dir)  # fmt: skip
    assert code == 0 and "3 tokens" in err, err
