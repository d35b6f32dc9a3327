"""Asyncio helpers every llorch process shares."""

import asyncio


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Whether `event` was set within `timeout` seconds.

    asyncio.timeout rather than wait_for: on Python 3.11 wait_for loses a cancellation that
    arrives just as the event is set, and a loop built on it then never stops (an
    orchestrator that ignored SIGTERM was seen so).
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def first_set(*events: asyncio.Event) -> asyncio.Event:
    """Wait until one of `events` is set; that one (the earliest named, if several are)."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    return next(event for event in events if event.is_set())
