import pytest

from llorch_pool import registry
from llorch_pool.registry import REPORTS_AFTER_EXIT, WorkerRecord
from schemas import ErrorCode, ProtocolError, WorkerInfo


def started(worker_id: str = "w1", device: int = 0, estimate: int = 100) -> WorkerRecord:
    return registry.with_pid(registry.starting(worker_id, "m", device, estimate), 4242)


def test_ready_then_drain_then_exit() -> None:
    record = registry.on_ready(started(), memory_bytes=321)
    assert (record.state, record.memory_bytes) == ("ready", 321)
    record = registry.on_draining(record)
    assert record.state == "draining"
    record = registry.on_exit(record, 0)
    assert (record.state, record.exit_code, record.message) == ("exited", 0, "exited with code 0")


def test_killed_ready_worker_is_exited_with_signal() -> None:
    record = registry.on_exit(registry.on_ready(started(), 1), -9)
    assert (record.state, record.exit_code, record.message) == ("exited", -9, "killed by SIGKILL")


def test_death_before_ready_is_failed() -> None:
    record = registry.on_exit(started(), 1)
    assert (record.state, record.exit_code) == ("failed", 1)
    assert record.message == "exited with code 1 before ready"


def test_worker_failed_message_kept_through_exit() -> None:
    record = registry.on_failed(started(), "MODEL_LOAD_FAILED: bad file")
    record = registry.on_exit(record, 3)
    assert (record.state, record.exit_code) == ("failed", 3)
    assert record.message == "MODEL_LOAD_FAILED: bad file"


def test_late_events_do_not_resurrect() -> None:
    exited = registry.on_exit(registry.on_ready(started(), 1), 0)
    assert registry.on_ready(exited, 5) == exited
    assert registry.on_failed(exited, "x") == exited
    assert registry.on_draining(exited) == exited
    assert registry.on_exit(exited, 1) == exited
    ready = registry.on_ready(started(), 1)
    assert registry.on_ready(ready, 99) == ready
    assert registry.on_failed(ready, "x") == ready


def test_memory_accounting_per_device() -> None:
    records = {
        "a": started("a", device=0, estimate=100),  # loading: estimate counts
        "b": registry.on_ready(started("b", device=0, estimate=100), 250),  # measured
        "c": registry.on_exit(started("c", device=1, estimate=100), 1),  # gone: nothing
        "d": started("d", device=1, estimate=40),
    }
    assert registry.bytes_by_device(records, loading_only=False) == {0: 350, 1: 40}
    assert registry.bytes_by_device(records, loading_only=True) == {0: 100, 1: 40}


def test_reaped_records_are_reported_then_dropped() -> None:
    records = {"live": started("live"), "gone": registry.on_exit(started("gone"), 0)}
    for _ in range(REPORTS_AFTER_EXIT - 1):
        records = registry.after_heartbeat(records)
        assert set(records) == {"live", "gone"}
    records = registry.after_heartbeat(records)
    assert set(records) == {"live"}


def test_new_id_checks() -> None:
    records = {"w1": started("w1"), "old": registry.on_exit(started("old"), 0)}
    with pytest.raises(ProtocolError) as err:
        registry.check_new_id(records, "w1")
    assert err.value.code == ErrorCode.INVALID_PARAMS
    for bad in ("a.b", "a*", ">", ""):
        with pytest.raises(ProtocolError) as err:
            registry.check_new_id(records, bad)
        assert err.value.code == ErrorCode.INVALID_ID
    registry.check_new_id(records, "old")  # reaped: the id may be reused
    registry.check_new_id(records, "w2")


def test_to_wire() -> None:
    record = registry.on_exit(registry.on_ready(started(), 7), -15)
    assert registry.to_wire(record) == WorkerInfo(
        worker_id="w1",
        model="m",
        device=0,
        pid=4242,
        state="exited",
        memory_bytes=7,
        exit_code=-15,
        message="killed by SIGTERM",
    )


def test_measured_memory_only_grows_and_only_for_loaded_workers() -> None:
    loaded = registry.with_pid(registry.on_ready(started(), 500), 11)
    loading = registry.with_pid(registry.starting("w2", "m", 0, 900), 12)
    records = {"w1": loaded, "w2": loading}
    grown = registry.with_measured(records, {11: 600, 12: 50})
    assert grown["w1"].memory_bytes == 600
    assert grown["w2"].memory_bytes is None  # still loading: its estimate stands
    assert registry.with_measured(grown, {11: 550})["w1"].memory_bytes == 600  # high-water mark


def test_ready_records_its_slots_and_loads_report_the_busy_ones() -> None:
    record = registry.on_ready(started(), memory_bytes=5, slots=4)
    assert (record.slots, record.slots_busy) == (4, 0)
    record = registry.on_load(record, 3)
    assert registry.to_wire(record).slots_busy == 3
    assert registry.to_wire(record).slots == 4
    assert registry.on_load(record, 9).slots_busy == 4  # never more than it has
    record = registry.on_load(registry.on_draining(record), 1)
    assert record.slots_busy == 1  # a draining worker finishes its jobs


def test_a_load_before_ready_or_after_exit_changes_nothing() -> None:
    assert registry.on_load(started(), 2) == started()
    exited = registry.on_exit(registry.on_ready(started(), 1, slots=2), 0)
    assert registry.on_load(exited, 2) == exited
