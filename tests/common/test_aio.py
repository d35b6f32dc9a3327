"""wait_event: a loop waiting on an event stops when cancelled, whatever else happens."""

import asyncio

import pytest

from llorch_common.aio import wait_event


async def _forever(event: asyncio.Event) -> None:
    while True:
        await wait_event(event, 10)
        event.clear()


async def test_a_cancel_that_comes_with_the_event_is_not_lost() -> None:
    event = asyncio.Event()
    task = asyncio.create_task(_forever(event))
    await asyncio.sleep(0)  # the task is now waiting on the event
    event.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)


async def test_wait_event_tells_set_from_timed_out() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 10) is True
