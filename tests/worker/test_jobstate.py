"""Stream bookkeeping: seq numbering, resume suppression, probe and progress timing."""

from __future__ import annotations

from llorch_worker.jobstate import PROBE_INTERVAL_S, JobState
from tests.worker.conftest import make_execute


def make_state(seq: int = 0, resume_after: int = -1, progress: float = 0.25) -> JobState:
    execute = make_execute("j1", "_INBOX.x", seq=seq, resume_after=resume_after)
    return JobState(execute, progress, started_at=100.0)


def test_seq_starts_at_the_execute_seq_and_rises_by_one() -> None:
    state = make_state(seq=5)
    assert [state.take_seq() for _ in range(3)] == [(5, True), (6, True), (7, True)]
    assert state.last_published == 7


def test_events_up_to_resume_after_are_numbered_but_not_published() -> None:
    state = make_state(seq=1, resume_after=3)
    assert [state.take_seq() for _ in range(4)] == [(1, False), (2, False), (3, False), (4, True)]
    assert state.last_published == 4


def test_first_publish_probes_then_once_per_interval() -> None:
    state = make_state()
    assert state.probe_due(100.0)
    assert not state.probe_due(100.0 + PROBE_INTERVAL_S / 2)
    assert state.probe_due(100.0 + PROBE_INTERVAL_S)
    assert not state.probe_due(100.0 + PROBE_INTERVAL_S * 1.5)


def test_progress_only_after_the_interval_and_only_when_seq_moved() -> None:
    state = make_state(progress=0.25)
    state.take_seq()
    assert state.progress_due(100.1) is None  # too early
    assert state.progress_due(100.3) == 0
    assert state.progress_due(100.6) is None  # nothing new published
    state.take_seq()
    assert state.progress_due(100.7) == 1


def test_progress_never_reports_before_anything_was_published() -> None:
    state = make_state(resume_after=10)
    state.take_seq()
    assert state.progress_due(200.0) is None


def test_ttft_counts_from_job_start_to_first_token() -> None:
    state = make_state()
    state.token_generated(100.5)
    state.token_generated(100.9)
    assert state.tokens_out == 2
    assert state.ttft_ms(101.0) == 500.0
    assert state.elapsed_ms(101.0) == 1000.0
