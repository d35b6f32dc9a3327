"""What the core tells its observers (telemetry, the batch runner, a recorder): facts about
jobs that the shell must not work out by reading the core's insides. Plain data, like commands;
the shell carries out commands and hands notices on."""

from dataclasses import dataclass

from schemas import CancelReply, Error, JobInfo

from .commands import Command


@dataclass(frozen=True, slots=True)
class JobEnded:
    """A job left the core for good: its final record (outcome state, code, timings).
    `admitted` False: refused at admission (its id may be another live job's, on a duplicate)."""

    job_id: str
    info: JobInfo
    admitted: bool = True


@dataclass(frozen=True, slots=True)
class Pending:
    """Why a waiting job still waits, whenever that changed (the placement decision's)."""

    job_id: str
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Answered:
    """The answer to an event that asks something (a cancel): exactly one per such event."""

    reply: CancelReply | Error


Notice = JobEnded | Pending  # what observers hear about jobs
Output = Command | Notice | Answered
