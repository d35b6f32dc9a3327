"""The model: ONE GGUF per process, in one llama context of `slots` sequences, loaded and run on
ONE dedicated thread that decodes every running job together (continuous batching).

Each job is one sequence (a slot: its own `seq_id` and n_ctx of KV cache) with its own sampler
chain. The thread steps while any sequence runs; each step decodes one token for every
generating sequence plus chunks of waiting prompts (`slots.plan_step`), then samples. Other
work for the thread (the load, new jobs) waits in a queue and runs between steps. ctypes
calls release the GIL: the event loop publishes while a step computes.

Import order matters: on a CUDA build, importing `nats` before `llama_cpp` made the CUDA
model load segfault (seen on H200). `__main__` imports `llama_cpp` first; a GPU load
refuses to run if the rule was broken. `sys.modules` keeps import order, so it tells.
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

import llama_cpp
import numpy as np
from llama_cpp._internals import LlamaModel

from llorch_worker.chat import TEMPLATE_KEY, ChatTemplate
from llorch_worker.loadlog import load_failure_code, placement
from llorch_worker.outcome import Failed, Finished, Item, Outcome, after_token
from llorch_worker.slots import (
    GPU_STEP_TOKENS,
    STEP_TOKENS,
    Chunk,
    Progress,
    SlotTable,
    StepPlan,
    batch_capacity,
    plan_step,
)
from llorch_worker.textstream import TextStream
from schemas import ErrorCode, Execute, ProtocolError
from schemas.api import sampling_temperature

_GGML_WARN = 3  # ggml_log_level: WARN = 3, ERROR = 4
_GGML_ERROR = 4
_T = TypeVar("_T")


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


@dataclass(slots=True)
class _Sequence:
    """One running job on the engine thread."""

    job: Execute
    prompt: list[int]
    cancel: threading.Event
    deliver: Callable[[Item], None]
    sampler: llama_cpp.llama_sampler_p | None  # None: greedy, picked with the step's others
    progress: Progress
    text: TextStream = field(init=False)
    last_token: int = -1  # sampled, decoded in the next step

    def __post_init__(self) -> None:
        self.text = TextStream(self.job.stop)


class _Llama:
    """The loaded model and its one context (engine thread only)."""

    def __init__(self, model: LlamaModel, ctx: llama_cpp.llama_context_p, capacity: int) -> None:
        self.model = model
        self.ctx = ctx
        self.vocab = model.vocab
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.batch = llama_cpp.llama_batch_init(capacity, 0, 1)

    def free(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)
        self.model.close()

    def forget(self, slot: int) -> None:
        """The sequence's KV cache is free for the slot's next job."""
        llama_cpp.llama_memory_seq_rm(self.memory, slot, -1, -1)


class Engine:
    def __init__(
        self,
        model_path: Path,
        n_ctx: int,
        gpu: bool,
        threads: int | None,
        slots: int = 1,
        step_tokens: int | None = None,  # by device: STEP_TOKENS, GPU_STEP_TOKENS
        flash_attn: bool = False,
    ) -> None:
        self._model_path = model_path
        self._n_ctx = n_ctx  # per slot
        self._gpu = gpu
        self._threads = threads
        self._step_tokens = step_tokens or (GPU_STEP_TOKENS if gpu else STEP_TOKENS)
        self._flash_attn = flash_attn
        self._table = SlotTable(slots)
        self._llama: _Llama | None = None
        self._chat: ChatTemplate | None = None  # None: the model has no template, no chat
        self._log: _LoadLog | None = None
        self._running: dict[int, _Sequence] = {}  # by slot, in admission order
        self._calls: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="engine", daemon=True)
        self._thread.start()

    async def load(self) -> Loaded:
        return await self._on_thread(self._load)

    async def prepare(self, job: Execute) -> list[int]:
        """The job's prompt tokens, or ProtocolError when the job cannot run on this model (a
        chat its template refuses, no template, an empty prompt, no room in a slot's context):
        found before the worker accepts the job, so the refusal is its execute answer. Runs
        beside the engine thread, not between its steps: tokenizing only reads the vocabulary
        (llama-server tokenizes in its HTTP threads too), and a new job's answer need not wait
        for the step that is computing."""
        return await asyncio.to_thread(self._prepare, job)

    def start(
        self,
        job: Execute,
        prompt: list[int],
        cancel: threading.Event,
        deliver: Callable[[Item], None],
    ) -> None:
        """Run `job` (its `prompt` from `prepare`) in a free slot, beside the jobs running;
        `deliver` gets every Item, the Outcome last. The caller admits at most `slots` jobs at
        once. `deliver` is called on the engine thread: it must hand over thread-safely."""
        self._calls.put(partial(self._admit, job, prompt, cancel, deliver))

    def close(self) -> None:
        """Returns once the running jobs have ended and the model is freed."""
        self._calls.put(None)
        self._thread.join()

    async def _on_thread(self, fn: Callable[[], _T]) -> _T:
        done: Future[_T] = Future()

        def call() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:  # handed to the awaiting coroutine
                done.set_exception(exc)

        self._calls.put(call)
        return await asyncio.wrap_future(done)

    # --- the engine thread -----------------------------------------------------------------

    def _serve(self) -> None:
        closing = False
        while not (closing and not self._running):
            for call in self._calls_due(block=not self._running and not closing):
                if call is None:
                    closing = True
                else:
                    call()
            if self._running:
                self._step_or_fail()
        if self._llama is not None:
            self._llama.free()

    def _calls_due(self, block: bool) -> Iterator[Callable[[], None] | None]:
        """The queued calls: waits for one when `block` (nothing runs), else takes what is there."""
        if block:
            yield self._calls.get()
        while True:
            try:
                yield self._calls.get_nowait()
            except queue.Empty:
                return

    def _load(self) -> Loaded:
        if self._gpu and imported_before("nats", "llama_cpp", list(sys.modules)):
            raise LoadFailed(
                ErrorCode.MODEL_LOAD_FAILED,
                "nats was imported before llama_cpp; a CUDA load may crash. "
                "Start the worker with `python -m llorch_worker`.",
            )
        if self._gpu and not llama_cpp.llama_supports_gpu_offload():
            raise LoadFailed(ErrorCode.MODEL_LOAD_FAILED, "llama-cpp-python built without GPU")
        llama_cpp.llama_backend_init()
        log = self._log = _LoadLog()  # kept: llama.cpp holds the callback pointer
        log.lines = []
        started = time.perf_counter()
        try:
            self._llama = self._open()
        except Exception as exc:
            tail = "".join(log.lines[-5:]).strip()
            code = load_failure_code(self._gpu, log.lines, str(exc))
            raise LoadFailed(code, f"{exc} | {tail}" if tail else str(exc)) from None
        finally:
            lines, log.lines = log.lines, None
        load_ms = (time.perf_counter() - started) * 1000.0
        model = self._llama.model
        self._chat = _chat_template(model)
        total = llama_cpp.llama_model_n_layer(model.model) + 1
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

    def _open(self) -> _Llama:
        """The model, and one context of `slots` sequences of n_ctx each: the KV cache is not
        unified, so each sequence has its own (slots x n_ctx in all) and attends only to it.
        Threads as llama-cpp-python's `Llama` sets them, so one slot runs as the worker did."""
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0x7FFFFFFF if self._gpu else 0  # all layers
        model = LlamaModel(path_model=str(self._model_path), params=params, verbose=False)
        slots = self._table.slots
        capacity = batch_capacity(self._step_tokens, slots)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = self._n_ctx * slots
        cparams.n_seq_max = slots
        cparams.kv_unified = False
        cparams.n_batch = capacity
        cparams.n_ubatch = min(capacity, 512)
        # off as `Llama` sets it unless asked for (a default left to llama.cpp, "auto", changes
        # the numbers and so the greedy text of a job)
        cparams.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if self._flash_attn
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        cparams.yarn_attn_factor, cparams.yarn_beta_fast, cparams.yarn_beta_slow = 1.0, 32.0, 1.0
        cores = multiprocessing.cpu_count()
        cparams.n_threads = self._threads or max(cores // 2, 1)
        cparams.n_threads_batch = self._threads or cores
        ctx = llama_cpp.llama_init_from_model(model.model, cparams)
        if ctx is None:
            model.close()
            raise ValueError("Failed to create llama_context")
        return _Llama(model, ctx, capacity)

    def _warm_up(self) -> None:
        """A short prompt and two tokens before the worker measures its memory: the first
        prompt and decode allocate workspaces (~165 MiB per process on an H200) that would
        otherwise appear only after `ready`, and the orchestrator learns the footprint there."""
        llama = self._llama
        assert llama is not None
        prompt = llama.model.tokenize(b"Hello, world. How are you today?", True, False)
        sampler = llama_cpp.llama_sampler_init_greedy()
        seq = Progress(0, len(prompt))
        try:
            (out,) = self._decode(StepPlan((), _whole_prompt(seq)), {0: prompt}, {})
            seq.prefilled, seq.generated = len(prompt), 1
            token = llama_cpp.llama_sampler_sample(sampler, llama.ctx, out)
            self._decode(StepPlan((0,), ()), {}, {0: (token, seq.next_pos)})
        finally:
            llama_cpp.llama_sampler_free(sampler)
            llama.forget(0)

    def _prepare(self, job: Execute) -> list[int]:
        prompt = self._prompt_tokens(job)
        n_in = len(prompt)
        if n_in == 0:
            raise ProtocolError(ErrorCode.INVALID_PARAMS, "empty prompt")
        if n_in + job.max_tokens > self._n_ctx:
            raise ProtocolError(
                ErrorCode.CONTEXT_OVERFLOW,
                f"{n_in} prompt tokens + max_tokens {job.max_tokens} exceed n_ctx {self._n_ctx}",
            )
        return prompt

    def _admit(
        self,
        job: Execute,
        prompt: list[int],
        cancel: threading.Event,
        deliver: Callable[[Item], None],
    ) -> None:
        try:
            slot = self._table.take()
        except IndexError:
            deliver(Failed(ErrorCode.INTERNAL, "no free slot", len(prompt)))
            return
        # Same seed, same text: a fresh sampler chain per job, seeded with its seed, and an
        # empty sequence (the slot's cache was cleared when its last job ended). A greedy job
        # has none: its token is the largest logit, picked for all of them at once.
        sampler = _sampler_chain(job)
        self._running[slot] = _Sequence(
            job, prompt, cancel, deliver, sampler, Progress(slot, len(prompt))
        )

    def _step_or_fail(self) -> None:
        try:
            self._step()
        except Exception as exc:  # a failed decode must end the jobs, never the worker
            for seq in list(self._running.values()):
                n_in = len(seq.prompt)
                self._end(seq, Failed(ErrorCode.INTERNAL, f"generation failed: {exc!r}", n_in))

    def _step(self) -> None:
        for seq in [s for s in self._running.values() if s.cancel.is_set()]:
            self._end(seq, Finished("cancelled", len(seq.prompt), ""))
        if not self._running:
            return
        running = self._running
        plan = plan_step([s.progress for s in running.values()], self._step_tokens)
        prompts = {c.slot: running[c.slot].prompt for c in plan.prefill}
        decodes = {slot: _next_input(running[slot]) for slot in plan.decode}
        outputs = self._decode(plan, prompts, decodes)
        for chunk in plan.prefill:
            running[chunk.slot].progress.prefilled = chunk.stop
        greedy = self._greedy_picks([running[slot].sampler is None for slot in plan.sampled])
        for slot, index, pick in zip(plan.sampled, outputs, greedy, strict=True):
            self._sample(running[slot], index, pick)

    def _greedy_picks(self, greedy: list[bool]) -> list[int | None]:
        """The token of each greedy output of the step (None for the others): one argmax over
        the logits of all outputs, which llama.cpp holds in batch order, the step's sampled
        order. The same token as llama.cpp's greedy sampler (the first largest logit), without
        its pass per sequence over a vocabulary-sized candidate array."""
        if not any(greedy):
            return [None] * len(greedy)
        llama = self._llama
        assert llama is not None
        rows = np.ctypeslib.as_array(
            llama_cpp.llama_get_logits(llama.ctx), shape=(len(greedy), llama.n_vocab)
        )
        picks = rows.argmax(axis=1)
        return [int(token) if g else None for g, token in zip(greedy, picks, strict=True)]

    def _decode(
        self,
        plan: StepPlan,
        prompts: dict[int, list[int]],
        decodes: dict[int, tuple[int, int]],
    ) -> list[int]:
        """One llama_decode of the plan: decoding tokens first, then prompt chunks. Returns the
        batch index of each token whose logits are sampled, in `plan.sampled` order."""
        llama = self._llama
        assert llama is not None
        batch = llama.batch
        outputs = list(range(len(plan.decode)))
        for i, slot in enumerate(plan.decode):
            token, pos = decodes[slot]
            _put(batch, i, token, pos, slot, True)
        i = len(plan.decode)
        for chunk in plan.prefill:
            prompt = prompts[chunk.slot]
            for pos in range(chunk.start, chunk.stop):
                _put(batch, i, prompt[pos], pos, chunk.slot, False)
                i += 1
            if chunk.last:
                batch.logits[i - 1] = True
                outputs.append(i - 1)
        batch.n_tokens = i
        rc = llama_cpp.llama_decode(llama.ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        return outputs

    def _sample(self, seq: _Sequence, index: int, pick: int | None) -> None:
        llama = self._llama
        assert llama is not None
        if seq.sampler is None:
            assert pick is not None  # a greedy sequence's token comes with the step
            token = pick
        else:
            token = llama_cpp.llama_sampler_sample(seq.sampler, llama.ctx, index)
        seq.progress.generated += 1
        seq.last_token = token
        n_in = len(seq.prompt)
        if seq.cancel.is_set():
            self._end(seq, Finished("cancelled", n_in, ""))
            return
        eog = llama_cpp.llama_vocab_is_eog(llama.vocab, token)
        piece = None if eog else llama.model.detokenize([token])
        text, outcome = after_token(
            seq.text, piece, seq.progress.generated, seq.job.max_tokens, n_in
        )
        if text is not None:
            seq.deliver(text)
        if outcome is not None:
            self._end(seq, outcome)

    def _end(self, seq: _Sequence, outcome: Outcome) -> None:
        """Free the sequence's slot (its cache and sampler), then hand over its outcome: once a
        job has its outcome, its slot can take the next job."""
        llama = self._llama
        assert llama is not None
        slot = seq.progress.slot
        del self._running[slot]
        llama.forget(slot)
        if seq.sampler is not None:
            llama_cpp.llama_sampler_free(seq.sampler)
        self._table.give_back(slot)
        seq.deliver(outcome)

    def _prompt_tokens(self, job: Execute) -> list[int]:
        """The raw prompt as is, or the chat rendered with the model's template (ProtocolError
        when it refuses). special=True: control tokens in the text (`<|im_start|>`...) become
        the model's special tokens."""
        llama = self._llama
        assert llama is not None, "prepare before load"
        model = llama.model
        if job.messages is None:
            tokens: list[int] = model.tokenize((job.prompt or "").encode("utf-8"), True, True)
            return tokens
        if self._chat is None:
            raise ProtocolError(ErrorCode.NO_CHAT_TEMPLATE, "this model has no chat template")
        text = self._chat.render(job.messages)
        # a template that writes BOS itself must not get a second one from the tokenizer
        add_bos = not (self._chat.bos_token and text.startswith(self._chat.bos_token))
        rendered: list[int] = model.tokenize(text.encode("utf-8"), add_bos, True)
        return rendered


def _put(batch: llama_cpp.llama_batch, i: int, token: int, pos: int, seq: int, out: bool) -> None:
    batch.token[i] = token
    batch.pos[i] = pos  # type: ignore[call-overload]  # llama_cpp annotates pos as nested
    batch.n_seq_id[i] = 1
    ids = batch.seq_id[i]  # the token's sequences: just this one
    ids[0] = seq
    batch.logits[i] = out


def _next_input(seq: _Sequence) -> tuple[int, int]:
    """The token a generating sequence decodes next, and its position."""
    return seq.last_token, seq.progress.next_pos


def _whole_prompt(seq: Progress) -> tuple[Chunk, ...]:
    return (Chunk(seq.slot, 0, seq.prompt_len, last=True),)


def _sampler_chain(job: Execute) -> llama_cpp.llama_sampler_p | None:
    """The chain llama-cpp-python's `Llama.generate` built for the worker, without the stages
    that are no-ops at the worker's values (penalties 1.0, typical 1.0, min_p 0): top_k (0 =
    off) -> top_p -> temperature -> a draw seeded with the job's seed. None at temperature 0
    (below a small threshold): greedy, picked for every greedy sequence of a step at once
    (`Engine._greedy_picks`)."""
    temp = sampling_temperature(job.temperature)
    if temp == 0.0:
        return None
    params = llama_cpp.llama_sampler_chain_default_params()
    chain: llama_cpp.llama_sampler_p = llama_cpp.llama_sampler_chain_init(params)
    for stage in (
        llama_cpp.llama_sampler_init_top_k(job.top_k),
        llama_cpp.llama_sampler_init_top_p(job.top_p, 1),
        llama_cpp.llama_sampler_init_temp(temp),
        llama_cpp.llama_sampler_init_dist(job.seed),
    ):
        llama_cpp.llama_sampler_chain_add(chain, stage)
    return chain


def _chat_template(model: LlamaModel) -> ChatTemplate | None:
    source = model.metadata().get(TEMPLATE_KEY)
    if not source:
        return None
    bos, eos = _token_text(model, model.token_bos()), _token_text(model, model.token_eos())
    return ChatTemplate(source, bos, eos)


def _token_text(model: LlamaModel, token: int) -> str:
    if token < 0:
        return ""
    piece: bytes = model.detokenize([token], special=True)
    return piece.decode("utf-8", "replace")
