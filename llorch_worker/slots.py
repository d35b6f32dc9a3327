"""Continuous batching as data: which slots are free, where each sequence stands, and what one
engine step decodes. Pure: the engine thread does the llama.cpp calls this plans.

A slot is one sequence of the worker's single llama context (its `seq_id`), with its own
n_ctx of KV cache. Every step decodes one token for each sequence that is generating, plus
chunks of the prompts still waiting (chunked prefill), within a token budget: a long prompt is
spread over several steps and never stops the streams already running for longer than one.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

# The budget of one step: decoding sequences first, prompts the rest. On a CPU a step's time
# grows with its tokens, so prompts go in chunks that keep the running streams moving; a GPU
# takes llama-server's batch (its n_batch, 2048): a burst of new prompts is prefilled in one
# step, as there, for a few ms more on the step of the streams already running.
STEP_TOKENS = 256
GPU_STEP_TOKENS = 2048


class SlotTable:
    """The free slots; the lowest is taken first (slot 0 whenever the worker is idle)."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._free = list(range(slots))

    @property
    def busy(self) -> int:
        return self.slots - len(self._free)

    def take(self) -> int:
        """Raises IndexError when every slot is busy (the worker admits at most `slots` jobs)."""
        return heapq.heappop(self._free)

    def give_back(self, slot: int) -> None:
        if not 0 <= slot < self.slots or slot in self._free:
            raise ValueError(f"slot {slot} is not busy")
        heapq.heappush(self._free, slot)


@dataclass(slots=True)
class Progress:
    """Where one sequence stands. Its prompt fills positions 0..prompt_len-1; token k (1-based)
    is sampled from the logits of the position before it and decoded at prompt_len + k - 1."""

    slot: int
    prompt_len: int
    prefilled: int = 0  # prompt tokens decoded so far
    generated: int = 0  # tokens sampled so far

    @property
    def prefilling(self) -> bool:
        return self.prefilled < self.prompt_len

    @property
    def next_pos(self) -> int:
        """Position of the last sampled token, decoded in the next step."""
        return self.prompt_len + self.generated - 1


@dataclass(frozen=True, slots=True)
class Chunk:
    """Prompt tokens [start, stop) of the sequence in `slot`; `last`: they end its prompt, so
    the logits of the chunk's last token are sampled for its first generated token."""

    slot: int
    start: int
    stop: int
    last: bool


@dataclass(frozen=True, slots=True)
class StepPlan:
    decode: tuple[int, ...]  # slots that decode their last sampled token (one each)
    prefill: tuple[Chunk, ...]  # prompt chunks, in admission order

    @property
    def n_tokens(self) -> int:
        return len(self.decode) + sum(c.stop - c.start for c in self.prefill)

    @property
    def sampled(self) -> tuple[int, ...]:
        """Slots that sample a token after this step, in batch order."""
        return self.decode + tuple(c.slot for c in self.prefill if c.last)


def prefill_room(budget: int, decoding: int) -> int:
    """Prompt tokens one step may take: what the generating sequences leave of the budget, but at
    least a quarter of it, so a prompt still advances when many sequences generate."""
    return max(budget - decoding, budget // 4, 1)


def batch_capacity(budget: int, slots: int) -> int:
    """Tokens one step may hold at most (the llama batch's size): every slot decoding plus the
    prefill room that leaves."""
    return slots + prefill_room(budget, slots)


def plan_step(sequences: Sequence[Progress], budget: int = STEP_TOKENS) -> StepPlan:
    """`sequences` in admission order: the first waiting prompt is prefilled first."""
    decode = tuple(s.slot for s in sequences if not s.prefilling)
    room = prefill_room(budget, len(decode))
    chunks: list[Chunk] = []
    for s in sequences:
        if room == 0:
            break
        if s.prefilling:
            stop = min(s.prompt_len, s.prefilled + room)
            chunks.append(Chunk(s.slot, s.prefilled, stop, last=stop == s.prompt_len))
            room -= stop - s.prefilled
    return StepPlan(decode, tuple(chunks))
