"""Bounded admission queue: per model, interactive before batch, FIFO within a priority.

Every operation is O(1) amortised: removal marks the entry and the lanes skip marked entries
when they reach the head (lazy deletion), so cancelling deep in a long queue costs nothing.
"""

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from schemas import Priority


@dataclass(slots=True)
class Entry:
    job_id: str
    model: str
    priority: Priority
    removed: bool = False


@dataclass(slots=True)
class _Lanes:
    interactive: deque[Entry] = field(default_factory=deque)
    batch: deque[Entry] = field(default_factory=deque)
    live_interactive: int = 0
    live_batch: int = 0

    def lane(self, priority: Priority) -> deque[Entry]:
        return self.interactive if priority == "interactive" else self.batch

    def count(self, priority: Priority, delta: int) -> None:
        if priority == "interactive":
            self.live_interactive += delta
        else:
            self.live_batch += delta

    @property
    def live(self) -> int:
        return self.live_interactive + self.live_batch


def _drop_removed(lane: deque[Entry]) -> None:
    while lane and lane[0].removed:
        lane.popleft()


def _tidy(lane: deque[Entry], live: int) -> None:
    """Drop removed entries at the head; rebuild when dead ones outnumber live ones (amortised
    O(1)), so a queue that never empties does not keep every job it ever held."""
    _drop_removed(lane)
    if len(lane) > 2 * live + 16:
        kept = [e for e in lane if not e.removed]
        lane.clear()
        lane.extend(kept)


class AdmissionQueue:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lanes: dict[str, _Lanes] = {}
        self._entries: dict[str, Entry] = {}
        self._batch_age: deque[Entry] = deque()  # all batch entries, oldest first
        self._live_batch = 0  # batch entries not removed

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._entries

    @property
    def full(self) -> bool:
        return len(self._entries) >= self.capacity

    def count(self, priority: Priority) -> int:
        if priority == "interactive":
            return sum(lanes.live_interactive for lanes in self._lanes.values())
        return sum(lanes.live_batch for lanes in self._lanes.values())

    def push(self, job_id: str, model: str, priority: Priority, front: bool = False) -> int:
        """Enqueue; returns the job's position (1 = next for its model). `front` serves retries."""
        entry = Entry(job_id, model, priority)
        lanes = self._lanes.setdefault(model, _Lanes())
        lane = lanes.lane(priority)
        if front:
            lane.appendleft(entry)
        else:
            lane.append(entry)
        if priority == "batch":
            self._batch_age.append(entry)
            self._live_batch += 1
        lanes.count(priority, 1)
        self._entries[job_id] = entry
        if front:
            return 1 if priority == "interactive" else lanes.live_interactive + 1
        return lanes.live_interactive if priority == "interactive" else lanes.live

    def pop(self, model: str) -> str | None:
        lanes = self._lanes.get(model)
        if lanes is None:
            return None
        for lane in (lanes.interactive, lanes.batch):
            _drop_removed(lane)
            if lane:
                entry = lane.popleft()
                self._forget(entry, lanes)
                return entry.job_id
        return None

    def remove(self, job_id: str) -> bool:
        entry = self._entries.get(job_id)
        if entry is None:
            return False
        entry.removed = True
        self._forget(entry, self._lanes[entry.model])
        return True

    def _forget(self, entry: Entry, lanes: _Lanes) -> None:
        entry.removed = True
        del self._entries[entry.job_id]
        lanes.count(entry.priority, -1)
        if entry.priority == "batch":
            self._live_batch -= 1
            _tidy(self._batch_age, self._live_batch)
        if not lanes.live:
            del self._lanes[entry.model]
        elif entry.priority == "interactive":
            _tidy(lanes.interactive, lanes.live_interactive)
        else:
            _tidy(lanes.batch, lanes.live_batch)

    def oldest_batch(self) -> str | None:
        _drop_removed(self._batch_age)
        return self._batch_age[0].job_id if self._batch_age else None

    def waiting_models(self) -> list[str]:
        """Models with waiting jobs, those with interactive work first."""
        return sorted(self._lanes, key=lambda m: self._lanes[m].live_interactive == 0)

    def waiting(self, model: str) -> int:
        lanes = self._lanes.get(model)
        return lanes.live if lanes else 0

    def head(self, model: str, limit: int) -> Iterator[tuple[int, str]]:
        """(position, job_id) of the first `limit` waiting jobs of a model, in start order."""
        lanes = self._lanes.get(model)
        if lanes is None:
            return
        position = 0
        for lane in (lanes.interactive, lanes.batch):
            for entry in lane:
                if entry.removed:
                    continue
                position += 1
                if position > limit:
                    return
                yield position, entry.job_id

    def all_models(self) -> list[str]:
        return list(self._lanes)
