"""A long-running component's NATS connection, and what the process does when it ends for good.

Part of the bus contract: the orchestrator, pool managers and workers connect the same way.
nats-py reconnects forever after a network loss (`max_reconnect_attempts=-1`: a restarted or
unreachable server), but when the server itself closes the connection for a protocol error
(`-ERR`: a publish over its max payload, credentials revoked by a config reload) the client is
closed and never reconnects. A process that stayed alive then would serve nothing, silently.
So a close the component did not ask for is fatal: one log line, and the process exits with
EXIT_CONNECTION_LOST so that its supervisor (`llorch up`, its pool, systemd) starts it again
on a fresh connection.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from llorch_common.connect import DRAIN_TIMEOUT_S

EXIT_CONNECTION_LOST = 75  # EX_TEMPFAIL (sysexits.h): temporary; starting again may succeed
PING_INTERVAL_S = 10  # a silent server is taken for dead after about 30 s, then left for another
MAX_PINGS_OUT = 3


class _Connection(Protocol):
    @property
    def last_error(self) -> Exception | None: ...


class Lifeline:
    """Watches one connection: `lost` is set when it closes without `leaving()` first."""

    def __init__(self, who: str, log: logging.Logger) -> None:
        self.lost = asyncio.Event()
        self._who = who
        self._log = log
        self._leaving = False
        self._nc: _Connection | None = None

    def options(self) -> dict[str, Any]:
        """For `nats.connect`: reconnect forever, and hear the close.

        On a cluster (a list of URLs, plus the servers the cluster tells of) a lost server is
        left for the next one at once; 2 s (nats-py's default, like most clients) is the wait
        before the same server is tried again: a worker back much sooner than its client would
        find the client's inbox without a subscriber, and take the client for gone. The list
        is tried in random order (nats-py's default), so that the processes of many hosts
        spread over the servers rather than all landing on the first one. Subscriptions (micro
        endpoints too) are made again on the new server by nats-py. A host that vanishes
        without closing its sockets (power, network) is noticed by pings: one every
        PING_INTERVAL_S, the connection taken for dead after MAX_PINGS_OUT unanswered (nats-py's
        defaults, 2 minutes x 2, would leave a component cut off for 4 minutes)."""
        return {
            "max_reconnect_attempts": -1,
            "ping_interval": PING_INTERVAL_S,
            "max_outstanding_pings": MAX_PINGS_OUT,
            "drain_timeout": DRAIN_TIMEOUT_S,  # shutdown flushes what is in flight, never hangs
            "closed_cb": self._closed,
        }

    def watch(self, nc: _Connection) -> None:
        """The connection made with `options()`: its last error says why it closed."""
        self._nc = nc

    def leaving(self) -> None:
        """Our own drain or close follows: the close it ends with is no loss."""
        self._leaving = True

    async def until(self, stop: asyncio.Event) -> bool:
        """Wait until `stop` is set (False) or the connection is lost (True: exit with
        EXIT_CONNECTION_LOST; the connection is closed, nothing can be sent any more)."""
        waits = [asyncio.ensure_future(e.wait()) for e in (stop, self.lost)]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        return self.lost.is_set()

    async def _closed(self) -> None:
        if self._leaving:
            return
        error = self._nc.last_error if self._nc is not None else None
        self._log.error(
            "NATS closed the connection of the %s for good (%s): exiting with status %d, to be "
            "started again",
            self._who,
            error or "no reason given",
            EXIT_CONNECTION_LOST,
        )
        self.lost.set()
