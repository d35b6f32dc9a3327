"""AdmissionQueue alone: priorities, FIFO, positions, lazy removal, bounded garbage."""

from llorch_orch.core.queue import AdmissionQueue


def drain(q: AdmissionQueue, model: str) -> list[str]:
    out = []
    while (job := q.pop(model)) is not None:
        out.append(job)
    return out


def test_interactive_before_batch_fifo_within() -> None:
    q = AdmissionQueue(10)
    q.push("b1", "m", "batch")
    q.push("i1", "m", "interactive")
    q.push("b2", "m", "batch")
    q.push("i2", "m", "interactive")
    assert drain(q, "m") == ["i1", "i2", "b1", "b2"]
    assert len(q) == 0


def test_push_returns_position() -> None:
    q = AdmissionQueue(10)
    assert q.push("b1", "m", "batch") == 1
    assert q.push("i1", "m", "interactive") == 1
    assert q.push("i2", "m", "interactive") == 2
    assert q.push("b2", "m", "batch") == 4
    assert [p for p, _ in q.head("m", 10)] == [1, 2, 3, 4]
    assert [j for _, j in q.head("m", 10)] == ["i1", "i2", "b1", "b2"]


def test_front_push_for_retries() -> None:
    q = AdmissionQueue(10)
    q.push("i1", "m", "interactive")
    q.push("b1", "m", "batch")
    assert q.push("r", "m", "interactive", front=True) == 1
    assert q.push("rb", "m", "batch", front=True) == 3
    assert drain(q, "m") == ["r", "i1", "rb", "b1"]


def test_models_are_separate() -> None:
    q = AdmissionQueue(10)
    q.push("a", "m1", "batch")
    q.push("b", "m2", "interactive")
    assert q.waiting_models() == ["m2", "m1"]  # interactive work first
    assert q.waiting("m1") == 1 and q.waiting("m2") == 1 and q.waiting("x") == 0
    assert q.pop("x") is None
    assert q.pop("m1") == "a"
    assert q.all_models() == ["m2"]


def test_remove_is_lazy_and_idempotent() -> None:
    q = AdmissionQueue(10)
    for j in ("a", "b", "c"):
        q.push(j, "m", "interactive")
    assert q.remove("b") is True
    assert q.remove("b") is False
    assert q.remove("zzz") is False
    assert "b" not in q and "a" in q
    assert list(q.head("m", 10)) == [(1, "a"), (2, "c")]
    assert drain(q, "m") == ["a", "c"]


def test_full_and_count() -> None:
    q = AdmissionQueue(2)
    q.push("a", "m", "interactive")
    assert not q.full
    q.push("b", "m", "batch")
    assert q.full
    assert q.count("interactive") == 1 and q.count("batch") == 1
    q.remove("a")
    assert not q.full


def test_oldest_batch_across_models() -> None:
    q = AdmissionQueue(10)
    q.push("i", "m1", "interactive")
    q.push("b1", "m2", "batch")
    q.push("b2", "m1", "batch")
    assert q.oldest_batch() == "b1"
    q.remove("b1")
    assert q.oldest_batch() == "b2"
    q.remove("b2")
    assert q.oldest_batch() is None


def test_head_limit() -> None:
    q = AdmissionQueue(100)
    for i in range(10):
        q.push(f"j{i}", "m", "batch")
    assert [j for _, j in q.head("m", 3)] == ["j0", "j1", "j2"]
    assert list(q.head("none", 3)) == []


def test_garbage_stays_bounded_when_the_queue_never_empties() -> None:
    """Removing deep entries (dispatch picks by id, cancel) must not leak: the lanes and the
    batch age list are compacted once removed entries outnumber live ones."""
    q = AdmissionQueue(10_000)
    q.push("stuck", "m", "batch")  # never leaves the head
    q.push("stuck-i", "m", "interactive")
    for i in range(5000):
        q.push(f"b{i}", "m", "batch")
        q.push(f"i{i}", "m", "interactive")
        q.remove(f"b{i}")
        q.remove(f"i{i}")
    lanes = q._lanes["m"]
    assert len(lanes.batch) < 50 and len(lanes.interactive) < 50
    assert len(q._batch_age) < 50
    assert [j for _, j in q.head("m", 10)] == ["stuck-i", "stuck"]
    assert q.oldest_batch() == "stuck"
