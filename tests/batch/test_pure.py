"""The batch runner's pure parts: input lines, event folding, retry and pull decisions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest

from llorch_orch import settings
from llorch_orch.batch.cli import producer_of, submit_summary
from llorch_orch.batch.collect import Collector, has_room, retry_delay, to_request
from llorch_orch.batch.config import BatchConfig, BatchConfigError, load
from llorch_orch.batch.lines import LineError, parse_line
from llorch_orch.cli import build_parser
from schemas import (
    BatchJob,
    ChatMessage,
    End,
    Error,
    ErrorCode,
    ProtocolError,
    Started,
    Token,
    encode,
)

CFG = BatchConfig(max_attempts=3, backoff_s=(1.0, 5.0))


def test_native_line_keeps_its_fields_and_defaults_the_model() -> None:
    line = json.dumps({"custom_id": "a1", "prompt": "hi", "max_tokens": 5, "seed": 3})
    job = parse_line(line, 1, "m0")
    assert isinstance(job, BatchJob)
    assert (job.custom_id, job.model, job.prompt, job.max_tokens, job.seed) == (
        "a1",
        "m0",
        "hi",
        5,
        3,
    )


def _openai(custom_id: str, **body: object) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "body": body})


def test_openai_chat_line_maps_body_and_keeps_messages_as_chat() -> None:
    body = {
        "model": "m1", "max_tokens": 7, "temperature": 0.2, "top_p": 0.5, "seed": 9, "stop": "END",
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "Hel"},
                                                  {"type": "text", "text": "lo"}]},
                     {"role": "assistant", "content": "Hi."}],
        "n": 1,
    }  # fmt: skip
    job = parse_line(_openai("r-1", **body), 2, "m0")
    assert isinstance(job, BatchJob)
    assert (job.model, job.max_tokens, job.temperature, job.top_p, job.seed) == (
        "m1",
        7,
        0.2,
        0.5,
        9,
    )
    assert job.stop == ["END"] and job.prompt is None
    assert job.messages == [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="Hello"),  # text parts joined as they are
        ChatMessage(role="assistant", content="Hi."),
    ]


def test_openai_max_completion_tokens_is_max_tokens() -> None:
    line = _openai("c", messages=[{"role": "user", "content": "x"}], max_completion_tokens=5)
    job = parse_line(line, 1, "m0")
    assert isinstance(job, BatchJob) and job.max_tokens == 5


def test_openai_completion_line_uses_prompt() -> None:
    line = json.dumps({"custom_id": "c", "body": {"prompt": "Once", "max_tokens": 3}})
    job = parse_line(line, 1, "m0")
    assert isinstance(job, BatchJob) and job.prompt == "Once" and job.messages is None
    assert job.model == "m0"


def test_native_chat_line() -> None:
    line = json.dumps({"custom_id": "n", "messages": [{"role": "user", "content": "Hi"}]})
    job = parse_line(line, 1, "m0")
    assert isinstance(job, BatchJob) and job.messages == [ChatMessage(role="user", content="Hi")]


@pytest.mark.parametrize(
    ("line", "custom_id", "needle"),
    [
        ("{oops", "line-4", "malformed JSON"),
        ("[1, 2]", "line-4", "JSON object"),
        ('{"prompt": "x"}', "line-4", "custom_id"),
        ('{"custom_id": "a.b", "prompt": "x"}', "line-4", "must match"),
        ('{"custom_id": "ok", "prompt": "x", "max_tokens": 0}', "ok", "max_tokens"),
        ('{"custom_id": "ok", "body": {"messages": []}}', "ok", "messages"),
        ('{"custom_id": "ok", "body": {"max_tokens": 2}}', "ok", "exactly one of `prompt`"),
        (_openai("ok", prompt="x", messages=[{"role": "user", "content": "y"}]), "ok",
         "exactly one of `prompt`"),
        (_openai("ok", messages=[{"role": "tool", "content": "y"}]), "ok",
         "message 1: role 'tool' is not supported (use system, user, assistant)"),
        (_openai("ok", messages=[{"role": "user", "content": "a"}, {"content": "b"}]), "ok",
         "message 2: role None"),
        (_openai("ok", messages=["hi"]), "ok", "message 1: expected a JSON object"),
        (_openai("ok", messages=[{"role": "user", "content": 3}]), "ok",
         "message 1: content must be a string or a list of text parts"),
        (_openai("ok", messages=[{"role": "user", "content": [{"type": "image_url"}]}]), "ok",
         "message 1: content part of type 'image_url' is not supported (text parts only)"),
        ('{"custom_id": "ok", "messages": [{"role": "tool", "content": "y"}]}', "ok", "role"),
    ],
)  # fmt: skip
def test_malformed_line_names_its_number_and_job(line: str, custom_id: str, needle: str) -> None:
    error = parse_line(line, 4, "m0")
    assert isinstance(error, LineError)
    assert error.line == 4 and error.custom_id == custom_id
    assert error.message.startswith("line 4: ") and needle in error.message


def test_request_carries_every_job_field_at_batch_priority_with_the_runner_job_id() -> None:
    chat = [ChatMessage(role="user", content="p")]
    job = BatchJob(model="m", messages=chat, custom_id="c", priority="interactive", job_id="x",
                   max_tokens=3, temperature=0.1, top_k=2, seed=5, stop=["."],
                   deadline_ms=9)  # fmt: skip
    request = to_request(job, "bj-1")
    assert request.priority == "batch" and request.job_id == "bj-1"
    assert request.messages == chat and request.prompt is None
    assert (request.max_tokens, request.temperature, request.top_k, request.seed) == (3, 0.1, 2, 5)
    assert (request.stop, request.deadline_ms) == (["."], 9)


def test_submit_summary_counts_jobs() -> None:
    # 5 good lines and 1 malformed one, resubmitted inside the duplicate window
    assert submit_summary(0, 6, 1) == "6 jobs (1 of them a malformed line): 0 new, 6 duplicates"
    assert submit_summary(7, 0, 2) == "7 jobs (2 of them malformed lines): 7 new, 0 duplicates"
    assert submit_summary(0, 1, 0) == "1 job: 0 new, 1 duplicate"


@pytest.mark.parametrize(
    "flags,env,expected",
    [
        ([], {}, "cli"),  # `llorch up`'s producer-cli, or an open server
        (["--nkey-seed", "/c/producer-etl.nk"], {}, "etl"),  # the identity's own namespace
        ([], {"LLORCH_NATS_NKEY_SEED": "/c/producer-etl.nk"}, "etl"),
        (["--nkey-seed", "/c/someone.nk"], {}, "cli"),  # not a producer's seed file name
        (["--producer", "ml", "--nkey-seed", "/c/producer-etl.nk"], {}, "ml"),
        ([], {"LLORCH_PRODUCER": "ml"}, "ml"),
    ],
)
def test_the_cli_works_in_the_namespace_of_its_producer_identity(
    flags: list[str], env: dict[str, str], expected: str
) -> None:
    args = build_parser().parse_args(["batch", "status", "b1", *flags])
    assert producer_of(args, env) == expected


def test_a_producer_namespace_must_be_an_id() -> None:
    args = build_parser().parse_args(["batch", "status", "b1", "--producer", "a.>"])
    with pytest.raises(ProtocolError) as err:
        producer_of(args, {})
    assert err.value.code == ErrorCode.INVALID_ID


def _started(seq: int) -> Started:
    return Started(seq=seq, job_id="j", worker_id="w1", model="m", seed=4)


def test_collector_folds_events_and_skips_replayed_tokens() -> None:
    c = Collector(submitted_at=10.0)
    assert not c.add(_started(1), 10.5)
    assert not c.add(Token(seq=2, text="Hel"), 10.6)
    assert not c.add(_started(1), 11.0)  # a core retry replays from `started`
    assert not c.add(Token(seq=2, text="Hel"), 11.1)
    assert not c.add(Token(seq=3, text="lo"), 11.2)
    end = End(seq=4, job_id="j", finish_reason="length", tokens_in=3, tokens_out=2,
              ttft_ms=5.0, total_ms=9.0)  # fmt: skip
    assert c.add(end, 11.3)
    assert c.add(Error(code=ErrorCode.INTERNAL, message="late"), 11.4)  # ignored
    r = c.result("b", "c", attempts=1, now=12.0)
    assert (r.outcome, r.text, r.finish_reason, r.tokens_out) == ("ok", "Hello", "length", 2)
    assert (r.worker_id, r.seed, r.queue_ms, r.error, r.note) == ("w1", 4, 500.0, None, None)


def _end(tokens_out: int, finish_reason: Literal["stop", "length"] = "stop") -> End:
    return End(seq=2, job_id="j", finish_reason=finish_reason, tokens_in=3,
               tokens_out=tokens_out, ttft_ms=1.0, total_ms=2.0)  # fmt: skip


def _empty_result(c: Collector, end: End) -> dict[str, object]:
    c.add(_started(1), 1.0)
    c.add(end, 2.0)
    line: dict[str, object] = json.loads(encode(c.result("b", "c", attempts=1, now=3.0)))
    assert (line["outcome"], line["text"], line["error"]) == ("ok", "", None)
    assert line["finish_reason"] == end.finish_reason and line["tokens_out"] == end.tokens_out
    return line


def test_ok_result_with_empty_text_says_why() -> None:
    raw = _empty_result(Collector(submitted_at=0.0), _end(0))
    assert "ended its turn at once" in str(raw["note"]) and "send `messages`" in str(raw["note"])
    chat = _empty_result(Collector(submitted_at=0.0, chat=True), _end(0))
    assert "ended its turn at once" in str(chat["note"]) and "messages" not in str(chat["note"])
    stopped = _empty_result(Collector(submitted_at=0.0, has_stop=True), _end(2))
    assert str(stopped["note"]).startswith("the 2 generated tokens left no text: a stop sequence")
    special = _empty_result(Collector(submitted_at=0.0, has_stop=True), _end(4, "length"))
    assert "stop sequence" not in str(special["note"]) and "special tokens" in str(special["note"])


def test_collector_error_result_carries_the_code() -> None:
    c = Collector(submitted_at=0.0)
    c.add(Error(code=ErrorCode.CONTEXT_OVERFLOW, message="too long", seq=1), 1.0)
    r = c.result("b", "c", attempts=2, now=2.0)
    assert r.outcome == "failed" and r.error is not None
    assert (r.error.code, r.attempts) == (ErrorCode.CONTEXT_OVERFLOW, 2)


def test_retry_policy() -> None:
    lost = Error(code=ErrorCode.WORKER_LOST, message="", retriable=True)
    assert retry_delay(lost, 1, CFG) == 1.0
    assert retry_delay(lost, 2, CFG) == 5.0
    assert retry_delay(lost, 3, CFG) is None  # attempts spent: store the failure
    assert retry_delay(None, 1, CFG) == 1.0  # lost without a terminal event
    full = Error(code=ErrorCode.QUEUE_FULL, message="", retriable=True, retry_after_ms=9000)
    assert retry_delay(full, 1, CFG) == 9.0
    assert retry_delay(Error(code=ErrorCode.MODEL_NOT_FOUND, message=""), 1, CFG) == 1.0
    assert retry_delay(Error(code=ErrorCode.INVALID_PARAMS, message=""), 1, CFG) is None
    end = End(seq=1, job_id="j", finish_reason="stop", tokens_in=1, tokens_out=1,
              ttft_ms=1, total_ms=1)  # fmt: skip
    assert retry_delay(end, 1, CFG) is None


def test_pull_gate() -> None:
    cfg = BatchConfig(core_batch_queue=2, max_in_flight=5)
    assert has_room(core_batch_queued=1, in_flight=3, pools_alive=1, cfg=cfg)
    assert not has_room(core_batch_queued=2, in_flight=3, pools_alive=1, cfg=cfg)
    assert not has_room(core_batch_queued=0, in_flight=5, pools_alive=1, cfg=cfg)
    assert not has_room(core_batch_queued=0, in_flight=0, pools_alive=0, cfg=cfg)


def test_config_from_toml_and_its_sanity_checks(tmp_path: Path) -> None:
    path = tmp_path / "orch.toml"
    path.write_text("queue_capacity = 5\n[batch]\nack_wait_s = 6\nbackoff_s = [1, 2]\n")
    cfg = load(path)
    assert cfg.ack_wait_s == 6 and cfg.keepalive_s == 2 and cfg.backoff_s == (1, 2)
    assert load(None) == BatchConfig()
    assert settings.load(path).queue_capacity == 5  # the orchestrator leaves [batch] to us
    for bad in ("max_attempts = 10\nmax_deliver = 10", "ack_wiat_s = 5"):
        path.write_text(f"[batch]\n{bad}\n")
        with pytest.raises(BatchConfigError):
            load(path)
