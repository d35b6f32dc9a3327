"""Chat through the raw NATS contract (plain JSON, no llorch types), end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llorch_common import client
from llorch_pool import catalog
from schemas import ModelsReply

from .conftest import MODEL, Cluster, ClusterFactory

SKY = [
    {"role": "system", "content": "You answer in one or two sentences."},
    {"role": "user", "content": "Why is the sky blue?"},
]


async def _raw(cluster: Cluster, request: dict[str, Any]) -> list[dict[str, Any]]:
    """What any NATS client does: publish JSON with a reply inbox, read JSON events."""
    inbox = cluster.nc.new_inbox()
    sub = await cluster.nc.subscribe(inbox)
    try:
        await cluster.nc.publish(
            cluster.subjects.generate, json.dumps(request).encode(), reply=inbox
        )
        events: list[dict[str, Any]] = []
        while not events or events[-1]["type"] not in ("end", "error"):
            events.append(json.loads((await sub.next_msg(timeout=120)).data))
        return events
    finally:
        await sub.unsubscribe()


async def test_system_and_user_messages_get_an_answer(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster()
    events = await _raw(cluster, {"model": MODEL, "messages": SKY, "max_tokens": 96, "seed": 3})
    end = events[-1]
    assert end["type"] == "end", end
    text = "".join(e["text"] for e in events if e["type"] == "token")
    assert end["tokens_out"] > 0 and text.strip()
    assert "<|im_end|>" not in text and "<|im_start|>" not in text


async def test_chat_for_a_model_without_a_template_is_refused_clearly(
    make_cluster: ClusterFactory, templateless_model_path: Path
) -> None:
    directory = templateless_model_path.parent
    cluster = await make_cluster(pool_args=("--allow-model-dir", str(directory)))
    catalog.add_model(cluster.stack.data_dir, "bare", templateless_model_path)
    await _until_listed(cluster, "bare")
    events = await _raw(cluster, {"model": "bare", "messages": SKY})
    assert [e["type"] for e in events] == ["error"]
    assert events[0]["code"] == "NO_CHAT_TEMPLATE" and "raw `prompt`" in events[0]["message"]
    raw = await _raw(cluster, {"model": "bare", "prompt": "The sky is", "max_tokens": 4})
    assert raw[-1]["type"] == "end" and raw[-1]["tokens_out"] > 0, raw[-1]


async def _until_listed(cluster: Cluster, model: str) -> None:
    """Until the orchestrator lists `model`, re-asked on every heartbeat (the pool re-reads
    its catalog for each one)."""
    sub = await cluster.nc.subscribe(cluster.subjects.heartbeat_all)
    try:
        while True:
            reply = await client.models(cluster.nc, cluster.subjects)
            assert isinstance(reply, ModelsReply), reply
            if model in {entry.model.name for entry in reply.models}:
                return
            await sub.next_msg(timeout=60)
    finally:
        await sub.unsubscribe()
