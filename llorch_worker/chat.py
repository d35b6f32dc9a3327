"""Chat messages -> prompt text, with the model's own template (the GGUF's
`tokenizer.chat_template`). Pure: no model, no I/O.

The template is code that came with a model file, so it runs in Jinja2's immutable sandbox:
it can format strings and loop over the messages, and nothing else (no attribute access to
Python internals, no mutation of what it is given).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NoReturn

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from schemas import ChatMessage, ErrorCode, ProtocolError
from schemas.text import clip  # a template may quote the conversation in its refusal

TEMPLATE_KEY = "tokenizer.chat_template"


@dataclass(frozen=True, slots=True)
class ChatTemplate:
    source: str
    bos_token: str  # text of the model's BOS/EOS tokens: templates write them out themselves
    eos_token: str

    def render(self, messages: list[ChatMessage]) -> str:
        """The conversation plus the opening of the assistant's turn (the generation prompt).

        A template that refuses the conversation (many insist that roles alternate) or is
        broken gives INVALID_PARAMS with its own message."""
        try:
            return _compile(self.source).render(
                messages=[{"role": m.role, "content": m.content} for m in messages],
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except _TemplateRefused as exc:
            why = clip(str(exc), 200)
            raise ProtocolError(ErrorCode.INVALID_PARAMS, f"chat template: {why}") from None
        except jinja2.TemplateError as exc:  # a syntax error is found at the first render
            why = clip(str(exc), 200)
            raise ProtocolError(
                ErrorCode.INVALID_PARAMS, f"the model's chat template failed: {why}"
            ) from None


class _TemplateRefused(Exception):
    """What a template's own `raise_exception(...)` raises."""


def _raise_exception(message: str) -> NoReturn:
    raise _TemplateRefused(message)


@lru_cache(maxsize=4)  # a worker has one model, so one template: compiled once
def _compile(source: str) -> jinja2.Template:
    # trim/lstrip as Hugging Face's transformers renders templates: the same text as upstream
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    return env.from_string(source)
