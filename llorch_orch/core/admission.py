"""Checks a request must pass before it may wait in the queue, each with its own code."""

from schemas import Error, GenerateRequest
from schemas.codes import ErrorCode
from schemas.ids import is_valid_id

from .config import OrchConfig
from .placement import slots, too_small
from .view import ClusterView

NO_POOL_RETRY_MS = 500  # a pool's (next) heartbeat is at most one interval away (2 s by default)


def _unavailable(message: str) -> Error:
    """Nothing can serve it right now, and that may soon change: worth sending again."""
    return Error(
        code=ErrorCode.UNAVAILABLE, message=message, retriable=True, retry_after_ms=NO_POOL_RETRY_MS
    )


def _reject(code: ErrorCode, message: str) -> Error:
    return Error(code=code, message=message, retriable=False)


def prompt_bytes(req: GenerateRequest) -> int:
    """UTF-8 size of the text to run: the raw prompt, or every message's content."""
    texts = [req.prompt or ""] if req.messages is None else [m.content for m in req.messages]
    return sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)


def check_limits(req: GenerateRequest, cfg: OrchConfig) -> Error | None:
    limits = cfg.limits
    if req.job_id is not None and not is_valid_id(req.job_id):
        return _reject(ErrorCode.INVALID_ID, "job_id must match [A-Za-z0-9_-]{1,64}")
    if req.pool is not None and not is_valid_id(req.pool):
        return _reject(ErrorCode.INVALID_ID, "pool must match [A-Za-z0-9_-]{1,64}")
    size = prompt_bytes(req)
    if size > limits.max_prompt_bytes:
        what = "prompt" if req.messages is None else "messages' content"
        return _reject(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"{what} is {size} bytes, limit {limits.max_prompt_bytes}",
        )
    if req.max_tokens > limits.max_tokens:
        return _reject(
            ErrorCode.INVALID_PARAMS, f"max_tokens {req.max_tokens} > limit {limits.max_tokens}"
        )
    if len(req.stop) > limits.max_stop or any(
        not s or len(s) > limits.max_stop_len for s in req.stop
    ):
        return _reject(
            ErrorCode.INVALID_PARAMS,
            f"stop: at most {limits.max_stop} non-empty strings of <= {limits.max_stop_len} chars",
        )
    return None


def check_model(req: GenerateRequest, view: ClusterView) -> Error | None:
    cfg = view.cfg
    if cfg.model(req.model).retired:
        return _reject(ErrorCode.MODEL_NOT_FOUND, f"model {req.model!r} is retired")
    info = view.model_info(req.model)
    if info is None and not view.pools:
        return _unavailable("no pool has reported to the orchestrator yet (starting?)")
    lost = [p.pool_id for p in view.pools.values() if not p.alive and req.model in p.models]
    if info is None and lost:
        return _unavailable(f"the pools that hold {req.model!r} are lost: {', '.join(lost)}")
    if info is None:
        known = ", ".join(sorted(view.catalog())) or "none"
        return _reject(
            ErrorCode.MODEL_NOT_FOUND, f"model {req.model!r} is not in the catalog (known: {known})"
        )
    if req.messages is not None and not info.has_chat_template:
        return _reject(
            ErrorCode.NO_CHAT_TEMPLATE,
            f"model {req.model!r} has no chat template: send a raw `prompt` instead of `messages`",
        )
    n_ctx = view.n_ctx(req.model)
    if req.max_tokens >= n_ctx:
        return _reject(
            ErrorCode.CONTEXT_OVERFLOW,
            f"max_tokens {req.max_tokens} leaves no room for the prompt in context {n_ctx}",
        )
    has_worker = any(w.matches(req.pool, req.device) for w in view.workers_of(req.model))
    if has_worker:
        return None
    candidates, reasons = slots(view, req.model, req.pool, req.device)
    small = too_small(candidates, view)
    if not candidates or small:
        detail = "; ".join(reasons + small) or "no live pool has a device"
        return _reject(ErrorCode.NO_CAPACITY, f"no device can host {req.model}: {detail}")
    return None
