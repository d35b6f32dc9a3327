"""The epoch fence pools and workers keep (llorch_common/fence.py)."""

from llorch_common.fence import EPOCH_HEADER, Fence, epoch_of, with_epoch
from schemas import ErrorCode, Leadership, encode


def test_a_command_of_an_older_epoch_is_refused_and_a_newer_one_moves_the_fence() -> None:
    fence = Fence()
    assert fence.admit(None) is None  # no lead seen yet: a command without an epoch is obeyed
    assert fence.admit(with_epoch(None, 7)) is None and fence.newest == 7
    refused = fence.admit(with_epoch({"traceparent": "x"}, 6))
    assert refused is not None and refused.code == ErrorCode.STALE_LEADER
    assert refused.message == "command of epoch 6; a newer leader (epoch 7) leads"
    assert fence.admit(None) is not None  # no header: epoch 0
    assert fence.admit(with_epoch(None, 9)) is None and fence.newest == 9


def test_announcements_move_the_fence_and_garbage_does_not() -> None:
    fence = Fence()
    fence.heard(encode(Leadership(epoch=12, orchestrator="a", since=1.0)))
    fence.heard(b"not json")
    fence.heard(encode(Leadership(epoch=3, orchestrator="old", since=0.5)))  # never backwards
    assert fence.newest == 12


def test_the_header_is_read_as_a_number_or_not_at_all() -> None:
    assert epoch_of({EPOCH_HEADER: "42"}) == 42
    assert epoch_of({EPOCH_HEADER: "-1"}) == 0 and epoch_of({EPOCH_HEADER: "x"}) == 0
    assert epoch_of({EPOCH_HEADER: "9" * 5000}) == 0  # never parsed: Python refuses such ints
    assert with_epoch({"a": "b"}, 5) == {"a": "b", EPOCH_HEADER: "5"}
