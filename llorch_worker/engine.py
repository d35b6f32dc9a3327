"""The model: one `llama_cpp.Llama` per process, loaded and run on ONE dedicated thread.

Import order matters: on a CUDA build, importing `nats` before `llama_cpp` made the CUDA
model load segfault (seen on H200). `__main__` imports `llama_cpp` first; a GPU load
refuses to run if the rule was broken. `sys.modules` keeps import order, so it tells.
"""

from __future__ import annotations

import asyncio
import ctypes
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import llama_cpp

from llorch_worker.chat import TEMPLATE_KEY, ChatTemplate
from llorch_worker.loadlog import load_failure_code, placement
from llorch_worker.textstream import TextStream
from schemas import ErrorCode, Execute, ProtocolError
from schemas.api import sampling_temperature

_GGML_WARN = 3  # ggml_log_level: WARN = 3, ERROR = 4
_GGML_ERROR = 4


def imported_before(first: str, second: str, modules: list[str]) -> bool:
    """Whether module `first` was imported before `second` (`modules` in import order)."""
    return first in modules and (
        second not in modules or modules.index(first) < modules.index(second)
    )


@dataclass(frozen=True, slots=True)
class Loaded:
    layers_offloaded: int
    layers_total: int  # n_layer + 1: llama.cpp counts the output layer
    load_ms: float


class LoadFailed(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Finished:
    reason: Literal["stop", "length", "cancelled"]
    tokens_in: int
    tail: str  # text held back until the end (a partial stop match that never completed)


@dataclass(frozen=True, slots=True)
class Failed:
    code: ErrorCode
    message: str
    tokens_in: int = 0


Outcome = Finished | Failed
# What the engine thread hands to asyncio: one str per generated token ("" while text is held
# back), then exactly one Outcome.
Item = str | Outcome


class _LoadLog:
    """llama.cpp's log, kept while a load runs (it is the only report of layer placement)."""

    def __init__(self) -> None:
        self.lines: list[str] | None = None
        # Keep a reference: llama.cpp calls this pointer for the life of the process.
        self.callback = llama_cpp.llama_log_callback(self._on_log)
        llama_cpp.llama_log_set(self.callback, ctypes.c_void_p(0))

    def _on_log(self, level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        line = text.decode("utf-8", errors="replace")
        if self.lines is not None:
            self.lines.append(line)
        if level in (_GGML_WARN, _GGML_ERROR):
            sys.stderr.write(line)


class Engine:
    def __init__(self, model_path: Path, n_ctx: int, gpu: bool, threads: int | None) -> None:
        self._model_path = model_path
        self._n_ctx = n_ctx
        self._gpu = gpu
        self._threads = threads
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._llm: llama_cpp.Llama | None = None
        self._chat: ChatTemplate | None = None  # None: the model has no template, no chat
        self._log: _LoadLog | None = None

    async def load(self) -> Loaded:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._load)

    async def prepare(self, job: Execute) -> list[int]:
        """The job's prompt tokens, or ProtocolError when the job cannot run on this model (a
        chat its template refuses, no template, an empty prompt, no room in the context): found
        before the worker accepts the job, so the refusal is its execute answer."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._prepare, job)

    def start(
        self,
        job: Execute,
        prompt: list[int],
        cancel: threading.Event,
        deliver: Callable[[Item], None],
    ) -> None:
        """Run `job` (its `prompt` from `prepare`) on the engine thread; `deliver` gets every
        Item, the Outcome last. `deliver` is called on the engine thread: it must hand over
        thread-safely."""
        self._thread.submit(self._run, job, prompt, cancel, deliver)

    def close(self) -> None:
        self._thread.shutdown(wait=True)

    def _load(self) -> Loaded:
        if self._gpu and imported_before("nats", "llama_cpp", list(sys.modules)):
            raise LoadFailed(
                ErrorCode.MODEL_LOAD_FAILED,
                "nats was imported before llama_cpp; a CUDA load may crash. "
                "Start the worker with `python -m llorch_worker`.",
            )
        if self._gpu and not llama_cpp.llama_supports_gpu_offload():
            raise LoadFailed(ErrorCode.MODEL_LOAD_FAILED, "llama-cpp-python built without GPU")
        log = self._log = _LoadLog()  # kept: llama.cpp holds the callback pointer
        log.lines = []
        started = time.perf_counter()
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(self._model_path),
                n_gpu_layers=-1 if self._gpu else 0,
                n_ctx=self._n_ctx,
                n_threads=self._threads,
                n_threads_batch=self._threads,
                verbose=False,
            )
        except Exception as exc:
            tail = "".join(log.lines[-5:]).strip()
            code = load_failure_code(self._gpu, log.lines, str(exc))
            raise LoadFailed(code, f"{exc} | {tail}" if tail else str(exc)) from None
        finally:
            lines, log.lines = log.lines, None
        load_ms = (time.perf_counter() - started) * 1000.0
        self._chat = _chat_template(self._llm)
        total = llama_cpp.llama_model_n_layer(self._llm.model) + 1
        if not self._gpu:
            self._warm_up()
            return Loaded(layers_offloaded=0, layers_total=total, load_ms=load_ms)
        placed = placement(lines)
        sys.stderr.writelines(line for line in lines if "offloaded" in line)  # the worker's log
        if not placed.full or placed.total != total:
            raise LoadFailed(
                ErrorCode.INSUFFICIENT_VRAM,
                f"only {placed.offloaded}/{total} layers were placed on the GPU",
            )
        self._warm_up()
        return Loaded(layers_offloaded=placed.offloaded, layers_total=total, load_ms=load_ms)

    def _warm_up(self) -> None:
        """A short prompt and two tokens before the worker measures its memory: the first
        prompt and decode allocate workspaces (~165 MiB per process on an H200) that would
        otherwise appear only after `ready`, and the orchestrator learns the footprint there."""
        llm = self._llm
        assert llm is not None
        tokens = llm.tokenize(b"Hello, world. How are you today?", add_bos=True)
        for n, _ in enumerate(llm.generate(tokens, temp=0.0), start=1):
            if n >= 2:
                break
        llm.reset()

    def _run(
        self,
        job: Execute,
        prompt: list[int],
        cancel: threading.Event,
        deliver: Callable[[Item], None],
    ) -> None:
        try:
            outcome = self._generate(job, prompt, cancel, deliver)
        except Exception as exc:  # a failed decode must end the job, never the worker
            outcome = Failed(ErrorCode.INTERNAL, f"generation failed: {exc!r}")
        deliver(outcome)

    def _prepare(self, job: Execute) -> list[int]:
        llm = self._llm
        assert llm is not None, "prepare before load"
        prompt = self._prompt_tokens(job)
        n_in = len(prompt)
        if n_in == 0:
            raise ProtocolError(ErrorCode.INVALID_PARAMS, "empty prompt")
        if n_in + job.max_tokens > llm.n_ctx():
            raise ProtocolError(
                ErrorCode.CONTEXT_OVERFLOW,
                f"{n_in} prompt tokens + max_tokens {job.max_tokens} exceed n_ctx {llm.n_ctx()}",
            )
        return prompt

    def _generate(
        self,
        job: Execute,
        prompt: list[int],
        cancel: threading.Event,
        deliver: Callable[[Item], None],
    ) -> Outcome:
        llm = self._llm
        assert llm is not None, "generate before load"
        n_in = len(prompt)
        # Same seed, same text: a fresh sampler seeded per job and no KV-cache reuse between
        # jobs (a partial re-evaluation can shift logits and so the sampled tokens).
        llm.set_seed(job.seed)
        llm.reset()
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        text = TextStream(job.stop)
        temp = sampling_temperature(job.temperature)  # llama-cpp-python: greedy only at 0.0
        tokens = llm.generate(prompt, top_k=job.top_k, top_p=job.top_p, min_p=0.0, temp=temp)
        for n_out, token in enumerate(tokens, start=1):
            if cancel.is_set():
                return Finished("cancelled", n_in, "")
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                return self._finish("stop", n_in, text)
            step = text.feed(llm.detokenize([token]))
            deliver(step.text)
            if step.stopped:
                return Finished("stop", n_in, "")
            if n_out >= job.max_tokens:
                break
        return self._finish("length", n_in, text)

    def _prompt_tokens(self, job: Execute) -> list[int]:
        """The raw prompt as is, or the chat rendered with the model's template (ProtocolError
        when it refuses). special=True: control tokens in the text (`<|im_start|>`...) become
        the model's special tokens."""
        llm = self._llm
        assert llm is not None
        if job.messages is None:
            return llm.tokenize((job.prompt or "").encode("utf-8"), add_bos=True, special=True)
        if self._chat is None:
            raise ProtocolError(ErrorCode.NO_CHAT_TEMPLATE, "this model has no chat template")
        text = self._chat.render(job.messages)
        # a template that writes BOS itself must not get a second one from the tokenizer
        add_bos = not (self._chat.bos_token and text.startswith(self._chat.bos_token))
        return llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    @staticmethod
    def _finish(reason: Literal["stop", "length"], n_in: int, text: TextStream) -> Finished:
        last = text.finish()
        return Finished("stop" if last.stopped else reason, n_in, last.text)


def _chat_template(llm: llama_cpp.Llama) -> ChatTemplate | None:
    source = llm.metadata.get(TEMPLATE_KEY)
    if not source:
        return None
    bos, eos = _token_text(llm, llm.token_bos()), _token_text(llm, llm.token_eos())
    return ChatTemplate(source, bos, eos)


def _token_text(llm: llama_cpp.Llama, token: int) -> str:
    return "" if token < 0 else llm.detokenize([token], special=True).decode("utf-8", "replace")
