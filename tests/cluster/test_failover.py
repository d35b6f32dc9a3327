"""Issue 15: the orchestrator failover tests of tests/e2e/test_failover.py, on a cluster of
three servers (this directory's `make_cluster`: orchestrators on server 0, the client on
server 2, auth on): the leader killed mid-stream and mid-batch, and a frozen leader woken
after a takeover. Also: the lease bucket is replicated like the batch streams."""

from __future__ import annotations

from llorch_orch.lease import BUCKET

from ..e2e.conftest import ClusterFactory
from ..e2e.test_failover import (
    leader,
    test_a_frozen_leader_woken_after_a_takeover_is_refused_and_steps_down,
    test_kill_9_of_the_leader_mid_batch_every_result_once,
    test_kill_9_of_the_leader_streams_finish_and_the_standby_serves,
)
from .conftest import placed

__all__ = [
    "test_a_frozen_leader_woken_after_a_takeover_is_refused_and_steps_down",
    "test_kill_9_of_the_leader_mid_batch_every_result_once",
    "test_kill_9_of_the_leader_streams_finish_and_the_standby_serves",
]


async def test_the_lease_bucket_has_three_replicas(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster()
    await leader(cluster)
    js = cluster.nc.jetstream()
    stream = f"KV_{BUCKET}"
    assert (await js.stream_info(stream)).config.num_replicas == 3
    await placed(js, stream, 3)
