"""Epoch fencing: a pool or worker obeys only the newest orchestrator lead it has seen.

Several orchestrators may run; one leads at a time (`llorch_orch/lease.py`), and each lead has
an epoch that grows. Every command an orchestrator sends (spawn, stop, snapshot request,
execute, cancel) carries its epoch in the `Llorch-Epoch` header. A leader that was paused
(SIGSTOP, a frozen VM) and wakes up after another took over still believes it leads until its
next renewal fails; the commands it sends meanwhile are refused here with STALE_LEADER, and
the refusal tells it to step down. That, not the lease alone, is what rules out a split brain.

A command without the header counts as epoch 0: accepted only until some lead was seen.
"""

from __future__ import annotations

from collections.abc import Mapping

from schemas import Error, ErrorCode, Leadership, ProtocolError, decoder

EPOCH_HEADER = "Llorch-Epoch"
MAX_EPOCH_DIGITS = 20  # 2**64 has 20 digits

_leadership = decoder(Leadership)


def epoch_of(headers: Mapping[str, str] | None) -> int:
    """The epoch a command carries; 0 without one (or with one that is not a number)."""
    raw = (headers or {}).get(EPOCH_HEADER, "0")
    # a revision is a stream sequence (uint64): longer text is no epoch, and is never parsed
    return int(raw) if raw.isdigit() and len(raw) <= MAX_EPOCH_DIGITS else 0


def with_epoch(headers: dict[str, str] | None, epoch: int) -> dict[str, str]:
    return {**(headers or {}), EPOCH_HEADER: str(epoch)}


class Fence:
    """The newest epoch seen, from commands and from leaders' announcements."""

    def __init__(self) -> None:
        self.newest = 0

    def saw(self, epoch: int) -> None:
        self.newest = max(self.newest, epoch)

    def admit(self, headers: Mapping[str, str] | None) -> Error | None:
        """None: obey the command (its epoch is now the newest seen); else the refusal."""
        epoch = epoch_of(headers)
        if epoch < self.newest:
            return Error(
                code=ErrorCode.STALE_LEADER,
                message=f"command of epoch {epoch}; a newer leader (epoch {self.newest}) leads",
            )
        self.newest = epoch
        return None

    def heard(self, data: bytes) -> None:
        """An announcement on `Subjects.leader` (a bad one is ignored: it changes nothing)."""
        try:
            self.saw(_leadership(data).epoch)
        except ProtocolError:
            return
