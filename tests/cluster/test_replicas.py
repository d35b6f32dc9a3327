"""The batch streams on a cluster: min(3, its servers) replicas unless configured, and an
existing stream brought to that number (docs/batch.md). Real servers, no model."""

from __future__ import annotations

from pathlib import Path

import pytest

from llorch_common import client
from llorch_orch import cli, settings
from llorch_orch.batch import store
from llorch_orch.batch.config import (
    BATCH_STREAM,
    CONSUMER,
    RESULTS_STREAM,
    BatchConfig,
    BatchConfigError,
    consumer,
    load,
)
from schemas import Subjects

from .conftest import NatsCluster, placed


async def test_existing_streams_follow_the_replicas_asked_for(nats_cluster: NatsCluster) -> None:
    nc = await client.connect(nats_cluster.url_list, nats_cluster.credentials("orchestrator"))
    js, subjects = nc.jetstream(), Subjects()
    try:
        await store.ensure_streams(js, BatchConfig(replicas=1), subjects)  # an older deployment's
        await js.add_consumer(BATCH_STREAM, consumer(BatchConfig(), subjects))
        for replicas in (0, 2):  # 0: automatic, three servers
            await store.ensure_streams(js, BatchConfig(replicas=replicas), subjects)
            for stream in (BATCH_STREAM, RESULTS_STREAM):
                info = await js.stream_info(stream)
                assert info.config.num_replicas == (replicas or 3)
                await placed(js, stream, replicas or 3)
            await placed(js, BATCH_STREAM, replicas or 3, CONSUMER)  # it follows its stream
    finally:
        await nc.close()


def test_replicas_beyond_jetstreams_limit_are_refused() -> None:
    with pytest.raises(BatchConfigError, match="replicas"):
        BatchConfig(replicas=6)


def test_the_flag_wins_over_the_config_and_reaches_the_orchestrator_of_up(
    tmp_path: Path,
) -> None:
    config = tmp_path / "orch.toml"
    config.write_text("[batch]\nreplicas = 3\n")
    assert (load(config).replicas, load(config, 1).replicas) == (3, 1)
    up = cli.build_parser().parse_args(["up", "--stream-replicas", "2"])
    assert "--stream-replicas 2" in " ".join(settings.to_args(up))
    orch = cli.build_parser().parse_args(["orch", *settings.to_args(up)])
    assert orch.stream_replicas == 2
