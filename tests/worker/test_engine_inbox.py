"""The engine thread -> event loop hand-over: no token waits, a backlog leaves as one batch."""

import asyncio
import threading

from llorch_worker.job import EngineInbox
from llorch_worker.outcome import Finished


async def test_a_token_is_taken_as_soon_as_it_is_put() -> None:
    inbox = EngineInbox(asyncio.get_running_loop())
    threading.Thread(target=inbox.put, args=("a",)).start()
    assert await asyncio.wait_for(inbox.take(), 10) == (["a"], None)


async def test_tokens_put_while_the_loop_is_busy_come_as_one_batch_then_the_outcome() -> None:
    inbox = EngineInbox(asyncio.get_running_loop())
    done = Finished("length", 3, "")

    def engine() -> None:  # the loop is blocked in join() below: nothing is taken meanwhile
        for item in ("a", "", "b", done):
            inbox.put(item)

    thread = threading.Thread(target=engine)
    thread.start()
    thread.join()
    assert await asyncio.wait_for(inbox.take(), 10) == (["a", "", "b"], done)


async def test_items_after_a_take_wake_the_loop_again() -> None:
    inbox = EngineInbox(asyncio.get_running_loop())
    inbox.put("a")
    assert await inbox.take() == (["a"], None)
    threading.Thread(target=inbox.put, args=("b",)).start()
    assert await asyncio.wait_for(inbox.take(), 10) == (["b"], None)
