"""The leader lease on a real nats-server (llorch_orch/lease.py): one holder at a time, epochs
that only grow, a release that hands over at once, a lapse that hands over after the TTL."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client

from llorch_orch.lease import BUCKET, Lease

TTL = 1.0


async def test_one_holder_epochs_grow_and_a_release_or_a_lapse_hands_over(nc: Client) -> None:
    js = nc.jetstream(timeout=TTL)
    a, b = Lease(js, "llorch.v1", "a", TTL), Lease(js, "llorch.v1", "b", TTL)
    never = asyncio.Event()
    first = await a.acquire(never)
    assert first is not None and first >= 1
    kv = await js.key_value(BUCKET)
    assert (await kv.status()).ttl == TTL  # the server expires the key, not our clocks
    assert (await kv.get("llorch.v1")).value == b"a"

    # b stands by while a holds: give up after a TTL and a half of renewals by a
    holding = asyncio.ensure_future(a.hold())
    give_up = asyncio.Event()
    asyncio.get_running_loop().call_later(1.5 * TTL, give_up.set)
    assert await b.acquire(give_up) is None
    assert not holding.done()  # a's renewals keep succeeding

    # a clean release: b leads at once, with a newer epoch, and a's next renewal says so
    holding.cancel()
    await a.release()
    second = await b.acquire(never)
    assert second is not None and second > first
    assert await asyncio.wait_for(a.hold(), 5 * TTL) == (
        "the lease passed to another orchestrator, or lapsed unrenewed"
    )

    # b stops renewing (killed): the key lapses after the TTL and a takes it, newer again
    third = await asyncio.wait_for(a.acquire(never), 5 * TTL)
    assert third is not None and third > second
    assert (await kv.get("llorch.v1")).value == b"a"


async def test_prefixes_lead_apart(nc: Client) -> None:
    js = nc.jetstream(timeout=TTL)
    never = asyncio.Event()
    one = await Lease(js, "one.v1", "x", TTL).acquire(never)
    two = await Lease(js, "two.v1", "y", TTL).acquire(never)
    assert one is not None and two is not None and two > one


async def test_a_renewal_written_after_its_answer_timed_out_keeps_the_lead(nc: Client) -> None:
    """The server wrote a renewal whose answer the leader never got (a busy server): the key
    moved on to a revision the leader does not know, still naming it. Its next renewal is
    refused as of a wrong revision; that is no evidence of a new leader, so the lead is kept
    and renewed from the written revision."""
    js = nc.jetstream(timeout=TTL)
    a = Lease(js, "llorch.v1", "a", TTL)
    first = await a.acquire(asyncio.Event())
    assert first is not None
    kv = await js.key_value(BUCKET)
    written = await kv.update("llorch.v1", b"a", first)  # the renewal a never heard of
    watcher = await kv.watch("llorch.v1")
    holding = asyncio.ensure_future(a.hold())
    try:
        # the watcher first delivers the current value, then a None marker, then updates
        while (entry := await watcher.updates(5 * TTL)) is None or entry.revision <= written:
            pass
        assert entry.value == b"a"
        assert not holding.done()
    finally:
        holding.cancel()
        await watcher.stop()
