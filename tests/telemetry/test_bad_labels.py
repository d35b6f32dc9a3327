"""Issue 12: a client's made-up model names never become metric label values."""

from __future__ import annotations

import asyncio

from schemas import ErrorCode
from tests.e2e.conftest import MODEL
from tests.e2e.test_bad_input import generate_raw, request
from tests.telemetry.conftest import Traced
from tests.telemetry.test_metrics import _until_scraped

NAMES = 200


async def test_unknown_model_names_are_one_other_series(traced: Traced) -> None:
    """200 distinct unknown names (each refused MODEL_NOT_FOUND): their jobs are counted under
    `model="other"`, so the series do not grow with them (they were 200 new series each)."""
    nc = traced.cluster.nc
    names = [f"no-such-model-{i:03d}-" + "x" * 100 for i in range(NAMES)]
    replies = await asyncio.gather(*(generate_raw(nc, request(model=n)) for n in names))
    assert {error.code for error, _ in replies} == {ErrorCode.MODEL_NOT_FOUND}
    samples = await _until_scraped(traced, traced.orch_metrics, "llorch_jobs_total", NAMES)
    models = {dict(labels).get("model") for (name, labels) in samples if name.startswith("llorch")}
    assert models <= {MODEL, "other", None}, sorted(m for m in models if m)[:3]
    series = [labels for (name, labels) in samples if name == "llorch_jobs_total"]
    assert len(series) == 1 and dict(series[0])["model"] == "other"
