"""Continuous batching as data: slot bookkeeping and the plan of one engine step."""

from __future__ import annotations

import pytest

from llorch_worker.slots import (
    Chunk,
    Progress,
    SlotTable,
    StepPlan,
    batch_capacity,
    plan_step,
)


def test_slots_are_taken_lowest_first_and_given_back() -> None:
    table = SlotTable(3)
    assert [table.take(), table.take()] == [0, 1]
    assert table.busy == 2
    table.give_back(0)
    assert (table.busy, table.take(), table.take()) == (1, 0, 2)
    with pytest.raises(IndexError):
        table.take()


@pytest.mark.parametrize("slot", [1, 5, -1])
def test_giving_back_a_slot_that_is_not_busy_is_a_bug(slot: int) -> None:
    table = SlotTable(2)
    table.take()
    with pytest.raises(ValueError, match="not busy"):
        table.give_back(slot)


def test_positions_follow_the_prompt() -> None:
    seq = Progress(slot=0, prompt_len=5, prefilled=5, generated=1)
    assert not seq.prefilling
    assert seq.next_pos == 5  # the first sampled token goes right after the prompt
    seq.generated = 3
    assert seq.next_pos == 7


def test_a_short_prompt_alone_is_decoded_in_one_step() -> None:
    plan = plan_step([Progress(0, 40)], budget=256)
    assert plan == StepPlan((), (Chunk(0, 0, 40, last=True),))
    assert (plan.n_tokens, plan.sampled) == (40, (0,))


def test_every_generating_sequence_decodes_one_token_and_prompts_share_the_rest() -> None:
    running = [Progress(s, 10, prefilled=10, generated=3) for s in (2, 0)]
    waiting = [Progress(1, 300), Progress(3, 50)]
    plan = plan_step([*running, *waiting], budget=256)
    assert plan.decode == (2, 0)
    # the first waiting prompt takes all the room (254 of 300 tokens), the next waits
    assert plan.prefill == (Chunk(1, 0, 254, last=False),)
    assert plan.n_tokens == 256
    assert plan.sampled == (2, 0)  # no prompt completed: its logits are not needed yet


def test_a_long_prompt_is_spread_over_steps_and_the_next_one_follows() -> None:
    first, second = Progress(0, 300), Progress(1, 50)
    plan = plan_step([first, second], budget=256)
    assert plan.prefill == (Chunk(0, 0, 256, last=False),)
    first.prefilled = 256
    plan = plan_step([first, second], budget=256)
    assert plan.prefill == (Chunk(0, 256, 300, last=True), Chunk(1, 0, 50, last=True))
    assert plan.sampled == (0, 1)


def test_prompts_still_advance_when_every_slot_generates() -> None:
    running = [Progress(s, 4, prefilled=4, generated=1) for s in range(300)]
    plan = plan_step([*running, Progress(300, 1000)], budget=256)
    assert len(plan.decode) == 300
    assert plan.prefill == (Chunk(300, 0, 64, last=False),)  # a quarter of the budget
    assert plan.n_tokens <= batch_capacity(256, 301)


@pytest.mark.parametrize("slots", [1, 8, 256])
def test_no_step_exceeds_the_batch_capacity(slots: int) -> None:
    for decoding in range(slots + 1):
        running = [Progress(s, 4, prefilled=4, generated=1) for s in range(decoding)]
        waiting = [Progress(s, 10_000) for s in range(decoding, slots)]
        assert plan_step([*running, *waiting], 256).n_tokens <= batch_capacity(256, slots)
