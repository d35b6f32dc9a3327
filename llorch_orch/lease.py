"""Who leads: a lease in a JetStream key-value bucket, held by one orchestrator at a time.

The bucket `LLORCH_LEADER` keeps one key per deployment (its subject prefix, so stacks with
different prefixes on one server lead apart), whose value names the leader. Its TTL is the bucket's
max age, enforced by the server: the key disappears `ttl_s` after its last write, so no clock
but the server's decides when a lease lapsed. The leader renews (a compare-and-set update on
its own last revision) every third of the TTL; a standby tries to create the key several
times a TTL, which only succeeds once the key is gone (expired, or deleted by a leader that
stopped cleanly).

The epoch of a lead is the revision of the create that won it: a stream sequence, so it
only grows, across every orchestrator and restart (`llorch_common/fence.py` says what it
fences). A leader steps down when a renewal finds a revision not its own and the key no
longer names it: another took the lease, or the key expired while no renewal could be written
(see `hold`). A renewal written after its answer timed out moved the revision on but still
names us: the lead is kept.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from llorch_common.aio import wait_event

from .batch.store import with_replicas

log = logging.getLogger("llorch.orch")

BUCKET = "LLORCH_LEADER"
DEFAULT_TTL_S = 3.0
RENEWALS_PER_TTL = 3
TRIES_PER_TTL = 6  # a standby's tries to take a lapsed lease: it leads within ttl/6 of the lapse


@dataclass
class Lease:
    js: JetStreamContext
    key: str  # the deployment's subject prefix
    name: str  # this orchestrator's, the key's value
    ttl_s: float = DEFAULT_TTL_S
    replicas: int = 0  # of the bucket when this orchestrator makes it; 0: min(3, servers)
    epoch: int = 0  # of the lead held now; 0 when none
    _kv: KeyValue | None = None
    _revision: int = 0  # of our last write

    async def _bucket(self) -> KeyValue:
        """The bucket, made if missing (first start, or a JetStream store that was lost). An
        existing bucket keeps its TTL (every orchestrator must time the same lease): a
        different `ttl_s` is reported and the bucket's is used."""
        if self._kv is not None:
            return self._kv
        try:
            kv = await self.js.key_value(BUCKET)
        except BucketNotFoundError:
            kv = await self._create()
        status = await kv.status()
        if status.ttl and abs(status.ttl - self.ttl_s) > 1e-3:
            log.warning("lease TTL is %.3gs (the bucket's), not %.3gs", status.ttl, self.ttl_s)
            self.ttl_s = status.ttl
        self._kv = kv
        return kv

    async def _create(self) -> KeyValue:
        made: list[KeyValue] = []

        async def put(n: int) -> None:
            config = KeyValueConfig(bucket=BUCKET, history=1, ttl=self.ttl_s, replicas=n)
            made.append(await self.js.create_key_value(config))

        await with_replicas(self.replicas, put)  # as the batch streams
        return made[-1]

    async def acquire(self, give_up: asyncio.Event) -> int | None:
        """Wait until this orchestrator leads; its epoch, or None once `give_up` is set."""
        holder = ""
        while not give_up.is_set():
            try:
                revision = await (await self._bucket()).create(self.key, self.name.encode())
            except KeyWrongLastSequenceError:
                holder = await self._holder(holder)
            except Exception as exc:  # no JetStream quorum yet, a node restarting: try again
                log.warning("cannot reach the lease: %r", exc)
                self._kv = None  # the bucket itself may be gone: looked up (or made) again
            else:
                self.epoch = self._revision = revision
                return revision
            await wait_event(give_up, self.ttl_s / TRIES_PER_TTL)
        return None

    async def _holder(self, seen: str) -> str:
        """Who leads now (logged when it changes): standbys say whom they wait for."""
        try:
            entry = await (await self._bucket()).get(self.key)
        except Exception:
            return seen
        holder = (entry.value or b"").decode(errors="replace")
        if holder != seen:
            log.info("standing by: %s leads", holder)
        return holder

    async def hold(self) -> str:
        """Renew while we lead; returns why the lead ended (we must step down then): a renewal
        found a revision not ours, so another orchestrator took the lease, or our key expired
        while the bucket could not be written. A renewal that fails otherwise (no JetStream
        quorum while a lost server's streams elect, our own server gone) is tried again and
        the lead kept: nobody can take the lease from a store we cannot write either, and
        where they can (a partition), pools and workers fence our commands by epoch."""
        failing = False
        while True:
            await asyncio.sleep(self.ttl_s / RENEWALS_PER_TTL)
            try:
                kv = await self._bucket()
                self._revision = await kv.update(self.key, self.name.encode(), self._revision)
            except KeyWrongLastSequenceError:
                if await self._ours_still(kv):
                    continue
                return "the lease passed to another orchestrator, or lapsed unrenewed"
            except Exception as exc:
                if not failing:  # once per outage: it may last seconds (an election)
                    log.warning("lease not renewed, lead kept: %r", exc)
                failing = True
                continue
            if failing:
                log.info("lease renewed again")
            failing = False

    async def _ours_still(self, kv: KeyValue) -> bool:
        """Whether the key, at a revision not our last known one, may still be ours: it names
        us when a renewal whose answer timed out (a busy server) had been written; its revision
        is taken and the lead kept. Gone (lapsed) or naming another: not ours. Unreadable:
        kept, as a renewal that fails. (Only a create can write a key we no longer hold, and no
        other process bears our name: names are unique, and pools fence a duplicate by epoch.)"""
        try:
            entry = await kv.get(self.key)
        except KeyNotFoundError:  # a deleted key too
            return False
        except Exception as exc:
            log.warning("lease not readable, lead kept: %r", exc)
            return True
        if entry.value != self.name.encode() or entry.revision is None:
            return False
        log.info("a renewal that timed out had been written (revision %d)", entry.revision)
        self._revision = entry.revision
        return True

    async def release(self) -> None:
        """Give the lead up now (a clean stop): a standby takes over without waiting a TTL."""
        try:
            await (await self._bucket()).delete(self.key, last=self._revision)
        except Exception as exc:  # already taken or unreachable: it lapses on its own
            log.info("lease not released: %r", exc)
        self.epoch = 0
