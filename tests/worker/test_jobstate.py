"""Stream bookkeeping: seq numbering, resume suppression, probe and progress timing."""

from __future__ import annotations

from llorch_worker.jobstate import PROBE_INTERVAL_S, JobState
from llorch_worker.texthash import text_hash
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


def resumed(resume_after: int, resume_hash: str | None) -> JobState:
    execute = make_execute(
        "j1", "_INBOX.x", seq=1, resume_after=resume_after, resume_hash=resume_hash
    )
    return JobState(execute, 0.25, started_at=100.0)


def test_the_hash_follows_the_published_text_however_it_is_cut() -> None:
    state = make_state(seq=1)
    state.take_seq()  # started
    assert state.hash == text_hash()
    state.take_seq("Hel")
    state.take_seq("lo")
    assert state.hash == text_hash("Hello") == text_hash("He", "llo")
    state.take_seq()  # the terminal event: no text
    assert state.hash == text_hash("Hello")


def test_a_retry_that_regenerates_the_same_text_continues() -> None:
    state = resumed(resume_after=3, resume_hash=text_hash("ab"))
    assert state.hash == text_hash("ab")  # what the client holds, before anything is published
    assert [state.take_seq(t) for t in ("", "a", "b", "c")] == [
        (1, False),
        (2, False),
        (3, False),
        (4, True),
    ]
    assert not state.diverged
    assert state.hash == text_hash("abc")


def test_a_retry_that_regenerates_other_text_diverges_at_resume_after() -> None:
    state = resumed(resume_after=3, resume_hash=text_hash("ab"))
    state.take_seq()
    state.take_seq("a")
    assert not state.diverged
    state.take_seq("X")
    assert state.diverged
    assert state.hash == text_hash("ab")  # still what the client holds
    assert state.take_seq() == (4, True)  # the terminal event comes next


def test_a_retry_that_ends_before_resume_after_diverges() -> None:
    state = resumed(resume_after=5, resume_hash=text_hash("abcd"))
    for text in ("", "a", "b"):
        state.take_seq(text)
    assert state.ended_short()
    assert state.diverged and state.take_seq() == (6, True)


def test_without_a_resume_hash_nothing_is_checked() -> None:
    state = resumed(resume_after=2, resume_hash=None)
    state.take_seq()
    state.take_seq("a")
    assert not state.diverged and state.hash == text_hash("a")
    assert not resumed(resume_after=5, resume_hash=None).ended_short()
