"""A generate request is either a raw prompt or chat messages, decided when it is decoded."""

from __future__ import annotations

import pytest

from schemas import (
    BatchJob,
    ChatMessage,
    ErrorCode,
    Execute,
    GenerateRequest,
    ProtocolError,
    decoder,
    encode,
)

_generate = decoder(GenerateRequest)


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "m"}',  # neither
        b'{"model": "m", "prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}',
        b'{"model": "m", "messages": []}',
    ],
    ids=["neither", "both", "no-messages"],
)
def test_exactly_one_of_prompt_and_messages(body: bytes) -> None:
    with pytest.raises(ProtocolError) as refused:
        _generate(body)
    assert refused.value.code == ErrorCode.INVALID_PARAMS
    assert "`prompt`" in refused.value.message and "`messages`" in refused.value.message


def test_an_unknown_role_is_invalid_params_and_names_the_field() -> None:
    with pytest.raises(ProtocolError) as refused:
        _generate(b'{"model": "m", "messages": [{"role": "tool", "content": "x"}]}')
    assert refused.value.code == ErrorCode.INVALID_PARAMS
    assert refused.value.message == "Invalid enum value 'tool' - at `$.messages[0].role`"


def test_chat_round_trips_and_the_other_messages_carry_it() -> None:
    turns = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="")]
    request = _generate(b'{"model": "m", "messages": ' + encode(turns) + b"}")
    assert request.messages == turns and request.prompt is None
    job = BatchJob(model="m", messages=turns, custom_id="c1")
    again = decoder(BatchJob)(encode(job))
    assert again == job and again.messages == turns and again.prompt is None
    with pytest.raises(ValueError, match="exactly one"):
        Execute(
            job_id="j", model="m", max_tokens=1, temperature=0, top_p=1, top_k=0, seed=0,
            stream="s",
        )  # fmt: skip
