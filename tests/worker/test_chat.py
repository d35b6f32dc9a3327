"""Chat: messages rendered with the model's own template (pure), and chat jobs on a real worker."""

from __future__ import annotations

import mmap
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from llorch_orch.natsserver import NatsServer
from llorch_pool.gguf_meta import parse_metadata
from llorch_worker.chat import TEMPLATE_KEY, ChatTemplate
from schemas import ChatMessage, End, Error, ErrorCode, ProtocolError, Token, WorkerReady

from .conftest import Stream, WorkerProc, generate, spawn_worker_async, stop_worker

SKY = [
    ChatMessage(role="system", content="Answer in one sentence."),
    ChatMessage(role="user", content="Why is the sky blue?"),
]
# The shape of many templates: roles must alternate, BOS written by the template itself.
STRICT = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant') }}"
    "{% endif %}[{{ m['role'] }}]{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)


def _bundled_template(model_path: Path) -> str:
    with model_path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return str(parse_metadata(buf)[TEMPLATE_KEY])


def test_the_bundled_template_renders_every_turn_and_opens_the_assistants(
    model_path: Path,
) -> None:
    text = ChatTemplate(_bundled_template(model_path), "<|im_start|>", "<|im_end|>").render(SKY)
    assert text == (
        "<|im_start|>system\nAnswer in one sentence.<|im_end|>\n"
        "<|im_start|>user\nWhy is the sky blue?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_bos_and_eos_are_the_models_and_the_template_decides_where() -> None:
    chat = ChatTemplate(STRICT, "<s>", "</s>")
    turns = [ChatMessage(role="user", content="hi")]
    assert chat.render(turns) == "<s>[user]hi</s>[assistant]"


def test_a_conversation_the_template_refuses_is_invalid_params_with_its_reason() -> None:
    chat = ChatTemplate(STRICT, "<s>", "</s>")
    turns = [ChatMessage(role="assistant", content="hello")]
    with pytest.raises(ProtocolError) as refused:
        chat.render(turns)
    assert refused.value.code == ErrorCode.INVALID_PARAMS
    assert "roles must alternate" in refused.value.message


@pytest.mark.parametrize(
    "source",
    [
        "{{ messages.__class__.__mro__ }}",  # reaching Python internals
        "{{ messages.append(1) }}",  # changing what it was given
        "{% for m in messages %}{{ m.content }",  # broken syntax
    ],
)
def test_a_hostile_or_broken_template_is_refused_not_run(source: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        ChatTemplate(source, "", "").render(SKY)
    assert refused.value.code == ErrorCode.INVALID_PARAMS
    assert "chat template" in refused.value.message


async def test_a_chat_job_answers_and_the_end_of_turn_never_shows(
    worker: WorkerProc, client: Client
) -> None:
    run = await generate(
        client, worker.worker_id, "chat-1", prompt=None, messages=SKY, max_tokens=48
    )
    assert isinstance(run.terminal, End), run.terminal
    tokens = [e for e in run.events if isinstance(e, Token)]
    assert run.terminal.tokens_out > 0 and tokens and run.text.strip()
    assert "<|im_end|>" not in run.text and "<|im_start|>" not in run.text
    # the rendered prompt, not the bare content: system + user turns and the assistant opener
    assert run.terminal.tokens_in > 20


async def test_chat_ends_at_the_end_of_turn_token(worker: WorkerProc, client: Client) -> None:
    """Greedy and with room to spare, the model closes its turn: finish `stop`, not `length`."""
    short = [ChatMessage(role="user", content="Say hello.")]
    run = await generate(
        client, worker.worker_id, "chat-2", prompt=None, messages=short, max_tokens=200
    )
    assert isinstance(run.terminal, End), run.terminal
    assert run.terminal.finish_reason == "stop" and run.terminal.tokens_out < 200


async def test_a_model_without_a_template_refuses_chat_and_still_serves_raw(
    module_server: NatsServer, templateless_model_path: Path
) -> None:
    bare = await spawn_worker_async(module_server.url, "w-bare", templateless_model_path)
    try:
        assert isinstance(bare.announced, WorkerReady), bare.announced
        nc = await nats.connect(module_server.url)
        try:
            async with Stream(nc, "chat-bare") as stream:
                chat = await stream.execute("w-bare", prompt=None, messages=SKY)
            assert isinstance(chat, Error) and chat.code == ErrorCode.NO_CHAT_TEMPLATE
            raw = await generate(nc, "w-bare", "raw-bare", max_tokens=4)
            assert isinstance(raw.terminal, End) and raw.terminal.tokens_out > 0
        finally:
            await nc.close()
    finally:
        stop_worker(bare)
