"""The edge's pure parts: OpenAI bodies to jobs, coded errors to HTTP, the dashboard's
figures, API keys."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import pytest

from llorch_common.local import seed_file
from llorch_http import app, bodies, dashboard, keys, mapping
from llorch_http.errors import ApiError, from_wire
from llorch_orch import edge, natsconf
from llorch_orch.natsserver import NatsServer
from llorch_orch.stack import Stack, StackError
from schemas import (
    ChatMessage,
    ClusterState,
    Device,
    Error,
    ErrorCode,
    JobInfo,
    Leadership,
    PoolView,
)
from schemas.control import WorkerInfo


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def test_openai_defaults_not_llorchs() -> None:
    plan = mapping.plan("chat", _chat())
    r = plan.request
    assert (r.temperature, r.top_p, r.top_k, r.stop, r.seed) == (1.0, 1.0, 0, [], None)
    assert not plan.stream and not plan.include_usage


def test_every_mapped_field_arrives() -> None:
    plan = mapping.plan(
        "chat",
        _chat(
            messages=[
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"},
                                             {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": "ok", "refusal": None},
            ],
            max_tokens=5, max_completion_tokens=7, temperature=0, top_p=0.5, seed=3,
            stop="x", user="u", stream=True, stream_options={"include_usage": True}, n=1,
        ),
    )  # fmt: skip
    r = plan.request
    assert r.messages == [
        ChatMessage(role="system", content="be brief"),
        ChatMessage(role="user", content="a\nb"),
        ChatMessage(role="assistant", content="ok"),
    ]
    assert (r.max_tokens, r.temperature, r.top_p, r.seed, r.stop) == (7, 0.0, 0.5, 3, ["x"])
    assert plan.stream and plan.include_usage


def test_a_completion_takes_one_prompt() -> None:
    assert mapping.plan("completion", {"model": "m", "prompt": ["once"]}).request.prompt == "once"
    with pytest.raises(ApiError) as refused:
        mapping.plan("completion", {"model": "m", "prompt": ["a", "b"]})
    assert refused.value.param == "prompt" and refused.value.code == "unsupported_parameter"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"seed": -1}, "seed"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": [1]}, "stop"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages[0].name"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
         "messages[0].content[0]"),
        ({"model": ""}, "model"),
    ],
)  # fmt: skip
def test_what_cannot_be_honoured_is_refused_by_name(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as refused:
        mapping.plan("chat", _chat(**fields))
    assert refused.value.status == 400 and refused.value.param == param
    assert refused.value.body()["error"]["param"] == param


@pytest.mark.parametrize(
    "fields",
    [{"n": None}, {"logprobs": False}, {"frequency_penalty": 0}, {"tools": []},
     {"response_format": {"type": "text"}}, {"metadata": {"a": "b"}}, {"store": False},
     {"unknown": None}],
)  # fmt: skip
def test_fields_that_ask_for_nothing_are_accepted(fields: dict[str, Any]) -> None:
    mapping.plan("chat", _chat(**fields))


@pytest.mark.parametrize(
    ("code", "status", "openai_code"),
    [
        (ErrorCode.MODEL_NOT_FOUND, 404, "model_not_found"),
        (ErrorCode.CONTEXT_OVERFLOW, 400, "context_length_exceeded"),
        (ErrorCode.INVALID_PARAMS, 400, "invalid_params"),
        (ErrorCode.NO_CHAT_TEMPLATE, 400, "no_chat_template"),
        (ErrorCode.QUEUE_FULL, 429, "queue_full"),
        (ErrorCode.UNAVAILABLE, 503, "unavailable"),
        (ErrorCode.NO_CAPACITY, 503, "no_capacity"),
        (ErrorCode.WORKER_LOST, 503, "worker_lost"),
        (ErrorCode.INTERNAL, 500, "internal"),
        (ErrorCode.MODEL_LOAD_FAILED, 500, "model_load_failed"),
    ],
)
def test_wire_errors_map_to_statuses(code: ErrorCode, status: int, openai_code: str) -> None:
    error = from_wire(Error(code=code, message="why", retriable=False))
    assert (error.status, error.code, error.message) == (status, openai_code, "why")
    assert error.headers == {"x-should-retry": "false"}


def test_a_retry_hint_is_retry_after_in_whole_seconds() -> None:
    error = from_wire(
        Error(code=ErrorCode.QUEUE_FULL, message="full", retriable=True, retry_after_ms=1200)
    )
    assert error.headers == {"x-should-retry": "true", "retry-after": "2",
                             "retry-after-ms": "1200"}  # fmt: skip
    assert error.type == "rate_limit_error"


@pytest.mark.parametrize("kind", ["chat", "completion"])
@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("text", ["", " Paris", 'a "quote" \\ and\nnewline', "é🙂\x00"])
def test_a_token_frame_is_its_chunk_encoded(
    kind: mapping.Kind, include_usage: bool, text: str
) -> None:
    """The frame encoded once around the text is byte for byte the chunk encoded whole."""
    head = bodies.Head.of(kind, "job-1", 1700000000, "smollm2-135m")
    frame = bodies.TokenFrame.of(head, include_usage)
    assert frame(text) == bodies.sse(bodies.chunk(head, text, include_usage))


async def test_a_fault_of_the_edge_is_a_500_in_the_openai_shape(nats_server: NatsServer) -> None:
    """The edge's NATS connection closed for good (the edge exits then; requests in flight
    meet it): every route still answers an OpenAI error object, not a bare 500."""
    nc = await nats.connect(nats_server.url)
    await nc.close()
    transport = httpx.ASGITransport(app=app.build(app.Edge(nc)), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as http:
        for reply in (
            await http.get("/v1/models"),
            await http.post("/v1/completions", json={"model": "m", "prompt": "x"}),
            await http.post("/v1/completions", json={"model": "m", "prompt": "x", "stream": True}),
        ):
            assert reply.status_code == 500, reply.text
            error = reply.json()["error"]
            assert (error["type"], error["code"]) == ("server_error", "internal_error")


def _worker(state: str, memory: int | None, device: int = 0) -> WorkerInfo:
    return WorkerInfo(worker_id=f"w-{state}", model="m", device=device, pid=1, state=state,  # type: ignore[arg-type]
                      memory_bytes=memory)  # fmt: skip


def test_reserved_memory_is_held_or_promised_by_live_workers() -> None:
    gpu = Device(index=0, uuid="u", name="g", kind="gpu", total_bytes=100, free_bytes=60,
                 used_bytes=40)  # fmt: skip
    workers = [_worker("ready", 10), _worker("starting", None), _worker("exited", 50),
               _worker("busy", 7, device=1)]  # fmt: skip
    assert dashboard.reserved_bytes(gpu, workers, {"m": 25}) == 35


def test_the_view_shows_a_dash_for_what_is_not_known() -> None:
    ended = JobInfo(job_id="j1", state="finished", model="m", priority="interactive",
                    started_at=100.0, ended_at=102.0, ttft_ms=1000.0, tokens_out=10)  # fmt: skip
    old = JobInfo(job_id="j0", state="failed", model="m", priority="batch")
    waiting = JobInfo(job_id="j2", state="queued", model="m", priority="interactive",
                      position=1, reasons=["no free memory"], submitted_at=95.0)  # fmt: skip
    busy = WorkerInfo(worker_id="w", model="m", device=0, pid=1, state="busy", slots=4,
                      slots_busy=3)  # fmt: skip
    pool = PoolView(pool_id="p", alive=True, last_seen_ms_ago=500.0, devices=[], workers=[busy])
    state = ClusterState(pools=[pool], queue=[waiting], running=[], recent=[ended, old])
    assert dashboard.view(state, [], now=105.0)["leader"] is None  # an orchestrator before HA
    lead = Leadership(epoch=7, orchestrator="orch-a", since=45.0)
    state = msgspec.structs.replace(state, leader=lead)
    view = dashboard.view(state, [], now=105.0)
    assert view["leader"] == {"name": "orch-a", "epoch": 7, "for_s": 60.0}
    assert view["queue"][0]["reasons"] == ["no free memory"] and view["queue"][0]["waited_s"] == 10
    assert view["recent"][0]["tokens_per_s"] == 10.0  # 10 tokens in the 1 s after the first
    assert view["recent"][1]["tokens_per_s"] is None and view["recent"][1]["ttft_ms"] is None
    assert view["pools"][0]["last_seen_s"] == 0.5
    assert (
        view["pools"][0]["workers"][0]["slots"],
        view["pools"][0]["workers"][0]["slots_busy"],
    ) == (4, 3)


def test_keys_come_from_the_file_and_the_environment(tmp_path: Path) -> None:
    file = tmp_path / "keys"
    file.write_text("# ops\nsk-one\n\n  sk-two  \n")
    assert keys.load(file, {keys.KEYS_ENV: "sk-three, sk-four"}) == {
        "sk-one", "sk-two", "sk-three", "sk-four"}  # fmt: skip
    with pytest.raises(keys.KeySetupError):
        keys.load(tmp_path / "missing", {})


def test_a_key_is_checked_only_as_a_bearer_token() -> None:
    ring = frozenset({"sk-one"})
    assert keys.authorized("Bearer sk-one", ring) and keys.authorized("bearer sk-one", ring)
    for header in (None, "", "sk-one", "Bearer", "Bearer sk-two", "Basic sk-one"):
        assert not keys.authorized(header, ring)
    assert keys.authorized(None, frozenset())  # no keys: open


@pytest.mark.parametrize(
    ("host", "ok"), [("127.0.0.1", True), ("::1", True), ("localhost", True),
                     ("0.0.0.0", False), ("192.0.2.1", False), ("example.org", False)],
)  # fmt: skip
def test_only_loopback_may_go_without_keys(host: str, ok: bool) -> None:
    if ok:
        keys.check_binding(host, frozenset(), insecure_no_auth=False)
    else:
        with pytest.raises(keys.KeySetupError):
            keys.check_binding(host, frozenset(), insecure_no_auth=False)
        keys.check_binding(host, frozenset(), insecure_no_auth=True)
        keys.check_binding(host, frozenset({"k"}), insecure_no_auth=False)


def test_llorch_up_makes_the_edge_an_operator_and_needs_its_seed(tmp_path: Path) -> None:
    """The dashboard sees every job; a deployment made without the edge's identity says how
    to get one instead of starting an edge that cannot connect."""
    creds = tmp_path / "creds"
    made = natsconf.ensure_seeds(creds, natsconf.deployment(["p1"], clients=["cli", "http"]))
    keys_of = {i.name: i.public_key for i in made}
    stack = Stack(tmp_path, "nats://127.0.0.1:1", "llorch.v1", creds_dir=creds)
    assert stack.operator_args() == [
        "--operator", keys_of["admin"], "--operator", keys_of["client-http"]]  # fmt: skip
    seed_file(creds, "client-http").unlink()
    with socket.create_server(("127.0.0.1", 0)) as sock, pytest.raises(StackError) as refused:
        edge.spawn(stack, sock, [])
    assert "--client http" in str(refused.value) and "--http off" in str(refused.value)
