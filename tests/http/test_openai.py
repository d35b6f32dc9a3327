"""The official `openai` package against `llorch up --http`: every endpoint, both answer
shapes, and each error mapping, on the real stack and the bundled model."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
from typing import Any

import nats
import openai
import pytest

from llorch_common import client
from llorch_common.connect import Credentials
from llorch_common.local import seed_file
from llorch_orch.natsserver import NatsServer, free_port
from schemas import MAX_MESSAGE_BYTES, JobInfo, Subjects

from .conftest import BARE, BROKEN, KEY, MODEL, Edge, get

HI = [{"role": "user", "content": "Name three colours."}]
# a raw prompt the model continues for far longer than any test lets it run
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
LONG = 1000


def test_models_lists_the_catalog(edge: Edge) -> None:
    api = edge.openai()
    assert {m.id for m in api.models.list()} == {MODEL, BARE, BROKEN}
    assert api.models.retrieve(MODEL).owned_by == "llorch"
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("nosuch")


def test_chat_streamed_joins_to_the_plain_answer(edge: Edge) -> None:
    api = edge.openai()
    same = {"model": MODEL, "messages": HI, "max_tokens": 12, "temperature": 0, "seed": 7}
    plain = api.chat.completions.create(**same)  # type: ignore[call-overload]
    chunks = list(
        api.chat.completions.create(**same, stream=True, stream_options={"include_usage": True})  # type: ignore[call-overload]
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert plain.choices[0].message.content == text and text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert plain.choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert plain.usage is not None and plain.usage.completion_tokens == 12
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + 12
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-job-")


def test_completion_streams_and_ends_before_its_stop_sequence(edge: Edge) -> None:
    api = edge.openai()
    same: dict[str, Any] = {"model": MODEL, "prompt": COUNTING, "max_tokens": 12, "temperature": 0}
    full = api.completions.create(**same).choices[0].text
    assert " 12," in full, full  # the model counts on
    pieces = list(api.completions.create(**same, stop=[" 12,"], stream=True))
    text = "".join(p.choices[0].text for p in pieces)
    assert text == full[: full.index(" 12,")]
    assert pieces[-1].choices[0].finish_reason == "stop"
    plain = api.completions.create(**same, stop=" 12,")
    assert plain.choices[0].text == text and plain.choices[0].finish_reason == "stop"
    assert plain.usage is not None and plain.usage.completion_tokens < 12


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        # refused by the edge, against the OpenAI reference
        ({"temperature": 3}, "temperature", "invalid_value"),
        ({"n": 2}, "n", "unsupported_parameter"),
        ({"logprobs": True}, "logprobs", "unsupported_parameter"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools",
         "unsupported_parameter"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:,"}}]}]}, "messages[0].content[0]",
         "unsupported_parameter"),
        ({"extra_body": {"frobnicate": 1}}, "frobnicate", "unknown_parameter"),
        # refused by the orchestrator's admission, its coded error mapped
        ({"max_tokens": 5000}, None, "invalid_params"),  # over the deployment's cap (4096)
        ({"messages": [{"role": "user", "content": "x" * 300_000}]}, None, "payload_too_large"),
        # refused by the worker: prompt + max_tokens over the model's context
        ({"max_tokens": 4096}, None, "context_length_exceeded"),
    ],
)  # fmt: skip
def test_a_request_llorch_cannot_honour_is_a_400_naming_it(
    edge: Edge, fields: dict[str, Any], param: str | None, code: str
) -> None:
    body: dict[str, Any] = {"model": MODEL, "messages": HI, "max_tokens": 4, **fields}
    for stream in (False, True):  # a stream is refused with a real status too, not a 200
        with pytest.raises(openai.BadRequestError) as refused:
            edge.openai().chat.completions.create(**body, stream=stream)
        assert refused.value.status_code == 400, refused.value
        assert (refused.value.param, refused.value.code) == (param, code)
        assert refused.value.response.headers["x-should-retry"] == "false"


def test_a_model_without_a_chat_template_refuses_chat_but_completes(edge: Edge) -> None:
    api = edge.openai()
    with pytest.raises(openai.BadRequestError) as refused:
        api.chat.completions.create(model=BARE, messages=HI, max_tokens=4)  # type: ignore[arg-type]
    assert (refused.value.code, refused.value.param) == ("no_chat_template", "messages")
    assert "raw `prompt`" in refused.value.message  # what to do instead
    done = api.completions.create(model=BARE, prompt=COUNTING, max_tokens=4, temperature=0)
    assert done.choices[0].finish_reason == "length" and done.choices[0].text
    assert done.usage is not None and done.usage.completion_tokens == 4


def test_an_unknown_model_is_a_404_model_not_found(edge: Edge) -> None:
    with pytest.raises(openai.NotFoundError) as refused:
        edge.openai().chat.completions.create(model="nosuch", messages=HI)  # type: ignore[arg-type]
    assert refused.value.code == "model_not_found" and "smollm2-135m" in refused.value.message


def test_api_keys_are_required_and_checked(edge: Edge) -> None:
    for key in (None, "sk-wrong"):
        with pytest.raises(openai.AuthenticationError) as refused:
            edge.openai(key).models.list()
        assert refused.value.code == "invalid_api_key"
        assert KEY not in refused.value.message


def test_a_full_queue_is_a_429_with_retry_after(edge: Edge) -> None:
    """One job runs, one waits (the queue holds one), the third is refused: 429, with the
    orchestrator's retry hint as Retry-After. Both long jobs end by their clients leaving."""
    api = edge.openai()
    long: dict[str, Any] = {"model": MODEL, "prompt": COUNTING, "max_tokens": LONG,
                            "temperature": 0, "stream": True}  # fmt: skip
    running = api.completions.create(**long)
    next(iter(running))
    waiting = _in_thread(lambda: api.completions.create(**long))
    edge.until(lambda s: len(s["queue"]) == 1)
    try:
        with pytest.raises(openai.RateLimitError) as refused:
            api.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
        assert refused.value.code == "queue_full"
        assert int(refused.value.response.headers["retry-after"]) >= 1
        assert refused.value.response.headers["x-should-retry"] == "true"
    finally:
        running.close()
        waiting.join()
        waiting.result.close()  # type: ignore[attr-defined]
    edge.until(lambda s: not s["running"] and not s["queue"])


def test_a_client_that_leaves_mid_stream_cancels_its_job(edge: Edge) -> None:
    api = edge.openai()
    stream = api.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count to a thousand."}],
        max_tokens=LONG, temperature=0, stream=True,
    )  # fmt: skip
    first = next(iter(stream))
    job_id = first.id.removeprefix("chatcmpl-")
    stream.close()
    state = edge.until(lambda s: _ended(s, job_id))
    (job,) = [j for j in state["recent"] if j["job_id"] == job_id]
    assert job["state"] == "cancelled" and job["code"] == "CANCELLED"
    state = edge.until(lambda s: not s["running"])
    workers = [w for p in state["pools"] for w in p["workers"] if w["model"] == MODEL]
    assert [w["state"] for w in workers] == ["ready"]
    again = api.completions.create(model=MODEL, prompt="Hi", max_tokens=2)  # the worker serves
    assert again.usage is not None and again.usage.completion_tokens == 2


async def test_a_client_that_leaves_while_its_job_waits_takes_it_off_the_queue(
    edge: Edge,
) -> None:
    """The worker runs one stream; a second client's job waits in the queue (its client
    waits for the response headers) and that client leaves: its job ends cancelled without
    ever running, and the queue is empty again while the first stream still runs."""
    api = openai.AsyncOpenAI(base_url=f"{edge.url}v1", api_key=KEY, max_retries=0)
    long: dict[str, Any] = {"model": MODEL, "prompt": COUNTING, "max_tokens": LONG,
                            "temperature": 0, "stream": True}  # fmt: skip
    nc = await client.connect(edge.nats_url, _identity(edge, "client-http"))  # owns the jobs
    running = await api.completions.create(**long)
    try:
        await running.__anext__()
        waiting = asyncio.ensure_future(api.completions.create(**long))
        state = await asyncio.to_thread(edge.until, lambda s: len(s["queue"]) == 1)
        job_id = state["queue"][0]["job_id"]
        waiting.cancel()  # the SDK closes its connection
        state = await asyncio.to_thread(edge.until, lambda s: _ended(s, job_id))
        assert not state["queue"] and len(state["running"]) == 1
        info = await client.job(nc, job_id)
        assert isinstance(info, JobInfo), info
        assert (info.state, info.code) == ("cancelled", "CANCELLED")
        assert info.started_at is None and info.worker_id is None and info.tokens_out is None
        assert (await running.__anext__()).choices[0].text  # the first stream goes on
    finally:
        await running.close()
        await api.close()
        await nc.close()
    await asyncio.to_thread(edge.until, lambda s: not s["running"])


@pytest.mark.parametrize(
    "size",
    [MAX_MESSAGE_BYTES + 1, MAX_MESSAGE_BYTES - 100],  # over the body limit; over the bus's
)
def test_a_prompt_the_bus_cannot_carry_is_a_413(edge: Edge, size: int) -> None:
    """A body over 1 MiB is not read to its end; one under it whose request, encoded for the
    bus, is over the bus's message limit is refused the same way, not sent."""
    with pytest.raises(openai.APIStatusError) as refused:
        edge.openai().completions.create(model=MODEL, prompt="x" * size, max_tokens=1)
    assert refused.value.status_code == 413 and refused.value.code == "payload_too_large"


async def test_the_callers_trace_continues_onto_the_bus(edge: Edge) -> None:
    """A `traceparent` sent to the edge is the parent of what the edge publishes (tracing is
    off in the edge: the caller's context is handed on as is)."""
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    parent = f"00-{trace_id}-b7ad6b7169203331-01"
    admin = seed_file(edge.data_dir / "creds", "admin")
    nc = await nats.connect(edge.nats_url, nkeys_seed=str(admin))
    try:
        sub = await nc.subscribe(Subjects().generate)
        api = openai.AsyncOpenAI(base_url=f"{edge.url}v1", api_key=KEY, max_retries=0)
        answer = asyncio.ensure_future(
            api.completions.create(
                model=MODEL, prompt="Hi", max_tokens=2, extra_headers={"traceparent": parent}
            )
        )
        msg = await sub.next_msg(timeout=30)
        assert msg.headers is not None and msg.headers["traceparent"].split("-")[1] == trace_id
        assert (await answer).choices[0].finish_reason == "length"
        await api.close()
    finally:
        await nc.close()


def test_a_model_no_worker_can_load_is_a_503(edge: Edge) -> None:
    """The cluster cannot serve the model now: each worker started for it failed to load, and
    once the orchestrator's tries are spent the job fails WORKER_START_FAILED, a 503 that says
    why (the worker's load error), not a 500: nothing in the edge or the request is wrong."""
    with pytest.raises(openai.InternalServerError) as refused:
        edge.openai().completions.create(model=BROKEN, prompt="Hi", max_tokens=2)
    assert refused.value.status_code == 503 and refused.value.code == "worker_start_failed"
    assert "not within the file bounds" in refused.value.message  # llama.cpp's own words


def test_no_orchestrator_is_a_503_and_readyz_says_not_ready(nats_server: NatsServer) -> None:
    """An edge on a bus where nothing answers: generation is a retriable 503 once the
    start-up window has passed, and /readyz is 503 at once. The socket is bound here and
    handed down, as `llorch up` does: a request waits in its backlog until the edge serves."""
    sock = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    alone = subprocess.Popen(
        [sys.executable, "-m", "llorch_http", "--nats-url", nats_server.url,
         "--listen", url[7:-1], "--listen-fd", str(sock.fileno())],
        pass_fds=(sock.fileno(),), env=_without_llorch(),
    )  # fmt: skip
    try:
        status, ready = get(f"{url}readyz")
        assert status == 503 and ready["status"] == "not ready", ready
        api = openai.OpenAI(base_url=f"{url}v1", api_key="none", max_retries=0, timeout=60)
        with pytest.raises(openai.InternalServerError) as refused:
            api.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
        assert refused.value.status_code == 503 and refused.value.code == "unavailable"
        assert refused.value.response.headers["x-should-retry"] == "true"
    finally:
        sock.close()
        alone.terminate()
        assert alone.wait(timeout=30) == 0


def test_a_public_address_without_keys_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "llorch_http", "--listen", f"0.0.0.0:{free_port()}"],
        capture_output=True, text=True, timeout=60, env=_without_llorch(),
    )  # fmt: skip
    assert done.returncode == 2
    assert "without API keys" in done.stderr and "--insecure-no-auth" in done.stderr


class _Thread(threading.Thread):
    result: Any


def _in_thread(work: Any) -> _Thread:
    thread = _Thread(target=lambda: setattr(thread, "result", work()), daemon=True)
    thread.start()
    return thread


def _ended(state: dict[str, Any], job_id: str) -> bool:
    return any(j["job_id"] == job_id for j in state["recent"])


def _identity(edge: Edge, name: str) -> Credentials:
    return Credentials(nkey_seed_file=seed_file(edge.data_dir / "creds", name))


def _without_llorch() -> dict[str, str]:
    """This environment less llorch's own variables (keys, URLs, credentials)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LLORCH_")}
