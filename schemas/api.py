"""Client-facing messages: requests on `llorch.v1.api.*` and the events of a job's stream."""

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from schemas.base import Message
from schemas.codes import ErrorCode
from schemas.ids import Id

Priority = Literal["interactive", "batch"]
FinishReason = Literal["stop", "length"]
Role = Literal["system", "user", "assistant"]
JobState = Literal["queued", "running", "finished", "failed", "cancelled"]

# Type-level bounds, checked at decode time: every number fits the arithmetic and the C ints
# it meets later (a deadline of 10**400 ms would overflow a float), every string and list is
# short enough to echo or store. Deployment limits (prompt bytes, the max_tokens cap, stop
# strings) are the orchestrator's, checked at admission; prompts and message contents are
# bounded by the message size (MAX_MESSAGE_BYTES) and `limits.max_prompt_bytes`.
MAX_MODEL_CHARS = 128
MAX_MESSAGES = 1024  # chat turns in one request
MAX_STOPS = 64  # stop strings, and characters in each (limits.max_stop* are lower)
MAX_DEADLINE_MS = 24 * 3600 * 1000
MaxTokens = Annotated[int, Meta(ge=1, le=1_000_000)]
Temperature = Annotated[float, Meta(ge=0.0, le=5.0)]
TopP = Annotated[float, Meta(gt=0.0, le=1.0)]
TopK = Annotated[int, Meta(ge=0, le=1_000_000)]
Seed = Annotated[int, Meta(ge=0, le=2**32 - 1)]
DeviceIndex = Annotated[int, Meta(ge=0, le=1023)]
ModelName = Annotated[str, Meta(min_length=1, max_length=MAX_MODEL_CHARS)]
StopList = Annotated[list[Annotated[str, Meta(max_length=MAX_STOPS)]], Meta(max_length=MAX_STOPS)]
DeadlineMs = Annotated[int, Meta(ge=1, le=MAX_DEADLINE_MS)]

# llama.cpp samples greedily only at temperature <= 0; a tiny positive one divides the logits
# into infinities (1e-40 is a float32 denormal) and samples garbage. Below this, llorch samples
# greedily: the same text as temperature 0.
GREEDY_BELOW = 1e-3


def sampling_temperature(temperature: float) -> float:
    """The temperature handed to the engine: 0 (greedy) below GREEDY_BELOW."""
    return 0.0 if temperature < GREEDY_BELOW else temperature


class ChatMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One turn of a conversation, rendered with the model's own chat template."""

    role: Role
    content: str


ChatMessages = Annotated[list[ChatMessage], Meta(max_length=MAX_MESSAGES)]


def check_prompt_or_messages(prompt: str | None, messages: list[ChatMessage] | None) -> None:
    """Exactly one form: a raw `prompt`, or chat `messages` (at least one)."""
    if (prompt is None) == (messages is None):
        raise ValueError("send exactly one of `prompt` (raw text) or `messages` (chat)")
    if messages is not None and not messages:
        raise ValueError("`messages` must hold at least one message (or send a raw `prompt`)")


class GenerateRequest(Message, tag="generate"):
    model: ModelName  # catalog name
    prompt: str | None = None  # raw completion: the text as is, no chat template
    messages: ChatMessages | None = None  # chat: rendered with the model's template
    max_tokens: MaxTokens = 128  # tokens to generate at most
    temperature: Temperature = 0.8  # below GREEDY_BELOW = greedy
    top_p: TopP = 0.95  # nucleus sampling mass
    top_k: TopK = 40  # 0 = off
    seed: Seed | None = None  # None = the orchestrator picks one and reports it in `started`
    stop: StopList = []  # generation ends before any of these strings
    priority: Priority = "interactive"  # interactive jobs are served before batch jobs
    deadline_ms: DeadlineMs | None = None  # give up if still queued after this
    pool: Id | None = None  # pin to a pool (no fallback)
    device: DeviceIndex | None = None  # pin to a device index (no fallback)
    job_id: Id | None = None  # client-chosen id; assigned when absent

    def __post_init__(self) -> None:
        check_prompt_or_messages(self.prompt, self.messages)


class Queued(Message, tag="queued"):
    seq: int  # event number within the stream, +1 per event
    job_id: str
    position: int  # 1 = next to start


class Started(Message, tag="started"):
    seq: int
    job_id: str
    worker_id: str
    model: str
    seed: int  # the seed actually used: replaying with it reproduces the text


class Token(Message, tag="token"):
    seq: int
    text: str  # whole UTF-8 characters; one or more model tokens' worth (or less)


class End(Message, tag="end"):
    seq: int
    job_id: str
    finish_reason: FinishReason
    tokens_in: int
    tokens_out: int
    ttft_ms: float  # job start on the worker to first token
    total_ms: float  # job start on the worker to end


class Error(Message, tag="error"):
    """Terminal stream event, and the reply of any request that failed."""

    code: ErrorCode
    message: str
    retriable: bool = False
    retry_after_ms: int | None = None
    seq: int | None = None  # set when it ends a stream
    job_id: str | None = None


Event = Queued | Started | Token | End | Error


class CancelRequest(Message, tag="cancel"):
    job_id: Id


class CancelReply(Message, tag="cancel_reply"):
    job_id: str
    outcome: Literal["cancelled", "already_finished"]


class JobGetRequest(Message, tag="job_get"):
    job_id: Id


class JobInfo(Message, tag="job"):
    job_id: str
    state: JobState
    model: str
    priority: Priority
    position: int | None = None  # while queued
    worker_id: str | None = None  # once placed
    code: ErrorCode | None = None  # when failed
    reasons: list[str] = []  # why it still waits: the placement decision's, current
    attempts: int = 0  # dispatches so far (a retry adds one)
    # Timings, unix seconds on the orchestrator's clock: admitted, first dispatched, ended.
    submitted_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    # From the worker's terminal status, once it ended there.
    ttft_ms: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None


class StateRequest(Message, tag="state_request"):
    pass


class ModelsRequest(Message, tag="models_request"):
    pass
